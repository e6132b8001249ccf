// Random and mutated datagrams at a homewire port, from inside a namespace:
//
//   node --import tsx lab/udp-fuzz.ts --to 192.0.2.1:51820 [--count 10000] [--seed N] [--pcap FILE]
//
// Kinds: random bytes of awkward lengths; well-shaped headers (right type, reserved bytes and size) with
// random contents; and, from real datagrams captured on the underlay (--pcap), bit flips, truncations,
// extensions, retyped and re-indexed copies and exact replays. Seeded, so a failure can be replayed.
// Prints one JSON line with what was sent. Bounded: at most 256 datagrams in flight.
import dgram from 'node:dgram';
import fs from 'node:fs';
import {
  HANDSHAKE_INIT_BYTES,
  HANDSHAKE_RESP_BYTES,
  MSG_SIGNAL,
  MSG_DATA,
  MSG_HANDSHAKE_INIT,
  MSG_HANDSHAKE_RESP,
  TRANSPORT_OVERHEAD_BYTES,
} from '../src/constants.ts';
import { readPcap } from './pcap.ts';

function arg(name: string, fallback?: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

/** mulberry32: small, seedable, good enough for test input. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const to = arg('--to');
if (!to) {
  process.stderr.write('usage: udp-fuzz.ts --to ADDRESS:PORT [--count N] [--seed N] [--pcap FILE]\n');
  process.exit(2);
}
const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(to)!;
const address = m[1];
const port = Number(m[2]);
const count = Math.min(Number(arg('--count', '10000')), 1_000_000);
const seed = Number(arg('--seed', String(Date.now() & 0x7fffffff)));
const rand = rng(seed);
const int = (n: number) => Math.floor(rand() * n);
const bytes = (n: number) => {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = int(256);
  return b;
};

// Real datagrams to or from the target port, from a capture of the underlay.
const templates: Buffer[] = [];
const pcap = arg('--pcap');
if (pcap && fs.existsSync(pcap)) {
  for (const p of readPcap(fs.readFileSync(pcap))) {
    if (p.kind === 'udp' && p.payload && (p.dport === port || p.sport === port)) templates.push(Buffer.from(p.payload));
  }
}

const AWKWARD = [0, 1, 2, 3, 4, 5, 15, 16, 17, 31, 32, 33, 59, 60, 61, 115, 116, 117, 1400, 1472, 1500];
const TYPES = [MSG_HANDSHAKE_INIT, MSG_HANDSHAKE_RESP, MSG_DATA, MSG_SIGNAL, 0, 3, 6, 255];

function randomDatagram(): Buffer {
  return bytes(rand() < 0.5 ? AWKWARD[int(AWKWARD.length)] : int(1501));
}

function shaped(): Buffer {
  const type = TYPES[int(TYPES.length)];
  const len =
    type === MSG_HANDSHAKE_INIT
      ? HANDSHAKE_INIT_BYTES
      : type === MSG_HANDSHAKE_RESP
        ? HANDSHAKE_RESP_BYTES
        : TRANSPORT_OVERHEAD_BYTES + int(1400);
  const b = bytes(len);
  b[0] = type;
  b[1] = b[2] = b[3] = 0;
  if (type === MSG_DATA && rand() < 0.3) b.writeUInt32LE(int(64), 8); // plausible small counters
  return b;
}

function mutated(): { msg: Buffer; kind: string } {
  const t = templates[int(templates.length)];
  const b = Buffer.from(t);
  switch (int(7)) {
    case 0: {
      // flip 1-8 bits anywhere
      const n = 1 + int(8);
      for (let i = 0; i < n && b.length > 0; i++) b[int(b.length)] ^= 1 << int(8);
      return { msg: b, kind: 'bitflip' };
    }
    case 1:
      return { msg: b.subarray(0, int(b.length)), kind: 'truncated' };
    case 2:
      return { msg: Buffer.concat([b, bytes(1 + int(64))]), kind: 'extended' };
    case 3: {
      if (b.length) b[0] = TYPES[int(TYPES.length)];
      return { msg: b, kind: 'retyped' };
    }
    case 4: {
      if (b.length >= 12) b.writeUInt32LE(int(2 ** 32), 8); // the counter's low 32 bits (all that travel)
      return { msg: b, kind: 'recountered' };
    }
    case 5: {
      if (b.length >= 8) b.writeUInt32LE(int(2 ** 32), 4);
      return { msg: b, kind: 'reindexed' };
    }
    default:
      return { msg: b, kind: 'replayed' };
  }
}

const sock = dgram.createSocket(address.includes(':') ? 'udp6' : 'udp4');
sock.on('error', () => {}); // ICMP unreachable and friends: keep going
const byKind: Record<string, number> = {};
let inFlight = 0;
let sent = 0;
let errors = 0;
const started = Date.now();
for (let i = 0; i < count; i++) {
  let msg: Buffer;
  let kind: string;
  const r = rand();
  if (templates.length > 0 && r < 0.5) ({ msg, kind } = mutated());
  else if (r < 0.75) {
    msg = shaped();
    kind = 'shaped';
  } else {
    msg = randomDatagram();
    kind = 'random';
  }
  byKind[kind] = (byKind[kind] ?? 0) + 1;
  while (inFlight >= 256) await new Promise((res) => setImmediate(res));
  inFlight++;
  sock.send(msg, port, address, (err) => {
    inFlight--;
    if (err) errors++;
    else sent++;
  });
}
while (inFlight > 0) await new Promise((res) => setImmediate(res));
sock.close();
process.stdout.write(
  `${JSON.stringify({ to, count, sent, errors, seed, templates: templates.length, byKind, ms: Date.now() - started })}\n`,
);

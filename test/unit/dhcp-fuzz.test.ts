// Fuzz: random and mutated frames into offer() never throw, never trip the internal-error counter, and leave
// the lease table consistent (no address held twice, every reply well-formed and sent back where it came from).
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { clientFrame, parseReply, SimClient, simMac } from '../../lab/dhcp-client-sim.ts';
import { encodeDhcp, u32, u8 } from '../../src/dhcp/codec.ts';
import { parseDhcpConfig } from '../../src/dhcp/config.ts';
import { FRAME_HEADROOM_BYTES, fillUdpHeaders, finish, sum16 } from '../../src/dhcp/frame.ts';
import { DhcpServer } from '../../src/dhcp/server.ts';

const FRAMES = 10_000;

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

function seeds(serverMac: Buffer): Buffer[] {
  const out: Buffer[] = [];
  const ip = (a: number, b: number, c: number, d: number) => ((a << 24) | (b << 16) | (c << 8) | d) >>> 0;
  for (const style of ['plain', 'udhcpc', 'dhclient', 'dhcpcd'] as const) {
    const c = new SimClient(simMac(out.length + 1), style, 'fuzz-host');
    c.ip = ip(192, 168, 77, 120);
    c.serverId = ip(192, 168, 77, 2);
    c.serverMac = serverMac;
    out.push(
      c.discover(),
      c.select({ msg: { yiaddr: c.ip, options: new Map([[54, u32(c.serverId)]]) } } as never),
      c.renew(),
      c.rebind(),
      c.reboot(),
      c.release(),
      c.decline(),
      c.inform(ip(192, 168, 77, 40)),
    );
  }
  const arp = Buffer.alloc(42);
  arp.fill(0xff, 0, 6);
  simMac(5).copy(arp, 6);
  arp.writeUInt16BE(0x0806, 12);
  arp.writeUInt16BE(1, 14);
  arp.writeUInt16BE(0x0800, 16);
  arp[18] = 6;
  arp[19] = 4;
  arp.writeUInt16BE(1, 20);
  simMac(5).copy(arp, 22);
  arp.writeUInt32BE(ip(192, 168, 77, 120), 28);
  arp.writeUInt32BE(ip(192, 168, 77, 2), 38);
  out.push(arp);
  const chaddr = Buffer.alloc(16);
  simMac(1).copy(chaddr);
  const offer = encodeDhcp(
    {
      op: 2,
      htype: 1,
      hlen: 6,
      hops: 0,
      xid: 1,
      secs: 0,
      flags: 0,
      ciaddr: 0,
      yiaddr: ip(192, 168, 77, 30),
      siaddr: 0,
      giaddr: 0,
      chaddr,
    },
    [
      [53, u8(2)],
      [54, u32(ip(192, 168, 77, 1))],
      [52, u8(3)],
    ],
    548,
    FRAME_HEADROOM_BYTES,
  )!;
  out.push(
    fillUdpHeaders(
      offer,
      Buffer.alloc(6, 0xff),
      Buffer.from([0, 1, 2, 3, 4, 5]),
      ip(192, 168, 77, 1),
      0xffffffff,
      67,
      68,
    ),
  );
  out.push(
    clientFrame({
      type: 1,
      mac: simMac(77),
      xid: 5,
      extra: [
        [52, u8(3)],
        [12, Buffer.alloc(40, 0x41)],
      ],
    }),
  );
  return out;
}

function mutate(f: Buffer, rnd: () => number): Buffer {
  const r = () => Math.floor(rnd() * 256);
  const at = (n: number) => Math.floor(rnd() * n);
  let b = Buffer.from(f);
  const kind = at(8);
  if (kind === 0) {
    // flip a few bytes anywhere
    for (let i = 0, n = 1 + at(8); i < n; i++) b[at(b.length)] = r();
  } else if (kind === 1) {
    // truncate
    b = b.subarray(0, at(b.length + 1));
  } else if (kind === 2) {
    // append junk
    b = Buffer.concat([b, Buffer.from(Array.from({ length: at(600) }, r))]);
  } else if (kind === 3) {
    // scribble over the options area (and maybe file/sname)
    const start = FRAME_HEADROOM_BYTES + (rnd() < 0.5 ? 240 : 44);
    for (let i = start; i < b.length; i++) if (rnd() < 0.3) b[i] = r();
  } else if (kind === 4) {
    // option lengths wrong: walk the options, bend one length
    let i = FRAME_HEADROOM_BYTES + 240;
    while (i + 1 < b.length && b[i] !== 255) {
      if (b[i] === 0) {
        i++;
        continue;
      }
      if (rnd() < 0.3) {
        b[i + 1] = r();
        break;
      }
      i += 2 + b[i + 1];
    }
  } else if (kind === 5) {
    // header fields: IHL, lengths, flags, ports, hlen, op, cookie
    const spots = [
      14,
      16,
      17,
      20,
      21,
      14 + 20 + 2,
      14 + 20 + 4,
      14 + 20 + 5,
      FRAME_HEADROOM_BYTES,
      FRAME_HEADROOM_BYTES + 2,
      FRAME_HEADROOM_BYTES + 236,
      FRAME_HEADROOM_BYTES + 239,
      12,
      13,
    ];
    b[spots[at(spots.length)] % Math.max(1, b.length)] = r();
  } else if (kind === 6) {
    // pure noise
    b = Buffer.from(Array.from({ length: at(1600) }, r));
  } else {
    // keep the IPv4 checksum right after a change, so deeper layers get exercised
    for (let i = 0, n = 1 + at(4); i < n; i++)
      b[FRAME_HEADROOM_BYTES + at(Math.max(1, b.length - FRAME_HEADROOM_BYTES))] = r();
    if (b.length >= 34) {
      b.writeUInt16BE(0, 24);
      b.writeUInt16BE(finish(sum16(b, 14, 20, 0)), 24);
    }
  }
  return b;
}

for (const serveLocal of [false, true]) {
  test(`fuzz: ${FRAMES} random/mutated frames never throw (serve_local ${serveLocal})`, async (t) => {
    const seed = (Date.now() ^ (serveLocal ? 0x1234 : 0)) >>> 0;
    t.log(`seed ${seed}`);
    const rnd = mulberry32(seed);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hwdhcp-'));
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const cfg = parseDhcpConfig(
      {
        subnet: '192.168.77.0/24',
        server_ip: '192.168.77.2',
        pool: '192.168.77.100-192.168.77.199',
        router: '192.168.77.1',
        routes: [{ destination: '10.0.0.0/8', gateway: '192.168.77.1' }],
        reservations: [{ mac: '52:54:00:00:00:03', ip: '192.168.77.10' }],
        lease_db: 'leases.db',
        serve_local: serveLocal,
        rate_limit_per_site_per_minute: 1000,
      },
      path.join(dir, 'c.yaml'),
    );
    let now = 1_700_000_000_000;
    const sent: Array<[Buffer, string]> = [];
    const server = DhcpServer.open(cfg, { mtu: 1400, send: (f, to) => sent.push([f, to]), now: () => now });
    t.teardown(() => server.close());
    const base = seeds(server.mac);
    const ports = ['local', 'hostA', 'hostB'];
    for (let i = 0; i < FRAMES; i++) {
      const f =
        rnd() < 0.1 ? base[Math.floor(rnd() * base.length)] : mutate(base[Math.floor(rnd() * base.length)], rnd);
      const from = ports[Math.floor(rnd() * ports.length)];
      sent.length = 0;
      let consumed: unknown;
      t.notThrows(
        () => {
          consumed = server.offer(f, from);
        },
        `frame ${i}: ${f.toString('hex')}`,
      );
      t.is(typeof consumed, 'boolean');
      for (const [out, to] of sent) {
        t.is(to, from, 'a reply goes back to the port the request came from');
        if (out.readUInt16BE(12) === 0x0800) {
          const r = parseReply(out);
          t.truthy(r, 'our replies are well-formed');
          t.true(r!.ipChecksumOk && r!.udpChecksumOk);
        }
      }
      if (i % 97 === 0) {
        now += 30_000;
        server.tick(now);
      }
      if (i % 500 === 0) await new Promise((r) => setImmediate(r));
    }
    await new Promise((r) => setImmediate(r));
    t.is(server.stats.dropped.internal_error, 0);
    const ips = server
      .leases()
      .filter((l) => l.state === 'bound')
      .map((l) => l.ip);
    t.is(new Set(ips).size, ips.length, 'no address bound twice');
    t.log(JSON.stringify({ ...server.stats, leasesActive: server.stats.leasesActive }));
  });
}

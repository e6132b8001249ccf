// Durability: a server leasing addresses as fast as it can is killed with SIGKILL; every lease it ACKed is in
// the store afterwards, no address is held twice, and a restarted server gives new clients other addresses.
import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseReply, SimClient, simMac } from '../../lab/dhcp-client-sim.ts';
import { parseDhcpConfig } from '../../src/dhcp/config.ts';
import { DHCPACK, DHCPOFFER } from '../../src/dhcp/constants.ts';
import { listLeases } from '../../src/dhcp/leases-cli.ts';
import { DhcpServer } from '../../src/dhcp/server.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const ACKS_BEFORE_KILL = 300 + Math.floor(Math.random() * 300); // a different moment each run

const CONFIG = {
  subnet: '10.77.0.0/16',
  server_ip: '10.77.0.2',
  pool: '10.77.1.0-10.77.200.255',
  lease_seconds: 3600,
  rate_limit_per_site_per_minute: 1_000_000,
  max_leases_per_site: 65_536, // every simulated client is behind one site
};

// The child: leases to simulated clients in a tight loop (many per event-loop turn, so commits are batched),
// printing "MAC IP" for every ACK the server sends. Pipes to a parent are synchronous on Linux, so a
// printed line means the ACK left after its commit.
const CHILD = `
import { DhcpServer } from ${JSON.stringify(path.join(ROOT, 'src/dhcp/server.ts'))};
import { parseDhcpConfig } from ${JSON.stringify(path.join(ROOT, 'src/dhcp/config.ts'))};
import { parseReply, SimClient, simMac } from ${JSON.stringify(path.join(ROOT, 'lab/dhcp-client-sim.ts'))};
const db = process.argv[2];
const cfg = parseDhcpConfig({ ...${JSON.stringify(CONFIG)}, lease_db: db }, db + '.yaml');
const clients = new Map();
let requests = [];
const server = DhcpServer.open(cfg, { mtu: 1400, send(frame, to) {
  const r = parseReply(frame);
  const c = clients.get(r.dstMac);
  if (r.type === 2) requests.push(c.select(r));
  else if (r.type === 5) process.stdout.write(r.dstMac + ' ' + r.msg.yiaddr + '\\n');
} });
let n = 1;
function turn() {
  const reqs = requests; requests = [];
  for (const f of reqs) server.offer(f, 'vmhost');
  for (let i = 0; i < 25; i++, n++) {
    const c = new SimClient(simMac(n));
    clients.set([...simMac(n)].map((b) => b.toString(16).padStart(2, '0')).join(':'), c);
    server.offer(c.discover(), 'vmhost');
  }
  setImmediate(turn);
}
turn();
`;

test('SIGKILL while leasing: every ACKed lease is in the store, none twice; a restart hands out other addresses', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hwdhcp-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const db = path.join(dir, 'leases.db');
  const childFile = path.join(dir, 'child.mts');
  fs.writeFileSync(childFile, CHILD);
  const child = spawn(process.execPath, ['--import', 'tsx', childFile, db], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  const acked = new Map<string, number>(); // mac -> ip
  let partial = '';
  const killed = new Promise<NodeJS.Signals | null>((resolve, reject) => {
    child.on('exit', (_code, signal) => resolve(signal));
    child.on('error', reject);
    child.stdout.on('data', (d: Buffer) => {
      const lines = (partial + d.toString()).split('\n');
      partial = lines.pop()!;
      for (const l of lines) {
        const [mac, ip] = l.split(' ');
        acked.set(mac, Number(ip));
      }
      if (acked.size >= ACKS_BEFORE_KILL) child.kill('SIGKILL');
    });
  });
  const signal = await killed;
  t.is(signal, 'SIGKILL', `child ended by itself: ${stderr}`);
  t.true(acked.size >= ACKS_BEFORE_KILL);
  t.true(fs.existsSync(`${db}-wal`), 'killed with the WAL still open (no clean checkpoint)');

  const rows = listLeases(db, Date.now());
  const byMac = new Map(rows.map((r) => [r.mac, r]));
  const fmt = (n: number) => `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
  let missing = 0;
  for (const [mac, ip] of acked) {
    const r = byMac.get(mac);
    if (r === undefined || r.ip !== fmt(ip) || r.state !== 'bound') missing++;
  }
  t.is(missing, 0, 'every ACKed lease survived SIGKILL');
  t.is(new Set(rows.map((r) => r.ip)).size, rows.length, 'no address in two leases');
  t.log(`${acked.size} ACKs seen before SIGKILL, ${rows.length} leases in the store`);

  // Restart on the same store: old clients keep their address, new ones get others.
  const sent: Buffer[] = [];
  const cfg = parseDhcpConfig({ ...CONFIG, lease_db: db }, path.join(dir, 'c.yaml'));
  const server = DhcpServer.open(cfg, { mtu: 1400, send: (f) => sent.push(f) });
  t.teardown(() => server.close());
  t.is(server.stats.leasesActive, rows.length);
  const held = new Set(rows.map((r) => r.ip));
  const fresh = new Set<string>();
  for (let i = 0; i < 100; i++) {
    const c = new SimClient(simMac(1_000_000 + i), 'dhcpcd');
    sent.length = 0;
    server.offer(c.discover(), 'vmhost2');
    const offer = parseReply(sent[0])!;
    t.is(offer.type, DHCPOFFER);
    server.offer(c.select(offer), 'vmhost2');
    await new Promise((r) => setImmediate(r));
    const ack = parseReply(sent[1])!;
    t.is(ack.type, DHCPACK);
    const ip = fmt(ack.msg.yiaddr);
    t.false(held.has(ip), `${ip} was already leased`);
    fresh.add(ip);
  }
  t.is(fresh.size, 100);
  // And an old client renewing keeps its address.
  const [mac, ip] = [...acked][0];
  const old = new SimClient(Buffer.from(mac.split(':').join(''), 'hex'));
  old.ip = ip;
  old.serverId = 0x0a4d0002;
  sent.length = 0;
  server.offer(old.rebind(), 'vmhost');
  await new Promise((r) => setImmediate(r));
  const ack = parseReply(sent[0])!;
  t.is(ack.type, DHCPACK);
  t.is(ack.msg.yiaddr, ip);
});

// Byte-exact TCP through the real data path: 32 MB of random data each way between a guest on a VM host and
// the LAN host, compared by SHA-256. This crosses every offload: TSO frames cut in the addon, UDP GSO sends,
// UDP GRO receives, TCP coalescing on TAP writes, encryption and the replay window. Then UDP: datagrams keep
// their sizes and bytes through GRO receive and UDP coalescing on TAP writes (fragments pass uncoalesced).
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { labFor, netnsTest } from '../helpers/netns.ts';

// The daemons this file starts coalesce UDP runs on TAP writes too (off by default, src/tap/native.ts), so the
// UDP test below crosses that path.
process.env.HOMEWIRE_TAP_COALESCE_UDP = '1';

const BYTES = 32 * 1024 * 1024;

const SERVER = `
const net = require('node:net'); const crypto = require('node:crypto');
const [mode, host, port, file] = process.argv.slice(1);
const srv = net.createServer((c) => {
  if (mode === 'recv') { const h = crypto.createHash('sha256'); let n = 0;
    c.on('data', (d) => { h.update(d); n += d.length; }); c.on('end', () => { console.log(JSON.stringify({ n, sha: h.digest('hex') })); c.end(); srv.close(); }); }
  else { const s = require('node:fs').createReadStream(file); s.pipe(c); c.on('close', () => srv.close()); }
});
srv.listen(Number(port), host, () => console.log('listening'));
`;

const CLIENT = `
const net = require('node:net'); const crypto = require('node:crypto'); const fs = require('node:fs');
const [mode, host, port, file] = process.argv.slice(1);
const c = net.connect(Number(port), host, () => {
  if (mode === 'send') { fs.createReadStream(file).pipe(c); }
});
if (mode === 'recv') { const h = crypto.createHash('sha256'); let n = 0;
  c.on('data', (d) => { h.update(d); n += d.length; }); c.on('end', () => console.log(JSON.stringify({ n, sha: h.digest('hex') }))); }
c.on('error', (e) => { console.error(e.message); process.exit(1); });
`;

netnsTest('32 MB each way between a guest and the LAN host arrive byte-exact (SHA-256)', async (t) => {
  const lab = await labFor(t, { sites: ['home', 'host-a'] });
  const dir = fs.mkdtempSync(path.join(lab.dir, 'integrity-'));
  const data = crypto.randomBytes(BYTES);
  const file = path.join(dir, 'data.bin');
  fs.writeFileSync(file, data);
  const want = crypto.createHash('sha256').update(data).digest('hex');
  const lanIp = lab.host('lan').ip;

  for (const [direction, serverMode, clientMode, port] of [
    ['guest-a → lan', 'recv', 'send', 7001],
    ['lan → guest-a', 'send', 'recv', 7002],
  ] as const) {
    const server = lab.spawn('lan', [process.execPath, '-e', SERVER, serverMode, lanIp, String(port), file], {
      stdio: 'pipe',
    });
    let out = '';
    server.stdout!.on('data', (d) => (out += d));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('server did not start')), 10_000);
      server.stdout!.on('data', () => {
        if (out.includes('listening')) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    const client = await lab.exec('guest-a', [process.execPath, '-e', CLIENT, clientMode, lanIp, String(port), file], {
      timeoutMs: 120_000,
    });
    t.is(client.code, 0, client.stderr);
    await new Promise<void>((resolve) => {
      if (server.exitCode !== null) resolve();
      else server.once('exit', () => resolve());
    });
    const result = JSON.parse(
      (serverMode === 'recv' ? out.split('\n').find((l) => l.startsWith('{')) : client.stdout.trim())!,
    );
    t.is(result.n, BYTES, direction);
    t.is(result.sha, want, `${direction}: the bytes that arrived are the bytes that were sent`);
  }
  const status = JSON.parse(
    (
      await lab.exec('home', [
        process.execPath,
        path.resolve('bin/homewire.mjs'),
        'status',
        '--json',
        '--config',
        lab.site('home').configFile,
      ])
    ).stdout,
  );
  t.is(status.drops.auth_failed, 0);
  t.is(status.drops.replay, 0);
  t.log(
    `home's TAP: ${status.tap.txFrames} frames written in ${status.tap.txWrites} writes (${status.tap.txCoalesced} coalesced); ${status.tap.rxSegmented} of ${status.tap.rxFrames} frames read were cut from TSO frames`,
  );
});

const UDP_SERVER = `
const s = require('node:dgram').createSocket('udp4');
const [host, port, total] = process.argv.slice(1);
let got = 0, bad = 0, wrongSize = 0; const seen = new Set();
const sizeOf = (i) => [1300, 1300, 1300, 1300, 1300, 1300, 1300, 977, 64, 2000][i % 10];
s.on('message', (m) => {
  if (m.length < 4) { bad++; return; }
  const i = m.readUInt32BE(0);
  if (m.length !== sizeOf(i)) wrongSize++;
  for (let k = 4; k < m.length; k++) if (m[k] !== ((i + k) & 255)) { bad++; break; }
  if (!seen.has(i)) { seen.add(i); got++; }
});
s.bind(Number(port), host, () => { s.setRecvBufferSize(4 << 20); console.log('listening'); });
process.on('SIGTERM', () => { console.log(JSON.stringify({ got, bad, wrongSize })); process.exit(0); });
`;

const UDP_CLIENT = `
const s = require('node:dgram').createSocket('udp4');
const [host, port, total] = process.argv.slice(1);
const sizeOf = (i) => [1300, 1300, 1300, 1300, 1300, 1300, 1300, 977, 64, 2000][i % 10];
let i = 0;
const burst = () => {
  for (let k = 0; k < 20 && i < Number(total); k++, i++) {
    const m = Buffer.alloc(sizeOf(i));
    m.writeUInt32BE(i, 0);
    for (let j = 4; j < m.length; j++) m[j] = (i + j) & 255;
    s.send(m, Number(port), host);
  }
  if (i < Number(total)) setTimeout(burst, 2); else setTimeout(() => s.close(), 200);
};
burst();
`;

netnsTest(
  'UDP datagrams guest-a → lan keep their boundaries and bytes through GRO receive and TAP coalescing',
  async (t) => {
    const lab = await labFor(t, { sites: ['home', 'host-a'] });
    const lanIp = lab.host('lan').ip;
    const TOTAL = 10_000;
    const server = lab.spawn('lan', [process.execPath, '-e', UDP_SERVER, lanIp, '7003', String(TOTAL)], {
      stdio: 'pipe',
    });
    let out = '';
    server.stdout!.on('data', (d) => (out += d));
    const deadline = Date.now() + 10_000;
    while (!out.includes('listening') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const homeStatus = async () =>
      JSON.parse(
        (
          await lab.exec('home', [
            process.execPath,
            path.resolve('bin/homewire.mjs'),
            'status',
            '--json',
            '--config',
            lab.site('home').configFile,
          ])
        ).stdout,
      );
    const before = await homeStatus();
    const client = await lab.exec('guest-a', [process.execPath, '-e', UDP_CLIENT, lanIp, '7003', String(TOTAL)], {
      timeoutMs: 60_000,
    });
    t.is(client.code, 0, client.stderr);
    await new Promise((r) => setTimeout(r, 500));
    server.kill('SIGTERM');
    await new Promise<void>((resolve) => (server.exitCode !== null ? resolve() : server.once('exit', () => resolve())));
    const r = JSON.parse(out.split('\n').find((l) => l.startsWith('{'))!);
    const after = await homeStatus();
    t.is(r.bad, 0, 'no datagram arrived with other bytes than were sent');
    t.is(r.wrongSize, 0, 'every datagram arrived with the size it was sent with');
    const drops = {
      homeTapDropped: after.tap.txDropped - before.tap.txDropped,
      homeSocketTruncated: after.udp.rxTruncated,
      homeMeshDrops: Object.fromEntries(Object.entries(after.drops).filter(([, v]) => (v as number) > 0)),
      sockets: (await lab.exec('home', ['cat', '/proc/net/snmp'])).stdout
        .split('\n')
        .filter((l) => l.startsWith('Udp:')),
    };
    t.true(
      r.got >= TOTAL * 0.95,
      `${r.got} of ${TOTAL} datagrams arrived (UDP may drop a few under load): ${JSON.stringify(drops)}`,
    );
    const coalesced = after.tap.txCoalesced - before.tap.txCoalesced;
    t.log(
      `${r.got}/${TOTAL} arrived; home's TAP: ${after.tap.txFrames - before.tap.txFrames} frames in ${after.tap.txWrites - before.tap.txWrites} writes (${coalesced} coalesced); socket: ${after.udp.rxDatagrams - before.udp.rxDatagrams} datagrams in ${after.udp.rxCalls - before.udp.rxCalls} recvmmsg calls (${after.udp.rxCoalesced - before.udp.rxCoalesced} coalesced)`,
    );
    t.is(after.udp.receivePath, 'native');
  },
);

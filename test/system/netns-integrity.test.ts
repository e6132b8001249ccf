// Byte-exact TCP through the real data path: 32 MB of random data each way between a guest on a VM host and
// the LAN host, compared by SHA-256. This crosses every offload: TSO frames cut in the addon, UDP GSO sends,
// TCP coalescing on TAP writes, encryption and the replay window.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { labFor, netnsTest } from '../helpers/netns.ts';

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

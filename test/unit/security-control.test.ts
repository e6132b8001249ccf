// The authority the coordinator's agent uses, over the control socket and the CLI: POST /v1/guests (the
// host's guest MACs for port security) and POST /v1/authorize-move (a migration); bad input is refused with a
// reason, and what was set takes effect.
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MemoryTap } from '../../lab/twins/tap.ts';
import { MemoryNetwork } from '../../lab/twins/udp.ts';
import { run } from '../../lab/run.ts';
import { HOMEWIRE_BIN } from '../../lab/topology.ts';
import { macNumber } from '../../src/addr.ts';
import { loadConfig } from '../../src/config.ts';
import { controlRequest } from '../../src/control.ts';
import { Daemon } from '../../src/daemon.ts';
import { silentLogger } from '../../src/log.ts';
import { encodeKey, generatePrivateKey, publicKeyOf } from '../../src/mesh/keys.ts';
import { encodeMacAt } from '../../src/mesh/signal.ts';
import type { StatusReport } from '../../src/status.ts';
import { frame, waitFor } from '../helpers/memory-mesh.ts';

test('guests and authorize-move through the control socket and the CLI', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hws-control-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const net = new MemoryNetwork();
  const sites = ['home', 'host-a'].map((name, i) => ({ name, key: generatePrivateKey(), address: `192.0.2.${i + 1}` }));
  const daemons: Daemon[] = [];
  const taps: MemoryTap[] = [];
  for (const me of sites) {
    const peer = sites.find((s) => s !== me)!;
    const file = path.join(dir, `${me.name}.yaml`);
    fs.writeFileSync(
      file,
      [
        `name: ${me.name}`,
        `private_key: "${encodeKey(me.key)}"`,
        `listen: ${me.address}:51820`,
        'tap: { name: hw0 }',
        `control: { socket: ${path.join(dir, `${me.name}.sock`)} }`,
        'peers:',
        `  - { name: ${peer.name}, public_key: "${encodeKey(publicKeyOf(peer.key))}", endpoint: "${peer.address}:51820" }`,
        me.name === 'home' ? 'security: { local_side: lan }' : '',
      ].join('\n'),
    );
    const tap = new MemoryTap();
    const d = await Daemon.fromConfig(loadConfig(file), {
      tap,
      socket: net.bind(me.address, 51820),
      log: silentLogger,
      services: true,
    });
    await d.start();
    daemons.push(d);
    taps.push(tap);
  }
  t.teardown(async () => {
    for (const d of daemons) await d.stop();
  });
  const [home, a] = daemons;
  await waitFor(() => daemons.every((d) => d.mesh.peers[0].up));
  const sockA = path.join(dir, 'host-a.sock');
  const sockHome = path.join(dir, 'home.sock');

  // Guests: strings or {mac, ip}; a bad entry refuses the whole list.
  const bad = await controlRequest(sockA, 'POST', '/v1/guests', { guests: ['52:54:00:00:00:0a', 'nonsense'] });
  t.is(bad.status, 400);
  t.regex(String(bad.body.error), /nonsense/);
  const ok = await controlRequest(sockA, 'POST', '/v1/guests', {
    guests: ['52:54:00:00:00:0a', { mac: '52:54:00:00:00:0c', ip: '198.51.100.12' }],
  });
  t.is(ok.status, 200);
  const st = await controlRequest<StatusReport>(sockA, 'GET', '/v1/status');
  t.is(st.body.security.guestMacs, 2);
  taps[1].inject(frame('ff:ff:ff:ff:ff:ff', '52:54:00:00:99:99', 0x0800, Buffer.alloc(46)));
  await waitFor(() => a.sw.security.portSecurity.unknown_mac === 1);

  // The CLI sets the same list.
  // (run, not spawnSync: the daemons answering it live in this process's event loop)
  const cli = await run(process.execPath, [
    HOMEWIRE_BIN,
    'guests',
    '--config',
    path.join(dir, 'host-a.yaml'),
    '52:54:00:00:00:0d=198.51.100.13',
  ]);
  t.is(cli.code, 0, cli.stderr);
  t.is(a.sw.security.guestMacs?.size, 1);

  // authorize-move: refused without a valid target or time; accepted by name, and a MAC_AT then moves it.
  const GB = '52:54:00:00:00:0b';
  taps[0].inject(frame('ff:ff:ff:ff:ff:ff', GB, 0x0800, Buffer.alloc(46))); // a VM that lives at home now
  await waitFor(() => home.sw.table.get(macNumber(GB))?.port === null);
  const noSite = await controlRequest(sockHome, 'POST', '/v1/authorize-move', { mac: GB, to: 'nowhere', seconds: 5 });
  t.is(noSite.status, 400);
  const noTime = await controlRequest(sockHome, 'POST', '/v1/authorize-move', { mac: GB, to: 'host-a' });
  t.is(noTime.status, 400);
  a.mesh.sendSignal(a.mesh.peers[0], encodeMacAt(macNumber(GB), 7));
  a.mesh.flush();
  await waitFor(() => home.sw.security.ownership.move_refused === 1);
  const cliMove = await run(process.execPath, [
    HOMEWIRE_BIN,
    'authorize-move',
    '--config',
    path.join(dir, 'home.yaml'),
    '--mac',
    GB,
    '--to',
    'host-a',
    '--seconds',
    '30',
  ]);
  t.is(cliMove.code, 0, cliMove.stderr);
  a.mesh.sendSignal(a.mesh.peers[0], encodeMacAt(macNumber(GB), 8));
  a.mesh.flush();
  await waitFor(() => home.sw.table.get(macNumber(GB))?.port?.name === 'host-a');
  // By base64 key works too.
  const byKey = await controlRequest(sockHome, 'POST', '/v1/authorize-move', {
    mac: GB,
    to: encodeKey(publicKeyOf(sites[1].key)),
    until_ms: Date.now() + 10_000,
  });
  t.is(byKey.status, 200);
});

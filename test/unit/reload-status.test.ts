// Reload (SIGHUP / `homewire reload`) and status through the control socket, and the metrics exposition,
// with daemons on the in-memory twins.
import test from 'ava';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { loadConfig } from '../../src/config.ts';
import type { StatusReport } from '../../src/status.ts';
import { controlRequest } from '../../src/control.ts';
import { Daemon } from '../../src/daemon.ts';
import { silentLogger } from '../../src/log.ts';
import { encodeKey, generatePrivateKey, publicKeyOf } from '../../src/mesh/keys.ts';
import { MemoryTap } from '../../lab/twins/tap.ts';
import { MemoryNetwork } from '../../lab/twins/udp.ts';
import { arp, waitFor } from '../helpers/memory-mesh.ts';

interface Site {
  name: string;
  key: Buffer;
  address: string;
}

function yaml(me: Site, peers: Site[], dir: string, extra = ''): string {
  return `${[
    `name: ${me.name}`,
    `private_key: "${encodeKey(me.key)}"`,
    `listen: ${me.address}:51820`,
    'tap: { name: hw0 }',
    'security: { arp_inspection: learn }', // the guests here have static addresses
    `control: { socket: ${path.join(dir, `${me.name}.sock`)} }`,
    peers.length ? 'peers:' : 'peers: []',
    ...peers.map(
      (p) => `  - { name: ${p.name}, public_key: "${encodeKey(publicKeyOf(p.key))}", endpoint: "${p.address}:51820" }`,
    ),
    extra,
  ].join('\n')}\n`;
}

test('reload adds and removes peers, keeps unchanged sessions, refuses an invalid config', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-reload-'));
  const net = new MemoryNetwork();
  const sites: Site[] = ['home', 'host-a', 'host-b'].map((name, i) => ({
    name,
    key: generatePrivateKey(),
    address: `192.0.2.${i + 1}`,
  }));
  const [home, a, b] = sites;
  const daemons = new Map<string, Daemon>();
  const taps = new Map<string, MemoryTap>();
  const start = async (s: Site, peers: Site[]) => {
    const file = path.join(dir, `${s.name}.yaml`);
    fs.writeFileSync(file, yaml(s, peers, dir));
    const tap = new MemoryTap();
    const d = await Daemon.fromConfig(loadConfig(file), {
      tap,
      socket: net.bind(s.address, 51820),
      log: silentLogger,
      services: true,
    });
    await d.start();
    daemons.set(s.name, d);
    taps.set(s.name, tap);
  };
  await start(home, [a]);
  await start(a, [home]);
  await start(b, [home]);
  t.teardown(async () => {
    for (const d of daemons.values()) await d.stop();
  });
  const dh = daemons.get('home')!;
  await waitFor(() => dh.mesh.peerByName('host-a')?.up === true);
  const sessionA = dh.mesh.peerByName('host-a')!.current;

  // An invalid config is refused and the running one kept.
  const homeFile = path.join(dir, 'home.yaml');
  fs.writeFileSync(homeFile, yaml(home, [a, b], dir, 'bogus_key: 1'));
  const bad = await controlRequest(path.join(dir, 'home.sock'), 'POST', '/v1/reload');
  t.is(bad.status, 400);
  t.regex(bad.body.error ?? '', /bogus_key: unknown key/);
  t.deepEqual(
    dh.mesh.peers.map((p) => p.name),
    ['host-a'],
  );

  // Adding host-b brings it up; host-a keeps its session.
  fs.writeFileSync(homeFile, yaml(home, [a, b], dir));
  const ok = await controlRequest(path.join(dir, 'home.sock'), 'POST', '/v1/reload');
  t.true(ok.body.ok);
  t.deepEqual(ok.body.changes, ['peer host-b added']);
  await waitFor(() => dh.mesh.peerByName('host-b')?.up === true);
  t.is(dh.mesh.peerByName('host-a')!.current, sessionA, 'unchanged peer kept its session');
  taps.get('host-b')!.inject(arp(1, '52:54:00:00:00:0b', '198.51.100.11', '00:00:00:00:00:00', '198.51.100.1'));
  await waitFor(() => taps.get('home')!.written.length === 1);

  // Removing host-a takes it down.
  fs.writeFileSync(homeFile, yaml(home, [b], dir));
  const removed = await dh.reloadFromFile();
  t.deepEqual(removed.changes, ['peer host-a removed']);
  t.deepEqual(
    dh.mesh.peers.map((p) => p.name),
    ['host-b'],
  );

  // Status over the control socket.
  const st = await controlRequest<StatusReport>(path.join(dir, 'home.sock'), 'GET', '/v1/status');
  t.is(st.body.name, 'home');
  t.is(st.body.peers[0].name, 'host-b');
  t.true(st.body.peers[0].up);
  t.true(st.body.peers[0].rxBytes > 0);
});

test('metrics: names and values a scrape sees', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-metrics-'));
  const net = new MemoryNetwork();
  const home: Site = { name: 'home', key: generatePrivateKey(), address: '192.0.2.1' };
  const a: Site = { name: 'host-a', key: generatePrivateKey(), address: '192.0.2.2' };
  const port = 20000 + Math.floor(Math.random() * 20000);
  const daemons: Daemon[] = [];
  const taps: MemoryTap[] = [];
  for (const [me, peer, extra] of [
    [home, a, `metrics: { listen: "127.0.0.1:${port}" }`],
    [a, home, ''],
  ] as const) {
    const file = path.join(dir, `${me.name}.yaml`);
    fs.writeFileSync(file, yaml(me, [peer], dir, extra));
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
  await waitFor(() => daemons.every((d) => d.mesh.peers[0].up));
  taps[1].inject(arp(1, '52:54:00:00:00:0a', '198.51.100.10', '00:00:00:00:00:00', '198.51.100.1'));
  await waitFor(() => taps[0].written.length === 1);
  const text = await new Promise<string>((resolve, reject) => {
    http
      .get(`http://127.0.0.1:${port}/metrics`, (res) => {
        let s = '';
        res.on('data', (c) => (s += c));
        res.on('end', () => resolve(s));
      })
      .on('error', reject);
  });
  t.regex(text, /homewire_peer_rx_bytes_total\{peer="host-a"\} 42/);
  t.regex(text, /homewire_peer_rx_packets_total\{peer="host-a"\} 1/);
  t.regex(text, /homewire_peer_up\{peer="host-a"\} 1/);
  t.regex(text, /homewire_handshakes_total\{result="responded"\} \d/);
  t.regex(text, /homewire_dropped_packets_total\{reason="replay"\} 0/);
  t.regex(text, /homewire_mac_table_entries 1/);
  t.regex(text, /homewire_peer_last_handshake_timestamp_seconds\{peer="host-a"\} \d{10}/);
  t.regex(text, /homewire_mac_moves_total 0/);
  t.regex(text, /homewire_process_cpu_seconds_total/);
  // Security (README "Security model"): every defence's counters are there from the start.
  t.regex(text, /homewire_port_security_drops_total\{reason="remote_mac"\} 0/);
  t.regex(text, /homewire_mac_ownership_drops_total\{reason="move_refused"\} 0/);
  t.regex(text, /homewire_dhcp_snooping_drops_total\{reason="server_from_guest"\} 0/);
  t.regex(text, /homewire_arp_inspection_drops_total\{reason="ra_guard"\} 0/);
  t.regex(text, /homewire_storm_drops_total\{kind="broadcast"\} 0/);
  t.regex(text, /homewire_handshake_cookies_sent_total 0/);
  t.regex(text, /homewire_handshake_rate_limited_total 0/);
  t.regex(text, /homewire_handshake_guard_total\{event="mac1_invalid"\} 0/);
});

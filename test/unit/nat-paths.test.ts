// Which path sites behind NAT take, in process (no root): direct, relay or TCP via home for every pair of NAT
// kinds (the in-memory twin's MemoryNat), and the move to TCP when UDP is blocked or refused locally. (Sites
// behind NAT: nat-inprocess.test.ts; hole punching: nat-punch.test.ts; real NATs made by iptables:
// test/system/nat-lab.test.ts.) Serial: each test times its fallback on the real clock.
import test from 'ava';
import type { PathKind } from '../../src/mesh/peer.ts';
import { arp, waitFor } from '../helpers/memory-mesh.ts';
import {
  allIntroduced,
  buildNatMesh,
  guestMac as mac,
  introducedNatMesh,
  learnGuests,
  pathBetween,
  peerAt,
  traffic,
} from '../helpers/nat-mesh.ts';

test.serial('the path each pair of NAT kinds takes: direct, relay, or TCP via home', async (t) => {
  t.timeout(60_000);
  const kinds = [
    'full-cone',
    'address-restricted',
    'port-restricted',
    'symmetric',
    'symmetric',
    'udp-blocked',
  ] as const;
  const names = ['full', 'addr', 'port', 'sym1', 'sym2', 'blocked'];
  const m = await introducedNatMesh(t, { sites: kinds.map((nat, i) => ({ name: names[i], nat })) });
  await learnGuests(m);
  const endpointIndependent = new Set(['full', 'addr', 'port']);
  const expected = (a: string, b: string): PathKind => {
    if (a === 'blocked' || b === 'blocked') return 'relay'; // and TCP to home (asserted below)
    if (endpointIndependent.has(a) && endpointIndependent.has(b)) return 'direct';
    const other = a.startsWith('sym') ? b : a; // the pair has a symmetric NAT: direct only against these two
    return other === 'full' || other === 'addr' ? 'direct' : 'relay';
  };
  const pairs = names.flatMap((a) => names.filter((b) => b !== a).map((b) => [a, b] as const));
  // Every pair talks 2 s: long enough for a punch that should fail to have succeeded.
  await Promise.all(pairs.map(([a, b]) => traffic(m, a, b, 40, 50)));
  // On a loaded machine some punches take longer: keep the pairs that are not there yet talking a while.
  for (const deadline = Date.now() + 15_000; Date.now() < deadline; ) {
    const pending = pairs.filter(([a, b]) => pathBetween(m, a, b) !== expected(a, b));
    if (pending.length === 0) break;
    await Promise.all(pending.map(([a, b]) => traffic(m, a, b, 10, 50)));
  }
  for (const a of names) {
    for (const b of names) {
      if (a === b) continue;
      const p = pathBetween(m, a, b);
      t.is(p, expected(a, b), `${a} (${kinds[names.indexOf(a)]}) → ${b} (${kinds[names.indexOf(b)]})`);
    }
  }
  const blocked = m.sites.get('blocked')!.daemon.status();
  t.is(blocked.peers.find((p) => p.name === 'home')!.path, 'tcp', 'the UDP-blocked site reaches home over TCP');
  t.true(blocked.tcp.tx_datagrams > 0 && blocked.tcp.rx_datagrams > 0);
  t.true(m.home.daemon.status().tcp.accepted >= 1);
});

test.serial(
  'a site whose UDP is blocked reaches home over TCP within 5 s, and every other site through home',
  async (t) => {
    const m = await buildNatMesh({
      sites: [
        { name: 'host-a', nat: 'udp-blocked' },
        { name: 'host-b', nat: 'symmetric' },
      ],
    });
    t.teardown(m.stop);
    const started = Date.now();
    const a = m.sites.get('host-a')!;
    const b = m.sites.get('host-b')!;
    await waitFor(() => peerAt(a, 'home')?.current != null, 5000);
    t.log(`session with home over TCP ${Date.now() - started} ms after start`);
    t.is(a.daemon.mesh.pathOf(peerAt(a, 'home')!), 'tcp');
    t.regex(a.daemon.status().peers.find((p) => p.name === 'home')!.endpoint!, /^tcp /);
    await waitFor(() => allIntroduced(m), 10_000);
    const req = arp(1, mac(0), '198.51.100.10', '00:00:00:00:00:00', '198.51.100.11');
    a.tap.inject(req);
    await waitFor(() => b.tap.written.length === 1 && m.home.tap.written.length === 1);
    b.tap.inject(arp(2, mac(1), '198.51.100.11', mac(0), '198.51.100.10'));
    await waitFor(() => a.tap.written.length === 1);
    t.is(b.daemon.mesh.pathOf(peerAt(b, 'host-a')!), 'relay');
    t.is(a.daemon.status().punches.started, 0, 'no punching from a site without UDP');
    t.true(a.daemon.status().tcp.dialed >= 1);
  },
);

test.serial('UDP sends that fail locally (a firewall refusing them) move a site to TCP at once', async (t) => {
  const started = Date.now();
  const m = await buildNatMesh({ sites: [{ name: 'host-a', nat: 'port-restricted', failSends: true }] });
  t.teardown(m.stop);
  const a = m.sites.get('host-a')!;
  await waitFor(() => peerAt(a, 'home')?.current != null, 5000);
  const ms = Date.now() - started;
  t.log(`session with home over TCP ${ms} ms after start`);
  t.is(a.daemon.mesh.pathOf(peerAt(a, 'home')!), 'tcp');
  t.true(ms < 1500, `faster than the 2 s no-answer fallback (${ms} ms)`);
});

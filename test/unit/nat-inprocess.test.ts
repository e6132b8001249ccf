// Sites behind NAT, in process (no root): introductions, reloads, mobility over the relay, hostile input, DNS
// endpoints, restarts and the config keys, on the in-memory twin's NATs (MemoryNat). Hole punching is in
// nat-punch.test.ts, the path each pair of NAT kinds takes and the TCP fallback in nat-paths.test.ts (the files
// run in parallel); the same behaviour with real NATs made by iptables is in test/system/nat-lab.test.ts.
import fs from 'node:fs';
import test from 'ava';
import { MSG_RELAY_DATA } from '../../src/constants.ts';
import { OverlayAddresses } from '../../src/mesh/overlay.ts';
import { encodeIntroduce, encodeWithdraw } from '../../src/mesh/natsignal.ts';
import { macKey } from '../../src/addr.ts';
import { parseConfig } from '../../src/config.ts';
import { encodeKey, generatePrivateKey, publicKeyOf } from '../../src/mesh/keys.ts';
import { Harness } from '../../lab/coordinator/harness.ts';
import { arp, frame, waitFor } from '../helpers/memory-mesh.ts';
import {
  allIntroduced,
  buildNatMesh,
  guestMac as mac,
  HOME_PUBLIC,
  introducedNatMesh,
  learnGuests,
  type NatSite,
  peerAt,
  punchDirect,
  traffic,
} from '../helpers/nat-mesh.ts';

test.serial(
  'a site that lists only home (by a DNS name) learns every other site from it, with introduced_by',
  async (t) => {
    const m = await introducedNatMesh(t, {
      sites: [
        { name: 'host-a', nat: 'port-restricted' },
        { name: 'host-b', nat: 'port-restricted' },
        { name: 'host-c', nat: 'full-cone' },
      ],
    });
    const a = m.sites.get('host-a')!;
    const st = a.daemon.status();
    const home = st.peers.find((p) => p.name === 'home')!;
    t.is(home.learned, 'dns', 'home came from its DNS name');
    t.is(home.introduced_by, null);
    t.is(home.path, 'direct');
    for (const name of ['host-b', 'host-c']) {
      const p = st.peers.find((x) => x.name === name)!;
      t.is(p.introduced_by, 'home', `${name} introduced by home`);
      t.is(p.learned, 'introduction');
      t.true(p.siteId !== null && p.siteId > 0);
      t.true(p.candidates.length >= 1, `${name}: home sent the endpoint it sees it at`);
      t.is(p.siteId, m.home.daemon.status().peers.find((x) => x.name === name)!.siteId, 'the id home gave it');
    }
    t.true(st.introductions.accepted >= 2);
    t.true(m.home.daemon.status().introductions.sent >= 6);
    t.is(st.introductions.not_introducer, 0);
  },
);

test.serial(
  'adding a third site by editing home’s config and reloading: every site reaches it within 5 s; removing it withdraws it',
  async (t) => {
    const m = await buildNatMesh({
      sites: [
        { name: 'host-a', nat: 'port-restricted' },
        { name: 'host-b', nat: 'symmetric' },
        { name: 'host-c', nat: 'port-restricted' },
      ],
      homeLists: ['host-a', 'host-b'],
    });
    t.teardown(m.stop);
    const a = m.sites.get('host-a')!;
    const b = m.sites.get('host-b')!;
    const c = m.sites.get('host-c')!;
    await waitFor(() => peerAt(a, 'host-b') !== undefined && peerAt(b, 'host-a') !== undefined, 5000);
    // host-c has been knocking on home's door, refused (its key is not in home's config)
    await waitFor(() => m.home.daemon.mesh.drops.handshake_unknown_key > 0, 5000);
    t.true(m.home.daemon.mesh.drops.handshake_unknown_key > 0);
    t.is(peerAt(a, 'host-c'), undefined);
    const changes = m.addToHome(['host-c']);
    const reloadedAt = Date.now();
    t.deepEqual(changes, ['peer host-c added']);
    // Everyone reaches host-c (a broadcast from host-c, and unicast from each site to host-c's guest).
    await waitFor(() => [a, b].every((s) => peerAt(s, 'host-c') !== undefined) && peerAt(c, 'host-a') !== undefined);
    c.tap.inject(arp(1, mac(2), '198.51.100.12', '00:00:00:00:00:00', '198.51.100.1'));
    await waitFor(() => a.tap.written.length >= 1 && b.tap.written.length >= 1 && m.home.tap.written.length >= 1);
    for (const [s, i] of [
      [a, 0],
      [b, 1],
    ] as const) {
      const n = c.tap.written.length;
      s.tap.inject(frame(mac(2), mac(i), 0x0800, Buffer.alloc(64)));
      await waitFor(() => c.tap.written.length === n + 1);
    }
    const ms = Date.now() - reloadedAt;
    t.log(`host-c reachable from every site ${ms} ms after home's reload`);
    t.true(ms <= 5000);
    t.is(
      a.daemon.status().peers.find((p) => p.name === 'host-c')?.introduced_by,
      'home',
      'host-c is introduced, no other config changed',
    );
    // Remove it again: withdrawn everywhere.
    t.deepEqual(m.removeFromHome(['host-c']), ['peer host-c removed']);
    await waitFor(() => peerAt(a, 'host-c') === undefined && peerAt(b, 'host-c') === undefined, 5000);
    t.true(a.daemon.status().introductions.withdrawn >= 1);
  },
);

test.serial(
  'mobility over the relay: a guest moving between NATed sites is announced to every site through home',
  async (t) => {
    const m = await introducedNatMesh(t, {
      sites: [
        { name: 'host-a', nat: 'symmetric' },
        { name: 'host-b', nat: 'port-restricted' },
        { name: 'host-c', nat: 'symmetric' },
      ],
    });
    const [a, b, c] = ['host-a', 'host-b', 'host-c'].map((n) => m.sites.get(n)!);
    const guest = mac(0x77);
    const key = macKey(Buffer.from(guest.replace(/:/g, ''), 'hex'), 0);
    a.tap.inject(arp(1, guest, '198.51.100.50', '00:00:00:00:00:00', '198.51.100.1'));
    await waitFor(() => [b, c, m.home].every((s) => s.daemon.sw.table.get(key)?.port?.name === 'host-a'));
    // It migrates to host-b: its RARP-like first frame there is announced at once. (The coordinator authorizes
    // the move on every site first: security.mac_moves: authorized.)
    const bKey = encodeKey(publicKeyOf(b.key));
    for (const s of [m.home, a, b, c]) t.true(s.daemon.authorizeMove(guest, bKey, Date.now() + 60_000).ok);
    b.daemon.expect(guest);
    b.tap.inject(arp(1, guest, '198.51.100.50', '00:00:00:00:00:00', '198.51.100.50'));
    await waitFor(() => [a, c, m.home].every((s) => s.daemon.sw.table.get(key)?.port?.name === 'host-b'), 5000);
    t.true(b.daemon.sw.mobility.announced >= 1);
    t.is(c.daemon.mesh.pathOf(peerAt(c, 'host-b')!), 'relay', 'host-c heard it through the relay');
  },
);

test.serial(
  'hostile input: unknown keys, forged introductions, relay requests for unknown sites, relayed frames from the wrong peer — dropped and counted, nothing crashes',
  async (t) => {
    const m = await buildNatMesh({
      sites: [
        { name: 'host-a', nat: 'full-cone' },
        { name: 'host-b', nat: 'full-cone' },
        { name: 'rogue', nat: 'port-restricted' },
      ],
      homeLists: ['host-a', 'host-b'],
    });
    t.teardown(m.stop);
    const a = m.sites.get('host-a')!;
    const b = m.sites.get('host-b')!;
    await waitFor(() => peerAt(a, 'host-b') !== undefined && peerAt(b, 'host-a') !== undefined, 5000);
    // An unknown key (rogue is not in home's config) knocks: refused and counted.
    await waitFor(() => m.home.daemon.mesh.drops.handshake_unknown_key > 0, 8000);
    t.is(peerAt(a, 'rogue'), undefined);

    // Get a direct session host-a ↔ host-b (full cone: direct).
    await punchDirect(m, 'host-a', 'host-b');
    const fake = {
      siteId: 0x123456,
      publicKey: Buffer.alloc(32, 7),
      flags: 1,
      name: 'evil',
      endpoints: [{ address: '203.0.113.66', port: 51820 }],
    };
    // A forged introduction from an introduced peer (host-b is no introducer for host-a), direct and relayed.
    const bAtA = peerAt(a, 'host-b')!;
    b.daemon.mesh.sendSignal(peerAt(b, 'host-a')!, encodeIntroduce(fake));
    const homeAtB = peerAt(b, 'home')!;
    // Relayed through home, as from host-b (home relays any signal between its sites).
    const relayed = homeAtB.current!.seal(
      7,
      encodeIntroduce(fake),
      bAtA.siteId === 0 ? 1 : peerAt(b, 'host-a')!.siteId,
    );
    b.daemon.mesh.socket.send(relayed!, 51820, HOME_PUBLIC);
    // A site sends home an introduction (home takes none) and a withdrawal of host-a.
    const homeAtA = peerAt(a, 'home')!;
    a.daemon.mesh.sendSignal(homeAtA, encodeIntroduce(fake));
    a.daemon.mesh.sendSignal(homeAtA, encodeWithdraw(b.daemon.config.publicKey));
    await waitFor(
      () => a.daemon.mesh.introStats.not_introducer >= 2 && m.home.daemon.mesh.introStats.not_introducer >= 2,
    );
    t.is(peerAt(a, 'evil'), undefined, 'the forged site was not added');
    t.not(peerAt(m.home, 'host-b'), undefined, 'home still has host-b');

    // A relay request for a site id home does not serve.
    const before = m.home.daemon.mesh.drops.relay_unknown_site;
    const req = homeAtA.current!.seal(MSG_RELAY_DATA, frame(mac(1), mac(0), 0x0800, Buffer.alloc(64)), 0xabcde);
    a.daemon.mesh.socket.send(req!, 51820, HOME_PUBLIC);
    await waitFor(() => m.home.daemon.mesh.drops.relay_unknown_site === before + 1);
    // Relayed data straight from host-b (not an introducer) to host-a: a site that does not relay refuses it.
    const fromB = peerAt(b, 'host-a')!.current!.seal(
      MSG_RELAY_DATA,
      frame(mac(0), mac(9), 0x0800, Buffer.alloc(64)),
      1,
    );
    b.daemon.mesh.socket.send(fromB!, peerAt(b, 'host-a')!.endpoint!.port, peerAt(b, 'host-a')!.endpoint!.address);
    await waitFor(() => a.daemon.mesh.drops.relay_refused >= 1);
    // Home (our introducer) relays from an origin it never introduced: dropped.
    const homeSideA = peerAt(m.home, 'host-a')!;
    const bogus = homeSideA.current!.seal(MSG_RELAY_DATA, frame(mac(0), mac(9), 0x0800, Buffer.alloc(64)), 0x7777);
    m.home.daemon.mesh.socket.send(bogus!, homeSideA.endpoint!.port, homeSideA.endpoint!.address);
    await waitFor(() => a.daemon.mesh.drops.relay_unknown_origin >= 1);
    // A malformed introduction from the real introducer.
    m.home.daemon.mesh.sendSignal(homeSideA, Buffer.from([16, 0, 0, 1, 2, 3]));
    await waitFor(() => a.daemon.mesh.introStats.malformed >= 1);
    t.is(a.tap.written.filter((f) => f.subarray(6, 12).equals(Buffer.from('525400000109', 'hex'))).length, 0);

    // Everyone still works.
    const n = b.tap.written.length;
    a.tap.inject(frame(mac(1), mac(0), 0x0800, Buffer.alloc(64)));
    await waitFor(() => b.tap.written.length === n + 1);
    t.pass();
  },
);

test.serial('DNS: a name that does not resolve is retried, never fatal; a new address is picked up', async (t) => {
  const m = await introducedNatMesh(t, { sites: [{ name: 'host-a', nat: 'port-restricted' }] });
  const a: NatSite = m.sites.get('host-a')!;
  m.dns.delete('home.nat.test');
  const home = peerAt(a, 'home')!;
  a.daemon.mesh.resolver.handshakeFailed(home, a.daemon.mesh.nowMs);
  await waitFor(() => a.daemon.mesh.resolver.stats.failures >= 1, 3000);
  t.is(home.endpoint?.address, HOME_PUBLIC, 'the last good endpoint stays');
  // The name comes back with two addresses, the first one dead: both are tried, the live one answers.
  m.dns.set('home.nat.test', ['203.0.113.99', HOME_PUBLIC]);
  a.daemon.mesh.resolver.handshakeFailed(home, a.daemon.mesh.nowMs);
  await waitFor(() => home.candidates.length === 2, 3000);
  a.daemon.mesh.abandonPending(home);
  a.daemon.mesh.initiate(home, home.candidates);
  const hs = home.lastHandshakeMs;
  await waitFor(() => home.lastHandshakeMs > hs, 3000);
  t.is(home.endpoint?.address, HOME_PUBLIC);
});

test.serial('a host’s overlay address (host_address) is what its agent registers for migrations', async (t) => {
  const m = await buildNatMesh({ sites: [{ name: 'host-a', nat: 'port-restricted' }] });
  t.teardown(m.stop);
  // host_address on a daemon with a bridge (the twin TAP: nothing is put on a real bridge).
  const cfg = parseConfig(
    `${m.sites.get('host-a')!.configText.replace('tap: { name: hw-host-a }', 'tap: { name: hw-host-a, bridge: br-hw }')}\nhost_address: 198.51.100.21/24\n`,
    'host-a.yaml',
  );
  t.deepEqual(cfg.hostAddress, { address: '198.51.100.21', prefixLength: 24 });
  const d = m.sites.get('host-a')!.daemon;
  d.config = cfg;
  t.is(d.overlayAddress(), '198.51.100.21');
  t.is(d.status().hostAddress, '198.51.100.21');
  const h = await Harness.start();
  t.teardown(() => h.stop());
  await h.addHost('host-a', { address: () => d.overlayAddress() });
  const hosts = await h.admin.request<{ hosts: { name: string; address: string | null }[] }>('GET', '/v1/hosts');
  t.is(hosts.hosts.find((x) => x.name === 'host-a')?.address, '198.51.100.21');
});

test.serial(
  'config: DNS endpoints, endpoint_tcp, introducer, introduce, relay, listen_tcp, host_address; errors name the key',
  (t) => {
    const key = encodeKey(generatePrivateKey());
    const pk = encodeKey(publicKeyOf(generatePrivateKey()));
    const base = `name: host-a\nprivate_key: "${key}"\nlisten: 0.0.0.0:51820\ntap: { name: hw0, bridge: br-hw }\n`;
    const ok = parseConfig(
      `${base}host_address: 198.51.100.21/24\npeers:\n  - { name: home, public_key: "${pk}", endpoint: "home.example.net:51820", endpoint_tcp: "home.example.net:443", introducer: true }\n`,
      'a.yaml',
    );
    t.deepEqual(ok.peers[0].endpointHost, { host: 'home.example.net', port: 51820 });
    t.is(ok.peers[0].endpoint, undefined);
    t.deepEqual(ok.peers[0].endpointTcp, { host: 'home.example.net', port: 443 });
    t.true(ok.peers[0].introducer);
    const home = parseConfig(
      `${base}introduce: true\nrelay: true\nlisten_tcp: 0.0.0.0:443\npeers:\n  - { name: host-b, public_key: "${pk}" }\n`,
      'home.yaml',
    );
    t.true(home.introduce && home.relay);
    t.deepEqual(home.listenTcp, { address: '0.0.0.0', port: 443 });
    const bad = (yaml: string, keyPath: string, words: RegExp) => {
      const err = t.throws(() => parseConfig(`${base}${yaml}`, 'x.yaml'));
      t.is((err as { key?: string }).key, keyPath, err?.message);
      t.regex(err!.message, words);
    };
    bad('relay: true\n', 'relay', /needs introduce: true/);
    bad(
      `peers:\n  - { name: h, public_key: "${pk}", endpoint: "bad_name!:1" }\n`,
      'peers[0].endpoint',
      /valid DNS name/,
    );
    bad(
      `peers:\n  - { name: h, public_key: "${pk}", endpoint: "home.example.net" }\n`,
      'peers[0].endpoint',
      /NAME:PORT/,
    );
    bad(`peers:\n  - { name: h, public_key: "${pk}", endpoint_tcp: "-x-:443" }\n`, 'peers[0].endpoint_tcp', /DNS name/);
    bad(`peers:\n  - { name: h, public_key: "${pk}", introducer: "yes" }\n`, 'peers[0].introducer', /true or false/);
    bad('host_address: 198.51.100.300/24\n', 'host_address', /ADDRESS\/PREFIX/);
    bad(
      `introduce: true\npeers:\n  - { name: h, public_key: "${pk}", introducer: true }\n`,
      'introduce',
      /cannot also take introductions/,
    );
    const example = fs
      .readFileSync(new URL('../../deploy/examples/vm-host-behind-nat.yaml', import.meta.url), 'utf8')
      .replace(/REPLACE_WITH_[A-Z_]+=*/g, pk)
      .replace(/private_key_file: .*/, `private_key: "${key}"`);
    const ex = parseConfig(example, 'vm-host-behind-nat.yaml');
    t.true(ex.peers[0].introducer && ex.peers[0].endpointHost?.host === 'home.example.net');
    const noBridge = `name: host-a\nprivate_key: "${key}"\nlisten: 0.0.0.0:51820\ntap: { name: hw0 }\nhost_address: 198.51.100.21/24\n`;
    const err = t.throws(() => parseConfig(noBridge, 'x.yaml'));
    t.regex(err!.message, /host_address: needs tap.bridge/);
  },
);

test.serial('a site that restarts learns every site again at once, and its frames reach them', async (t) => {
  const m = await introducedNatMesh(t, {
    sites: [
      { name: 'host-a', nat: 'port-restricted' },
      { name: 'host-b', nat: 'port-restricted' },
      { name: 'host-c', nat: 'symmetric' },
    ],
  });
  await learnGuests(m);
  await traffic(m, 'host-a', 'host-b', 30, 20);
  const dropsBefore = m.home.daemon.sw.drops.split_horizon;
  const restartedAt = Date.now();
  const a = await m.restart('host-a');
  await waitFor(() => allIntroduced(m), 5000);
  t.log(`host-a knew every site again ${Date.now() - restartedAt} ms after its restart`);
  const b = m.sites.get('host-b')!;
  const n = b.tap.written.length;
  // Its guest's ARP cache still has guest-b: the first frame is unicast to a MAC the new switch never saw.
  a.tap.inject(frame(mac(1), mac(0), 0x0800, Buffer.alloc(64)));
  await waitFor(() => b.tap.written.length === n + 1, 5000);
  // It was flooded (the new switch does not know guest-b yet): home fanned it out, and its own side refused
  // the copy for a MAC behind another site (one split-horizon drop), nothing more.
  t.true(m.home.daemon.sw.drops.split_horizon - dropsBefore <= 1);
});

test.serial('the overlay’s own addresses are never underlay endpoints (no mesh inside the mesh)', (t) => {
  // 'lo' stands in for the bridge: its subnet (127.0.0.0/8) is "the overlay".
  const overlay = new OverlayAddresses(['lo']);
  t.true(overlay.contains('127.0.0.9'));
  t.false(overlay.contains('203.0.113.1'));
  t.false(overlay.contains('tcp#3'));
  t.false(new OverlayAddresses([]).contains('127.0.0.9'));
});

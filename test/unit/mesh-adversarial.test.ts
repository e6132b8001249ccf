// Bad input against the mesh, in process: replays, spoofed sources, unknown keys, random and mutated datagrams.
import test from 'ava';
import { classify } from '../../src/mesh/wire.ts';
import { allUp, arp, buildMesh, waitFor } from '../helpers/memory-mesh.ts';

const GUEST_A = '52:54:00:00:00:0a';

test('a replayed data packet from another address is dropped and does not move the peer', async (t) => {
  const { nodes, net, stop } = await buildMesh({ names: ['home', 'host-a'] });
  t.teardown(stop);
  await waitFor(() => allUp(nodes));
  const home = nodes.get('home')!;
  const a = nodes.get('host-a')!;
  let captured: Buffer | null = null;
  net.filter = (msg, from) => {
    if (from === '192.0.2.2:51820' && classify(msg) === 4 && msg.length > 32) captured = Buffer.from(msg);
    return msg;
  };
  a.tap.inject(arp(1, GUEST_A, '192.168.77.10', '00:00:00:00:00:00', '192.168.77.1'));
  await waitFor(() => home.tap.written.length === 1 && captured !== null);
  const peer = home.daemon.mesh.peers[0];
  const before = home.daemon.mesh.drops.replay;
  net.inject(captured!, '203.0.113.66', 4444, '192.0.2.1', 51820);
  net.inject(captured!, '192.0.2.2', 51820, '192.0.2.1', 51820);
  await waitFor(() => home.daemon.mesh.drops.replay === before + 2);
  t.deepEqual(peer.endpoint, { address: '192.0.2.2', port: 51820 });
  t.is(home.tap.written.length, 1, 'the replay was not delivered');
  t.is(peer.stats.roams, 0);
});

test('an authentic packet from a new address moves the peer (roaming)', async (t) => {
  const { nodes, net, stop } = await buildMesh({ names: ['home', 'host-a'] });
  t.teardown(stop);
  await waitFor(() => allUp(nodes));
  const home = nodes.get('home')!;
  const a = nodes.get('host-a')!;
  // host-a's packets now appear to come from a new NAT mapping: deliver them as from 198.51.100.7:6000.
  net.filter = (msg, from, to) => {
    if (from === '192.0.2.2:51820' && to === '192.0.2.1:51820') {
      net.inject(msg, '198.51.100.7', 6000, '192.0.2.1', 51820);
      return null;
    }
    return msg;
  };
  a.tap.inject(arp(1, GUEST_A, '192.168.77.10', '00:00:00:00:00:00', '192.168.77.1'));
  await waitFor(() => home.tap.written.length === 1);
  t.deepEqual(home.daemon.mesh.peers[0].endpoint, { address: '198.51.100.7', port: 6000 });
});

test('a replayed handshake initiation is refused and does not move the peer', async (t) => {
  const { nodes, net, stop } = await buildMesh({
    names: ['home', 'host-a'],
    peersOf: (n) => (n === 'home' ? [{ name: 'host-a', endpoint: false }] : [{ name: 'home', endpoint: true }]),
  });
  t.teardown(stop);
  await waitFor(() => allUp(nodes));
  const home = nodes.get('home')!;
  const a = nodes.get('host-a')!;
  let init: Buffer | null = null;
  net.filter = (msg) => {
    if (classify(msg) === 1 && !init) init = Buffer.from(msg);
    return msg;
  };
  const responded = home.daemon.mesh.handshakes.responded;
  a.daemon.mesh.initiate(a.daemon.mesh.peers[0]);
  await waitFor(() => init !== null && home.daemon.mesh.handshakes.responded === responded + 1);
  net.inject(init!, '203.0.113.9', 9999, '192.0.2.1', 51820);
  await waitFor(() => home.daemon.mesh.handshakes.replay === 1);
  t.deepEqual(home.daemon.mesh.peers[0].endpoint, { address: '192.0.2.2', port: 51820 });
  // After a restart no timestamp is remembered: the replay is answered, but the peer does not move, and
  // the session it would start can never be confirmed by the replayer.
  home.daemon.mesh.peers[0].lastTimestamp = null;
  net.inject(init!, '203.0.113.9', 9999, '192.0.2.1', 51820);
  await waitFor(() => home.daemon.mesh.handshakes.responded === responded + 2);
  await new Promise((r) => setTimeout(r, 30));
  t.deepEqual(home.daemon.mesh.peers[0].endpoint, { address: '192.0.2.2', port: 51820 });
  a.tap.inject(arp(1, '52:54:00:00:00:0a', '198.51.100.10', '00:00:00:00:00:00', '198.51.100.1'));
  await waitFor(() => home.tap.written.length === 1);
});

test('a node whose key is not in the config cannot reach the mesh', async (t) => {
  // "intruder" lists home as a peer, but home does not list the intruder.
  const { nodes, stop } = await buildMesh({
    names: ['home', 'intruder'],
    peersOf: (n) => (n === 'home' ? [] : [{ name: 'home', endpoint: true }]),
  });
  t.teardown(stop);
  const home = nodes.get('home')!;
  const intruder = nodes.get('intruder')!;
  await waitFor(() => home.daemon.mesh.handshakes.unknown_key >= 1);
  intruder.tap.inject(arp(1, GUEST_A, '192.168.77.10', '00:00:00:00:00:00', '192.168.77.1'));
  await new Promise((r) => setTimeout(r, 100));
  t.is(home.tap.written.length, 0);
  t.is(intruder.daemon.mesh.peers[0].current, null);
});

test('10,000 random and mutated datagrams leave a daemon running and forwarding', async (t) => {
  const { nodes, net, stop } = await buildMesh({ names: ['home', 'host-a'] });
  t.teardown(stop);
  await waitFor(() => allUp(nodes));
  const home = nodes.get('home')!;
  const a = nodes.get('host-a')!;
  const samples: Buffer[] = [];
  net.filter = (msg) => {
    if (samples.length < 20) samples.push(Buffer.from(msg));
    return msg;
  };
  a.tap.inject(arp(1, GUEST_A, '192.168.77.10', '00:00:00:00:00:00', '192.168.77.1'));
  await waitFor(() => home.tap.written.length === 1);
  let seed = 12345;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed;
  };
  for (let i = 0; i < 10_000; i++) {
    let msg: Buffer;
    if (i % 2 === 0 && samples.length) {
      msg = Buffer.from(samples[rand() % samples.length]);
      const flips = 1 + (rand() % 4);
      for (let f = 0; f < flips; f++) msg[rand() % msg.length] ^= 1 + (rand() % 255);
      if (rand() % 5 === 0) msg = msg.subarray(0, rand() % msg.length);
    } else {
      msg = Buffer.alloc(rand() % 1600);
      for (let j = 0; j < msg.length; j++) msg[j] = rand() & 0xff;
      if (msg.length > 0 && rand() % 3 === 0) msg[0] = [1, 2, 4, 5][rand() % 4];
      if (msg.length > 4 && rand() % 2 === 0) msg.fill(0, 1, 4);
    }
    net.inject(msg, `203.0.113.${(rand() % 250) + 1}`, 1000 + (rand() % 60000), '192.0.2.1', 51820);
  }
  await new Promise((r) => setTimeout(r, 300));
  const d = home.daemon.mesh.drops;
  const dropped =
    d.malformed +
    d.unknown_index +
    d.auth_failed +
    d.replay +
    d.counter_range +
    d.handshake_invalid +
    d.handshake_unknown_key;
  t.true(dropped >= 9_000, `dropped ${dropped}`);
  t.deepEqual(home.daemon.mesh.peers[0].endpoint, { address: '192.0.2.2', port: 51820 });
  a.tap.inject(arp(1, GUEST_A, '192.168.77.10', '00:00:00:00:00:00', '192.168.77.2'));
  await waitFor(() => home.tap.written.length === 2);
  t.pass();
});

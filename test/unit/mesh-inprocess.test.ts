// Three daemons over the in-memory TAP/UDP twins exchange real Ethernet/ARP frames, byte-exact.
import test from 'ava';
import { DISPLACED_SESSION_GRACE_MS, DISPLACED_SESSIONS_MAX, MSG_DATA } from '../../src/constants.ts';
import { classify } from '../../src/mesh/wire.ts';
import { allUp, arp, buildMesh, frame, waitFor } from '../helpers/memory-mesh.ts';

const GUEST_A = '52:54:00:00:00:0a';
const GUEST_B = '52:54:00:00:00:0b';
const LAN = '52:54:00:00:00:01';

test('ARP request floods to every site, the reply goes to the asker only, byte-exact', async (t) => {
  const { nodes, stop } = await buildMesh({ names: ['home', 'host-a', 'host-b'] });
  t.teardown(stop);
  await waitFor(() => allUp(nodes));
  const [home, a, b] = ['home', 'host-a', 'host-b'].map((n) => nodes.get(n)!);

  const request = arp(1, GUEST_A, '192.168.77.10', '00:00:00:00:00:00', '192.168.77.1');
  a.tap.inject(request);
  await waitFor(() => home.tap.written.length === 1 && b.tap.written.length === 1);
  t.deepEqual(home.tap.written[0], request);
  t.deepEqual(b.tap.written[0], request);
  t.is(a.tap.written.length, 0, 'never echoed back to its own TAP');

  const reply = arp(2, LAN, '192.168.77.1', GUEST_A, '192.168.77.10');
  home.tap.inject(reply);
  await waitFor(() => a.tap.written.length === 1);
  t.deepEqual(a.tap.written[0], reply);
  await new Promise((r) => setTimeout(r, 50));
  t.is(b.tap.written.length, 1, 'the unicast reply was not flooded to host-b');

  // Unicast between guests on two VM hosts, both directions, large frames.
  const payload = Buffer.alloc(1400, 0x5a);
  b.tap.inject(frame(GUEST_A, GUEST_B, 0x0800, payload));
  await waitFor(() => a.tap.written.length === 2);
  t.deepEqual(a.tap.written[1], frame(GUEST_A, GUEST_B, 0x0800, payload));
  a.tap.inject(frame(GUEST_B, GUEST_A, 0x0800, payload));
  await waitFor(() => b.tap.written.length === 2);
  t.deepEqual(b.tap.written[1], frame(GUEST_B, GUEST_A, 0x0800, payload));
  t.is(home.tap.written.length, 1, 'known unicast between host-a and host-b does not touch home');
});

test('split horizon: a frame from a peer is never sent on to other peers', async (t) => {
  const { nodes, net, stop } = await buildMesh({ names: ['home', 'host-a', 'host-b'] });
  t.teardown(stop);
  await waitFor(() => allUp(nodes));
  const a = nodes.get('host-a')!;
  let relayed = 0;
  net.filter = (msg, from, to) => {
    // Anything home sends to host-b after host-a's broadcast would be a relay.
    if (from.startsWith('192.0.2.1:') && to.startsWith('192.0.2.3:') && classify(msg) === 4 && msg.length > 60)
      relayed++;
    return msg;
  };
  a.tap.inject(arp(1, GUEST_A, '192.168.77.10', '00:00:00:00:00:00', '192.168.77.99'));
  await waitFor(() => nodes.get('host-b')!.tap.written.length === 1);
  await new Promise((r) => setTimeout(r, 50));
  t.is(relayed, 0);
});

test('frames too large for one underlay datagram are dropped and counted, not fragmented', async (t) => {
  const { nodes, stop } = await buildMesh({ names: ['home', 'host-a'] });
  t.teardown(stop);
  await waitFor(() => allUp(nodes));
  const a = nodes.get('host-a')!;
  a.tap.inject(frame('ff:ff:ff:ff:ff:ff', GUEST_A, 0x0800, Buffer.alloc(1500)));
  await new Promise((r) => setTimeout(r, 30));
  t.is(a.daemon.sw.drops.too_big, 1);
  t.is(nodes.get('home')!.tap.written.length, 0);
});

test('IPv6 underlay', async (t) => {
  const { nodes, stop } = await buildMesh({ names: ['home', 'host-a'], family: 6 });
  t.teardown(stop);
  await waitFor(() => allUp(nodes));
  const req = arp(1, GUEST_A, '192.168.77.10', '00:00:00:00:00:00', '192.168.77.1');
  nodes.get('host-a')!.tap.inject(req);
  await waitFor(() => nodes.get('home')!.tap.written.length === 1);
  t.deepEqual(nodes.get('home')!.tap.written[0], req);
});

test('a peer without an endpoint is reached once it has spoken to us', async (t) => {
  const { nodes, stop } = await buildMesh({
    names: ['home', 'host-a'],
    peersOf: (name) => (name === 'home' ? [{ name: 'host-a', endpoint: false }] : [{ name: 'home', endpoint: true }]),
  });
  t.teardown(stop);
  await waitFor(() => allUp(nodes));
  const home = nodes.get('home')!;
  t.deepEqual(home.daemon.mesh.peers[0].endpoint, { address: '192.0.2.2', port: 51820 });
  const req = arp(1, LAN, '192.168.77.1', '00:00:00:00:00:00', '192.168.77.10');
  home.tap.inject(req);
  await waitFor(() => nodes.get('host-a')!.tap.written.length === 1);
  t.deepEqual(nodes.get('host-a')!.tap.written[0], req);
});

test('both sites rekeying at once: a datagram sealed under the session they just replaced is still delivered', async (t) => {
  // Two handshakes that cross (each site initiates; what hole punching does on purpose) turn each site's
  // sessions over twice within a round trip. A datagram the peer sealed a moment before, under the session
  // both just replaced, must still be accepted (it is authentic and fresh), not dropped as an unknown index.
  const { nodes, net, stop } = await buildMesh({ names: ['host-a', 'host-b'] });
  t.teardown(stop);
  await waitFor(() => allUp(nodes));
  const [a, b] = ['host-a', 'host-b'].map((n) => nodes.get(n)!);
  const payload = Buffer.alloc(200, 0x42);
  b.tap.inject(frame(GUEST_A, GUEST_B, 0x0800, payload)); // flooded: both tables learn both MACs
  a.tap.inject(frame(GUEST_B, GUEST_A, 0x0800, payload));
  await waitFor(() => a.tap.written.length === 1 && b.tap.written.length === 1);
  const [pa, pb] = [a.daemon.mesh.peers[0], b.daemon.mesh.peers[0]];
  const old = pa.current;
  t.truthy(old);
  // Hold host-b's next two datagrams to host-a: sealed under the session in use now.
  const held: Buffer[] = [];
  net.filter = (msg, from) => {
    if (held.length < 2 && from.startsWith(`${b.address}:`) && classify(msg) === MSG_DATA) {
      held.push(Buffer.from(msg));
      return null;
    }
    return msg;
  };
  const late = frame(GUEST_A, GUEST_B, 0x0800, Buffer.alloc(300, 0x17));
  b.tap.inject(late);
  b.tap.inject(frame(GUEST_A, GUEST_B, 0x0800, Buffer.alloc(300, 0x18)));
  await waitFor(() => held.length === 2);
  net.filter = null;
  // Both initiate at once; each completes its own handshake and takes the other's (two turnovers each).
  a.daemon.mesh.initiate(pa);
  b.daemon.mesh.initiate(pb);
  await waitFor(() => pa.current !== old && pa.previous !== old && pa.next === null, 3000);
  const unknownBefore = a.daemon.mesh.drops.unknown_index;
  b.daemon.mesh.socket.send(held[0], a.port, a.address);
  await waitFor(() => a.tap.written.length === 2, 2000);
  t.deepEqual(a.tap.written[1], late);
  t.is(a.daemon.mesh.drops.unknown_index, unknownBefore);
  // Only for a grace: once it is over, the replaced session is gone and what is sealed under it is refused.
  await new Promise((r) => setTimeout(r, DISPLACED_SESSION_GRACE_MS + 500));
  b.daemon.mesh.socket.send(held[1], a.port, a.address);
  await waitFor(() => a.daemon.mesh.drops.unknown_index === unknownBefore + 1, 2000);
  t.is(a.tap.written.length, 2, 'not delivered');
});

test('a peer that initiates again and again cannot make a site hold more than DISPLACED_SESSIONS_MAX old sessions', async (t) => {
  // Each new initiation displaces the unconfirmed session before it; the displaced ones are bounded per peer,
  // so a hostile peer (it has its key) repeating handshakes cannot pile up keys at the site.
  const { nodes, stop } = await buildMesh({ names: ['host-a', 'host-b'] });
  t.teardown(stop);
  await waitFor(() => allUp(nodes));
  const [a, b] = ['host-a', 'host-b'].map((n) => nodes.get(n)!);
  const [pa, pb] = [a.daemon.mesh.peers[0], b.daemon.mesh.peers[0]];
  const respondedBefore = a.daemon.mesh.handshakes.responded;
  for (let i = 0; i < 20; i++) {
    b.daemon.mesh.initiate(pb);
    await new Promise((r) => setTimeout(r, 5));
  }
  await waitFor(() => a.daemon.mesh.handshakes.responded >= respondedBefore + 20, 3000);
  t.true(pa.displaced.length <= DISPLACED_SESSIONS_MAX, `${pa.displaced.length} displaced sessions held`);
});

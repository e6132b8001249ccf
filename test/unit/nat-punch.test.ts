// Hole punching between sites behind NAT, in process (no root): frames start through home's relay and a
// punched direct path takes over; a direct path that stops answering falls back to the relay and comes back;
// a NAT that forgets its mappings is punched through again. (Sites behind NAT: nat-inprocess.test.ts; the
// path each pair of NAT kinds takes: nat-paths.test.ts; the same with real NATs made by iptables:
// test/system/nat-lab.test.ts.) Serial: each test times gaps on the real clock.
import test, { type ExecutionContext } from 'ava';
import { macKey } from '../../src/addr.ts';
import { arp, waitFor } from '../helpers/memory-mesh.ts';
import {
  guestMac as mac,
  introducedNatMesh,
  type NatMesh,
  type NatMeshSpec,
  pathBetween,
  peerAt,
  punchDirect,
  traffic,
} from '../helpers/nat-mesh.ts';

function relayedBetween(m: NatMesh, a: string, b: string): number {
  return m.home.daemon.relayed().find((r) => r.from === a && r.to === b)?.packets ?? 0;
}

type NatKind = NatMeshSpec['sites'][number]['nat'];

/** host-a and host-b behind these NATs, introduced by home, with a direct path punched between them. */
async function punchedPair(t: ExecutionContext, natA: NatKind, natB: NatKind) {
  const m = await introducedNatMesh(t, {
    sites: [
      { name: 'host-a', nat: natA },
      { name: 'host-b', nat: natB },
    ],
  });
  await punchDirect(m, 'host-a', 'host-b');
  return { m, a: m.sites.get('host-a')!, b: m.sites.get('host-b')! };
}

test.serial(
  'frames between two NATed sites go through home, the MAC table points at the origin site, and a punched direct path takes over without relearning',
  async (t) => {
    const m = await introducedNatMesh(t, {
      sites: [
        { name: 'host-a', nat: 'port-restricted' },
        { name: 'host-b', nat: 'port-restricted' },
      ],
    });
    const a = m.sites.get('host-a')!;
    const b = m.sites.get('host-b')!;
    // A broadcast from guest-a: one copy to home, which delivers it to its LAN and fans it out to host-b.
    const req = arp(1, mac(0), '198.51.100.10', '00:00:00:00:00:00', '198.51.100.11');
    a.tap.inject(req);
    await waitFor(() => b.tap.written.length === 1 && m.home.tap.written.length === 1);
    t.deepEqual(b.tap.written[0], req);
    t.deepEqual(m.home.tap.written[0], req);
    t.is(b.daemon.sw.table.get(macKey(Buffer.from(mac(0).replace(/:/g, ''), 'hex'), 0))?.port?.name, 'host-a');
    t.is(relayedBetween(m, 'host-a', 'host-b'), 1, 'home relayed the broadcast once');
    // The reply: unicast from guest-b to guest-a, at first through home.
    const reply = arp(2, mac(1), '198.51.100.11', mac(0), '198.51.100.10');
    b.tap.inject(reply);
    await waitFor(() => a.tap.written.length === 1);
    t.deepEqual(a.tap.written[0], reply);
    const entry = a.daemon.sw.table.get(macKey(Buffer.from(mac(1).replace(/:/g, ''), 'hex'), 0))!;
    t.is(entry.port?.name, 'host-b', "host-a's table has guest-b behind host-b, not behind home");
    const movesBefore = a.daemon.sw.mobility.moves;
    // Keep talking until the direct path is up (both sides punch) and takes the frames.
    const direct = () => pathBetween(m, 'host-a', 'host-b') === 'direct';
    await Promise.all([
      traffic(m, 'host-a', 'host-b', 400, 20, direct),
      traffic(m, 'host-b', 'host-a', 400, 20, direct),
      waitFor(direct, 8000),
    ]);
    const relayed = relayedBetween(m, 'host-a', 'host-b') + relayedBetween(m, 'host-b', 'host-a');
    const written = b.tap.written.length;
    await traffic(m, 'host-a', 'host-b', 20, 10);
    await waitFor(() => b.tap.written.length === written + 20);
    t.is(relayedBetween(m, 'host-a', 'host-b') + relayedBetween(m, 'host-b', 'host-a'), relayed, 'nothing relayed now');
    t.is(a.daemon.sw.table.get(macKey(Buffer.from(mac(1).replace(/:/g, ''), 'hex'), 0)), entry, 'same entry');
    t.is(entry.port?.name, 'host-b');
    t.is(a.daemon.sw.mobility.moves, movesBefore, 'no MAC moved');
    t.true(a.daemon.status().punches.direct + b.daemon.status().punches.direct >= 1, 'a punch succeeded');
    const ps = a.daemon.status().peers.find((p) => p.name === 'host-b')!;
    t.is(ps.path, 'direct');
    t.is(ps.learned, 'roaming', 'the direct endpoint came from the peer itself');
  },
);

test.serial(
  'a direct path that stops answering falls back to the relay within 3 s, and comes back when it answers',
  async (t) => {
    const { m, a, b } = await punchedPair(t, 'full-cone', 'port-restricted');
    // Break the direct path (both directions), keep sending every 20 ms, and time the gap at host-b.
    let broken = true;
    const pa = a.publicAddress;
    const pb = b.publicAddress;
    m.net.filter = (msg, from, to) => {
      const f = from.split(':')[0];
      const d = to.split(':')[0];
      return broken && ((f === pa && d === pb) || (f === pb && d === pa)) ? null : msg;
    };
    const arrivals: number[] = [];
    b.tap.onWrite = () => arrivals.push(Date.now());
    const brokeAt = Date.now();
    // 150 frames (3 s) at most; once host-a has moved to the relay, 50 more (1 s) on it.
    let tail = 50;
    await traffic(m, 'host-a', 'host-b', 150, 20, () => pathBetween(m, 'host-a', 'host-b') === 'relay' && --tail === 0);
    const after = arrivals.filter((x) => x > brokeAt);
    t.true(after.length > 0, 'frames arrived after the break');
    const gap = after[0] - brokeAt;
    t.log(`first frame at host-b ${gap} ms after the direct path broke (relay)`);
    t.true(gap <= 3000, `back through the relay within 3 s (${gap} ms)`);
    t.is(pathBetween(m, 'host-a', 'host-b'), 'relay');
    t.true(relayedBetween(m, 'host-a', 'host-b') > 20);
    // Mend it: the path goes back to direct (within 8 s of frames every 20 ms).
    broken = false;
    const mendedAt = Date.now();
    const direct = () => pathBetween(m, 'host-a', 'host-b') === 'direct';
    await Promise.all([traffic(m, 'host-a', 'host-b', 400, 20, direct), waitFor(direct, 8000)]);
    t.log(`direct again ${Date.now() - mendedAt} ms after the path answered again`);
  },
);

test.serial(
  'a NAT that forgets its mappings (conntrack -F) mid-stream: frames keep arriving through home within 3 s, and a new direct path is punched',
  async (t) => {
    const { m, a, b } = await punchedPair(t, 'port-restricted', 'port-restricted');
    const before = peerAt(b, 'host-a')!.endpoint!;
    const arrivals: number[] = [];
    b.tap.onWrite = () => arrivals.push(Date.now());
    const flushedAt = Date.now();
    a.nat!.flush(); // every mapping gone: host-a's next packets leave from new public ports
    // Frames every 20 ms (500 at most: 10 s) until the new direct path is up, and 50 more (1 s) on it.
    const directAgain = () =>
      a.daemon.mesh.pathOf(peerAt(a, 'host-b')!) === 'direct' &&
      b.daemon.mesh.pathOf(peerAt(b, 'host-a')!) === 'direct' &&
      peerAt(b, 'host-a')!.endpoint!.port !== before.port;
    let tail = 50;
    const stream = traffic(m, 'host-a', 'host-b', 550, 20, () => directAgain() && --tail === 0);
    await waitFor(() => arrivals.some((x) => x > flushedAt + 100), 5000);
    await waitFor(directAgain, 10_000);
    await stream;
    const after = arrivals.filter((x) => x > flushedAt);
    let gap = after[0] - flushedAt;
    for (let i = 1; i < after.length; i++) gap = Math.max(gap, after[i] - after[i - 1]);
    t.log(
      `after the flush: longest gap between frames at host-b ${gap} ms; direct again at ${peerAt(b, 'host-a')!.endpoint!.address}:${peerAt(b, 'host-a')!.endpoint!.port} (was port ${before.port})`,
    );
    t.true(gap <= 3000, `frames resumed within 3 s (${gap} ms)`);
  },
);

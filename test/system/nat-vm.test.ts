// A real QEMU guest (TCG) live-migrates between VM hosts behind NATs (issue 9): every host names only home
// (lab/nat.ts), each has a host address on the overlay (host_address), and the migration stream goes to the
// destination's overlay address, so it rides the mesh (encrypted) through the NATs: the destination cannot be
// reached on its underlay address at all. Two moves of one guest:
//   host-a (port-restricted) → host-b (port-restricted): the stream takes the punched direct path;
//   host-b (port-restricted) → host-c (symmetric): no direct path is possible, the stream is relayed by home.
// Before each, the destination's daemon is told `homewire expect`; the LAN host at home pings the guest every
// 10 ms and sees no larger gap than the guest's own reply gap at its NIC + 20 ms (the measurement of
// test/system/vm-migration.test.ts).
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { hostAddress, NatNetwork, natSiteConfig } from '../../lab/nat.ts';
import { sleep } from '../../lab/run.ts';
import { HOMEWIRE_BIN, type Lab } from '../../lab/topology.ts';
import { GUEST_TAP, type LabGuests } from '../../lab/vm/guests.ts';
import { fromGuestFilter, replyGaps, startPing, wirePause } from '../../lab/vm/measure.ts';
import type { Vm } from '../../src/agent/qemu/driver.ts';
import { guestMac } from '../../src/agent/qemu/driver.ts';
import { controlRequest } from '../../src/control.ts';
import type { StatusReport } from '../../src/status.ts';
import { newPrefix } from '../helpers/netns.ts';
import { vmLab, vmTest } from '../helpers/vm.ts';

const fmt = (ms: number) => `${ms.toFixed(1)} ms`;
const KINDS = { 'host-a': 'port-restricted', 'host-b': 'port-restricted', 'host-c': 'symmetric' } as const;
const ADDRESSES: Record<string, string> = {
  'host-a': hostAddress(1),
  'host-b': hostAddress(2),
  'host-c': hostAddress(3),
};

function statusOf(lab: Lab): (site: string) => Promise<StatusReport> {
  return async (site) =>
    (await controlRequest<StatusReport>(path.join(lab.dir, `${site}.sock`), 'GET', '/v1/status')).body;
}

/** What the sites and the kernel on `from` say about the path to `to` (for a migration that failed). */
async function diagnose(lab: Lab, from: string, to: string, mac: string): Promise<string> {
  const out: string[] = [];
  const nonZero = (r: Record<string, number>) => Object.fromEntries(Object.entries(r).filter(([, v]) => v !== 0));
  for (const site of ['home', from, to]) {
    try {
      const s = await statusOf(lab)(site);
      const peers = s.peers.map((p) => ({
        name: p.name,
        up: p.up,
        path: p.path,
        via: p.via,
        endpoint: p.endpoint,
        hs: p.lastHandshakeSecondsAgo,
      }));
      const entry = s.macs.find((m) => m.mac === mac);
      const sec = s.security;
      const drops = {
        drops: nonZero(s.drops),
        port: nonZero(sec.portSecurityDrops),
        own: nonZero(sec.ownershipDrops),
        insp: nonZero(sec.inspectionDrops),
        storm: nonZero(sec.stormDrops),
      };
      out.push(
        `${site}: guest MAC at ${JSON.stringify(entry)}; peers ${JSON.stringify(peers)} ${JSON.stringify(drops)} mobility ${JSON.stringify(nonZero(s.mobility))} punches ${JSON.stringify(s.punches)}`,
      );
    } catch (e) {
      out.push(`${site}: status failed: ${(e as Error).message}`);
    }
  }
  for (const cmd of [
    ['ss', '-tnoi'],
    ['ip', 'neigh', 'show'],
    ['ping', '-n', '-c', '3', '-i', '0.2', '-W', '1', ADDRESSES[to]],
  ]) {
    const r = await lab.exec(from, cmd);
    out.push(`${from}$ ${cmd.join(' ')}\n${r.stdout}${r.stderr}`);
  }
  for (const site of ['home', from, to]) out.push(`${site} log:\n${lab.logTail(site, 20)}`);
  return out.join('\n');
}

/** Migrates `vm` from `from` to `to` (its overlay address) while the LAN host pings it; asserts the gap. */
async function migrate(
  t: ExecutionContext,
  lab: Lab,
  guests: LabGuests,
  vm: Vm,
  ip: string,
  from: string,
  to: string,
  mac: string,
): Promise<Vm> {
  const dst = await guests.incoming(to, vm, 4444, { address: ADDRESSES[to] });
  t.is(dst.uri, `tcp:${ADDRESSES[to]}:4444`);
  const capFrom = await lab.capture(from, GUEST_TAP, path.join(lab.dir, `${from}.pcap`), fromGuestFilter(mac));
  const capTo = await lab.capture(to, GUEST_TAP, path.join(lab.dir, `${to}.pcap`), fromGuestFilter(mac));
  const warm = await lab.ping('lan', ip, { count: 3, intervalS: 0.1 });
  t.true(
    warm.ok,
    `the LAN host reaches the guest on ${from} (${warm.received}/3)${warm.ok ? '' : `\nthe guest's console (tail): ${JSON.stringify(vm.serial().slice(-800))}\n${await diagnose(lab, from, to, mac)}`}`,
  );
  const relayedBefore = (await statusOf(lab)('home')).relayed.reduce((a, r) => a + r.bytes, 0);
  const ping = startPing(lab, 'lan', ip, 0.01);
  await sleep(1000);
  // The coordinator's part (security.mac_moves: authorized): every site is told of the move, then `to` expects it.
  await lab.authorizeMove(mac, to);
  const expect = await lab.exec(to, [
    process.execPath,
    HOMEWIRE_BIN,
    'expect',
    '--config',
    lab.site(to).configFile,
    '--mac',
    mac,
  ]);
  t.is(expect.code, 0, expect.stderr);
  const r = await vm.migrate(dst.uri).catch(async (e: unknown) => {
    throw new Error(`${(e as Error).message}\n${await diagnose(lab, from, to, mac)}`);
  });
  await dst.vm.waitRunning(20_000);
  const resumedAt = Date.now();
  await sleep(1500);
  const trace = await ping.stop();
  const toPackets = await capTo.stop();
  const pause = wirePause(await capFrom.stop(), toPackets, mac);
  const s = await statusOf(lab)(from);
  const peer = s.peers.find((p) => p.name === to);
  const relayed = (await statusOf(lab)('home')).relayed.reduce((a, x) => a + x.bytes, 0) - relayedBefore;
  t.log(
    `${from} → ${to}: total ${r.totalTimeMs} ms, QEMU downtime ${r.downtimeMs} ms, ${(r.ramTransferredBytes / 2 ** 20).toFixed(1)} MiB; path ${peer?.path}${peer?.path === 'relay' ? ` via ${peer.via}` : ` (${peer?.endpoint})`}; home relayed ${(relayed / 2 ** 20).toFixed(1)} MiB meanwhile`,
  );
  t.truthy(pause, 'both TAP captures saw the guest');
  if (!pause) return dst.vm;
  const gaps = replyGaps(trace);
  t.log(
    `LAN ping (10 ms): ${trace.replies.length} replies, ${trace.lost} lost; largest gap ${fmt(gaps[0].ms)}; the guest's own reply gap at its NIC ${pause.nicReplyGapMs === null ? '-' : fmt(pause.nicReplyGapMs)}; pause to the RARP ${fmt(pause.pauseMs)}`,
  );
  t.true(trace.replies.length > 100, 'the LAN host pinged the guest throughout');
  // ping counts only the gaps between replies: a guest lost at the cut-over would show as no loss at all.
  const lastReply = trace.replies[trace.replies.length - 1].atMs;
  const reached = lastReply > resumedAt + 1000;
  let why = '';
  if (!reached) {
    // Did the guest answer on its new host's TAP (lost on the way back), or did no request reach it?
    const replies = toPackets.filter((p) => p.icmpType === 0 && p.ts * 1000 > resumedAt).length;
    const now = await lab.ping('lan', ip, { count: 5, intervalS: 0.2 });
    why =
      `\nthe guest sent ${replies} echo replies into ${to}'s TAP after it resumed; ping stopped with ` +
      `${trace.transmitted} sent; a fresh LAN ping now: ${now.received}/5\nping output tail: ${trace.output.slice(-600)}\n` +
      `the guest's console on ${to} (tail): ${JSON.stringify(dst.vm.serial().slice(-800))}\n` +
      (await diagnose(lab, from, to, mac));
  }
  t.true(
    reached,
    `the LAN host still reaches the guest on ${to} (last reply ${lastReply - resumedAt} ms after it resumed)${why}`,
  );
  t.truthy(pause.nicReplyGapMs, 'the guest answered pings on both TAPs');
  t.true(
    gaps[0].ms <= pause.nicReplyGapMs! + 20,
    `largest LAN gap ${fmt(gaps[0].ms)} ≤ the guest's own reply gap ${fmt(pause.nicReplyGapMs!)} + 20 ms`,
  );
  const home = await statusOf(lab)('home');
  t.is(home.macs.find((m) => m.mac === mac)?.port, to, `home's switch has the guest behind ${to}`);
  if (peer?.path === 'relay') t.true(relayed > 30 * 2 ** 20, 'the migration stream was relayed by home');
  else t.true((peer?.txBytes ?? 0) > 30 * 2 ** 20, `the migration stream went straight to ${to} through the mesh`);
  return dst.vm;
}

vmTest(
  'QEMU live migrations between hosts behind NATs, over their overlay addresses, direct and relayed: LAN ping gap ≤ the guest’s own + 20 ms',
  async (t) => {
    t.timeout(300_000);
    const { lab, guests } = await vmLab(t, {
      prefix: newPrefix().replace(/^hwt/, 'hwn'),
      sites: ['home', 'host-a', 'host-b', 'host-c'],
      network: new NatNetwork(KINDS),
      peersOf: (s, all) => (s === 'home' ? all.filter((x) => x !== 'home') : ['home']),
      siteConfig: natSiteConfig({ hostAddresses: ADDRESSES }),
      upTimeoutMs: 60_000,
    });
    const status = statusOf(lab);
    t.is((await status('host-a')).hostAddress, ADDRESSES['host-a'], 'host-a reports its overlay address');
    // The hosts know each other once home has introduced them (a moment after their sessions with home).
    const hosts = Object.keys(KINDS);
    for (let i = 0; i < 100; i++) {
      const all = await Promise.all(hosts.map(status));
      if (all.every((s, k) => hosts.every((h) => h === hosts[k] || s.peers.some((p) => p.name === h)))) break;
      await sleep(100);
    }
    // host-b is unreachable on its underlay address from host-a (both behind NAT): only the overlay works.
    const under = await lab.exec('host-a', ['ping', '-n', '-c', '1', '-W', '1', lab.site('host-b').underlay4]);
    t.not(under.code, 0, "host-b's private underlay address is not reachable from host-a");
    for (const [a, b] of [
      ['host-a', 'host-b'],
      ['host-b', 'host-c'],
    ]) {
      const over = await lab.ping(a, ADDRESSES[b], { count: 5, intervalS: 0.2 });
      t.true(over.received >= 4, `${a} reaches ${b}'s overlay address through the mesh`);
    }

    const mac = guestMac(0x4e21);
    const { vm, lease, bootMs } = await guests().boot('host-a', { mac });
    t.log(`guest ${mac} up on host-a with ${lease.ip} (DHCP from home, through the NAT) in ${bootMs} ms`);
    const onB = await migrate(t, lab, guests(), vm, lease.ip, 'host-a', 'host-b', mac);
    t.is((await status('host-b')).peers.find((p) => p.name === 'host-c')?.path, 'relay', 'port-restricted ↔ symmetric');
    await migrate(t, lab, guests(), onB, lease.ip, 'host-b', 'host-c', mac);
  },
);

// Live migration keeps connectivity (issue 4), measured with real tools:
//   1. a QEMU guest (TCG) migrates host-a → host-b; the migration stream crosses the underlay between the
//      site namespaces; host-b's daemon is told `homewire expect` first. The LAN host pings the guest every
//      2 ms and tcpdump watches both guest TAPs. Under TCG the resumed guest needs 10–45 ms before it answers
//      anything (a cold translation cache), so the guest's pause ends at its first echo reply on host-b's TAP,
//      not at QEMU's RARP: the LAN host's largest reply gap may exceed that reply gap at the guest's own NIC by
//      at most 20 ms, and the overlay must deliver frames for the guest to host-b's TAP within 20 ms of the
//      RARP. (The issue's figure, LAN gap − pause up to the RARP, is logged; it includes the guest's warm-up.)
//      A TCP connection through the overlay (LAN host ↔ the guest's echo port) survives and carries data after.
//   2. a guest namespace's veth moves from host-a's bridge to host-b's, then one gratuitous ARP: a LAN host
//      pinging every 10 ms loses at most 2 replies, and an iperf3 TCP stream survives. (The kernel's own
//      move of the veth between namespaces takes 20–45 ms here; it is logged beside the gap.)
// Needs root, QEMU, tcpdump and the guest image packages (lab/vm/guests.ts vmSkipReason).
import type { MacStatus } from '../../src/status.ts';
import path from 'node:path';
import { sleep } from '../../lab/run.ts';
import { HOMEWIRE_BIN, type Lab, SITE_BRIDGE } from '../../lab/topology.ts';
import { GUEST_TAP, vmSiteConfig } from '../../lab/vm/guests.ts';
import {
  firstTowardsGuest,
  fromGuestFilter,
  gapSpanning,
  nicResponse,
  replyGaps,
  startPing,
  startTcpProbe,
  towardsGuestFilter,
  wirePause,
} from '../../lab/vm/measure.ts';
import { guestMac } from '../../src/agent/qemu/driver.ts';
import { vmLab, vmTest } from '../helpers/vm.ts';

const fmt = (ms: number) => `${ms.toFixed(1)} ms`;
const guestMacOf = async (lab: Lab, ns: string) =>
  (await lab.exec(ns, ['cat', '/sys/class/net/eth0/address'])).stdout.trim();

vmTest(
  "QEMU live migration host-a → host-b: LAN ping gap ≤ the guest's own reply gap + 20 ms, frames reach host-b ≤ 20 ms after the RARP, TCP survives",
  async (t) => {
    t.timeout(180_000);
    const { lab, guests } = await vmLab(t, { siteConfig: vmSiteConfig({ dhcp: true }) });
    const mac = guestMac(0x4d16);
    const { vm, lease, bootMs } = await guests().boot('host-a', { mac });
    t.log(`guest ${mac} up on host-a with ${lease.ip} (DHCP) in ${bootMs} ms`);
    const dst = await guests().incoming('host-b', vm);

    const capA = await lab.capture('host-a', GUEST_TAP, path.join(lab.dir, 'host-a-tap.pcap'), fromGuestFilter(mac));
    const capB = await lab.capture('host-b', GUEST_TAP, path.join(lab.dir, 'host-b-tap.pcap'), fromGuestFilter(mac));
    const capBout = await lab.capture(
      'host-b',
      GUEST_TAP,
      path.join(lab.dir, 'host-b-tap-out.pcap'),
      towardsGuestFilter(mac),
    );
    const warm = await lab.ping('lan', lease.ip, { count: 3, intervalS: 0.1 });
    t.true(warm.ok, 'the LAN host reaches the guest before the migration');
    const probe = await startTcpProbe(lab, 'lan', `${lease.ip}:7`, 10);
    const ping = startPing(lab, 'lan', lease.ip, 0.002);
    await sleep(1000);

    // The coordinator's part (issue 10): every site is told the move is authorized, then the destination expects it.
    await lab.authorizeMove(mac, 'host-b');
    const expect = await lab.exec('host-b', [
      process.execPath,
      HOMEWIRE_BIN,
      'expect',
      '--config',
      lab.site('host-b').configFile,
      '--mac',
      mac,
    ]);
    t.is(expect.code, 0, expect.stderr);
    const r = await vm.migrate(dst.uri);
    await dst.vm.waitRunning(10_000);
    await sleep(1500);
    const trace = await ping.stop();
    const tcp = await probe.stop();
    const fromB = await capB.stop();
    const pause = wirePause(await capA.stop(), fromB, mac);
    const towards = await capBout.stop();
    t.log(
      `migration: total ${r.totalTimeMs} ms, QEMU downtime ${r.downtimeMs} ms, ${(r.ramTransferredBytes / 2 ** 20).toFixed(1)} MiB`,
    );

    t.truthy(pause, 'both TAP captures saw the guest');
    if (!pause) return;
    const gaps = replyGaps(trace);
    const largest = gaps[0];
    const spanning = gapSpanning(trace, (pause.lastFromSourceMs + pause.firstOnDestMs) / 2);
    const resumedAtMs = dst.vm.qmp.events.find((e) => e.event === 'RESUME')?.atMs ?? NaN;
    const delivered = firstTowardsGuest(towards, mac, pause.firstOnDestMs);
    const warmup = nicResponse(fromB, towards, mac, pause.firstOnDestMs);
    const at = (ms: number) =>
      `${ms - pause.lastFromSourceMs >= 0 ? '+' : ''}${(ms - pause.lastFromSourceMs).toFixed(1)}`;
    t.log(
      `times from the guest's last frame out of host-a: source STOP ${r.stoppedAtMs ? at(r.stoppedAtMs) : '-'}, ` +
        `destination RESUME ${at(resumedAtMs)}, RARP on host-b ${at(pause.firstOnDestMs)}, first frame towards the guest on host-b ` +
        `${delivered ? at(delivered.atMs) : '-'}, the guest's own first frame ${pause.firstOwnOnDestMs ? `${at(pause.firstOwnOnDestMs)} (${pause.firstOwnOnDestKind})` : '-'}, ` +
        `its first echo reply ${pause.firstReplyOnDestMs ? at(pause.firstReplyOnDestMs) : '-'}`,
    );
    if (warmup)
      t.log(
        `the resumed guest answered the first ping request host-b's TAP gave it after ${fmt(warmup.ms)} (seq ${warmup.seq})`,
      );
    t.log(
      `LAN ping (2 ms): ${trace.replies.length} replies, ${trace.lost} lost, ${trace.dups} duplicates; gap over the pause ` +
        `${spanning ? `${fmt(spanning.ms)} (${at(spanning.fromMs)} → ${at(spanning.toMs)})` : '-'}; largest gaps: ` +
        gaps
          .slice(0, 3)
          .map((g) => `${fmt(g.ms)} (${at(g.fromMs)} → ${at(g.toMs)})`)
          .join(', '),
    );
    t.log(
      `largest LAN gap − pause to the RARP: ${fmt(largest.ms - pause.pauseMs)}; − the reply gap at the guest's NIC ` +
        `(${pause.nicReplyGapMs === null ? '-' : fmt(pause.nicReplyGapMs)}): ${pause.nicReplyGapMs === null ? '-' : fmt(largest.ms - pause.nicReplyGapMs)}`,
    );
    t.log(
      `tcp: ${tcp.echoed}/${tcp.sent} echoed, largest echo gap ${tcp.maxEchoGapMs} ms, error ${tcp.error ?? 'none'}`,
    );

    t.true(trace.replies.length > 500, 'the LAN host pinged the guest throughout');
    t.is(pause.firstOnDestKind, 'rarp', 'the destination QEMU announced the guest');
    // Under TCG the resumed guest needs tens of ms (its translation cache starts cold) before it answers anything,
    // so its pause does not end at QEMU's RARP: it ends at its first echo reply on host-b's TAP. The overlay's
    // share is what the LAN host sees beyond the reply gap at the guest's own NIC, plus how soon after the RARP
    // the overlay delivers frames for the guest to host-b's TAP.
    t.truthy(pause.nicReplyGapMs, 'the guest answered pings on both TAPs');
    t.true(
      largest.ms <= pause.nicReplyGapMs! + 20,
      `largest LAN gap ${fmt(largest.ms)} ≤ the reply gap at the guest's NIC ${fmt(pause.nicReplyGapMs!)} + 20 ms`,
    );
    t.truthy(delivered, "frames for the guest reached host-b's TAP after the RARP");
    t.true(
      delivered!.atMs - pause.firstOnDestMs <= 20,
      `the first frame for the guest reached host-b's TAP ${fmt(delivered!.atMs - pause.firstOnDestMs)} after the RARP`,
    );
    t.is(tcp.error, null, 'the TCP connection was not reset');
    t.false(tcp.peerClosed, 'nor closed');
    t.true(tcp.inOrder, 'echoes came back in order');
    t.true(tcp.lastEchoAtMs > r.completedAtMs + 1000, 'data flowed on the connection after the migration');

    // The daemons agree where the guest is now.
    const status = await lab.exec('home', [
      process.execPath,
      HOMEWIRE_BIN,
      'status',
      '--config',
      lab.site('home').configFile,
      '--json',
    ]);
    const entry = JSON.parse(status.stdout).macs.find((m: MacStatus) => m.mac === mac);
    t.is(entry?.port, 'host-b', "home's switch has the guest behind host-b");
  },
);

vmTest(
  "a guest namespace moved from host-a's bridge to host-b's + one gratuitous ARP: ≤ 2 of 10 ms pings lost beyond the move itself, iperf3 survives",
  async (t) => {
    t.timeout(120_000);
    const { lab } = await vmLab(t, { siteConfig: vmSiteConfig() });
    const guest = lab.host('guest-a');
    const warm = await lab.ping('lan', 'guest-a', { count: 3, intervalS: 0.1 });
    t.true(warm.ok, 'the LAN host reaches guest-a before the move');

    // A TCP stream lan → guest-a through the overlay, paced so the 10 ms pings are not queued behind it.
    const server = lab.spawn('guest-a', ['iperf3', '-s', '-1', '-B', guest.ip]);
    let iperf = null as Awaited<ReturnType<Lab['exec']>> | null;
    const stream = (async () => {
      for (let i = 0; i < 50; i++) {
        iperf = await lab.exec(
          'lan',
          ['iperf3', '-c', guest.ip, '-t', '6', '-b', '100M', '-J', '--connect-timeout', '1000'],
          { timeoutMs: 30_000 },
        );
        if (!/unable to connect/i.test(iperf.stdout + iperf.stderr)) return;
        await sleep(100);
      }
    })();
    const ping = startPing(lab, 'lan', guest.ip, 0.01);
    await sleep(2500);

    // The move: host-a's end of the veth goes to host-b (renamed: host-b has its own vm0) and joins br-hw there;
    // the guest says where it is with one gratuitous ARP as soon as its link is back (a watcher armed beforehand,
    // as a guest's own link-up hook would be, so the tool's start-up is not part of the outage).
    const garp = lab.spawn(
      'guest-a',
      [
        'busybox',
        'sh',
        '-c',
        [
          // carrier_changes counts every down and up, so a blink shorter than one look is not missed.
          'n() { cat /sys/class/net/eth0/carrier_changes; }',
          'up() { read c < /sys/class/net/eth0/carrier 2>/dev/null && [ "$c" = 1 ]; }',
          'base=$(n)',
          'echo armed',
          'while [ $(( $(n) - base )) -lt 2 ] || ! up; do :; done',
          `exec busybox arping -U -c 1 -w 1 -I eth0 ${guest.ip}`,
        ].join('; '),
      ],
      { stdio: 'pipe' },
    );
    let garpOut = '';
    garp.stdout!.setEncoding('utf8').on('data', (d: string) => {
      garpOut += d;
    });
    const garpDone = new Promise<number | null>((r) => garp.once('exit', (code) => r(code)));
    while (!garpOut.includes('armed')) await sleep(10);
    // Authorized beforehand, as the coordinator does for a migration (security.mac_moves: authorized).
    await lab.authorizeMove(await guestMacOf(lab, 'guest-a'), 'host-b');
    const move = await lab.exec('ul', [
      'sh',
      '-c',
      [
        'date +%s%N',
        `ip -n ${lab.ns('host-a')} link set vm0 netns ${lab.ns('host-b')} name vm-moved`,
        'date +%s%N',
        `ip -n ${lab.ns('host-b')} link set vm-moved master ${SITE_BRIDGE} up`,
        'date +%s%N',
      ].join(' && '),
    ]);
    t.is(move.code, 0, move.stderr);
    const [t0, t1, t2] = move.stdout
      .trim()
      .split('\n')
      .map((x) => Number(x) / 1e6);
    const movedAtMs = t0;
    t.log(`the move took ${fmt(t2 - t0)}: to host-b's namespace ${fmt(t1 - t0)}, onto its bridge ${fmt(t2 - t1)}`);
    t.is(
      await Promise.race([garpDone, sleep(5000).then(() => 'timeout')]),
      0,
      `the guest's gratuitous ARP: ${garpOut}`,
    );
    await stream;
    await sleep(500);
    const trace = await ping.stop();
    if (server.exitCode === null) server.kill('SIGKILL');

    const gaps = replyGaps(trace);
    const at = (ms: number) => `${(ms - movedAtMs).toFixed(0)} ms`;
    const overMove = gapSpanning(trace, (t0 + t2) / 2);
    const seconds = (trace.replies[trace.replies.length - 1].atMs - trace.replies[0].atMs) / 1000;
    t.log(
      `LAN ping (-i 0.01, ${(trace.replies.length / seconds).toFixed(0)} replies/s): ${trace.replies.length} replies, ${trace.lost} lost; ` +
        `gap over the move ${overMove ? `${fmt(overMove.ms)}, ${fmt(overMove.ms - (t2 - t0))} beyond the move itself` : '-'}; largest gaps (time from the move): ` +
        gaps
          .slice(0, 4)
          .map((g) => `${fmt(g.ms)} at ${at(g.fromMs)} (seq ${g.fromSeq}→${g.toSeq})`)
          .join(', '),
    );
    t.true(trace.replies.length > 300, 'the LAN host pinged the guest throughout');
    // While the veth is between namespaces the guest has no link at all: pings sent then are lost whatever the
    // overlay does (a loaded machine makes the move itself slow). What the mesh owns is the loss beyond that.
    const inMove = Math.ceil((t2 - t0) / 10);
    t.true(trace.lost <= inMove + 2, `${trace.lost} replies lost, ${inMove} of them sent while the link was moving`);
    const doc = JSON.parse(iperf!.stdout || '{}');
    t.is(doc.error, undefined, `iperf3: ${doc.error}`);
    const recv = doc.end?.sum_received;
    t.truthy(recv, 'iperf3 finished with a receiver summary');
    t.log(
      `iperf3 lan → guest-a: ${(recv.bits_per_second / 1e6).toFixed(0)} Mbit/s over ${recv.seconds.toFixed(1)} s, ${doc.end?.sum_sent?.retransmits} retransmits`,
    );
    t.true(recv.seconds >= 5.5, 'the stream ran its full time');
    const status = await lab.exec('home', [
      process.execPath,
      HOMEWIRE_BIN,
      'status',
      '--config',
      lab.site('home').configFile,
      '--json',
    ]);
    const mac = (await lab.exec('guest-a', ['cat', '/sys/class/net/eth0/address'])).stdout.trim();
    t.is(
      JSON.parse(status.stdout).macs.find((m: MacStatus) => m.mac === mac)?.port,
      'host-b',
      "home's switch has guest-a behind host-b",
    );
  },
);

// A real QEMU guest (TCG) live-migrates between two VM hosts behind NATs (issue 9): both hosts name only home
// (lab/nat.ts), each has a host address on the overlay (host_address), and the migration stream goes to the
// destination's overlay address, so it rides the mesh (encrypted) through both NATs: the destination cannot
// be reached on its underlay address at all. The destination's daemon is told `homewire expect` first; the
// LAN host at home pings the guest every 10 ms and sees no larger gap than the guest's own reply gap at its
// NIC + 20 ms (as in test/system/vm-migration.test.ts, whose measurement this reuses).
import path from 'node:path';
import { hostAddress, NatNetwork, natSiteConfig } from '../../lab/nat.ts';
import { sleep } from '../../lab/run.ts';
import { HOMEWIRE_BIN } from '../../lab/topology.ts';
import { GUEST_TAP } from '../../lab/vm/guests.ts';
import { fromGuestFilter, replyGaps, startPing, wirePause } from '../../lab/vm/measure.ts';
import { guestMac } from '../../src/agent/qemu/driver.ts';
import { controlRequest } from '../../src/control.ts';
import type { StatusReport } from '../../src/status.ts';
import { newPrefix } from '../helpers/netns.ts';
import { vmLab, vmTest } from '../helpers/vm.ts';

const fmt = (ms: number) => `${ms.toFixed(1)} ms`;

vmTest(
  'QEMU live migration between two hosts behind NATs, over their overlay addresses: LAN ping gap ≤ the guest’s own + 20 ms',
  async (t) => {
    t.timeout(240_000);
    const kinds = { 'host-a': 'port-restricted', 'host-b': 'port-restricted' } as const;
    const addresses = { 'host-a': hostAddress(1), 'host-b': hostAddress(2) };
    const { lab, guests } = await vmLab(t, {
      prefix: newPrefix().replace(/^hwt/, 'hwn'),
      sites: ['home', 'host-a', 'host-b'],
      network: new NatNetwork(kinds),
      peersOf: (s, all) => (s === 'home' ? all.filter((x) => x !== 'home') : ['home']),
      siteConfig: natSiteConfig({ hostAddresses: addresses }),
      upTimeoutMs: 60_000,
    });
    const status = async (site: string) =>
      (await controlRequest<StatusReport>(path.join(lab.dir, `${site}.sock`), 'GET', '/v1/status')).body;
    t.is((await status('host-a')).hostAddress, addresses['host-a'], 'host-a reports its overlay address');
    // The hosts know each other once home has introduced them (a moment after their sessions with home).
    for (let i = 0; i < 100; i++) {
      const [a, b] = await Promise.all([status('host-a'), status('host-b')]);
      if (a.peers.some((p) => p.name === 'host-b') && b.peers.some((p) => p.name === 'host-a')) break;
      await sleep(100);
    }
    // host-b is unreachable on its underlay address from host-a (both behind NAT): only the overlay works.
    const under = await lab.exec('host-a', ['ping', '-n', '-c', '1', '-W', '1', lab.site('host-b').underlay4]);
    t.not(under.code, 0, "host-b's private underlay address is not reachable from host-a");
    const over = await lab.ping('host-a', addresses['host-b'], { count: 3, intervalS: 0.2 });
    t.true(over.ok, "host-a reaches host-b's overlay address through the mesh");

    const mac = guestMac(0x4e21);
    const { vm, lease, bootMs } = await guests().boot('host-a', { mac });
    t.log(`guest ${mac} up on host-a with ${lease.ip} (DHCP from home, through the NAT) in ${bootMs} ms`);
    const dst = await guests().incoming('host-b', vm, 4444, addresses['host-b']);
    t.is(dst.uri, `tcp:${addresses['host-b']}:4444`);
    const capA = await lab.capture('host-a', GUEST_TAP, path.join(lab.dir, 'a.pcap'), fromGuestFilter(mac));
    const capB = await lab.capture('host-b', GUEST_TAP, path.join(lab.dir, 'b.pcap'), fromGuestFilter(mac));
    const warm = await lab.ping('lan', lease.ip, { count: 3, intervalS: 0.1 });
    t.true(warm.ok, 'the LAN host reaches the guest before the migration');
    const ping = startPing(lab, 'lan', lease.ip, 0.01);
    await sleep(1000);
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
    await dst.vm.waitRunning(20_000);
    await sleep(1500);
    const trace = await ping.stop();
    const pause = wirePause(await capA.stop(), await capB.stop(), mac);
    const a = await status('host-a');
    const hb = a.peers.find((p) => p.name === 'host-b');
    t.log(
      `migration over the overlay: total ${r.totalTimeMs} ms, QEMU downtime ${r.downtimeMs} ms, ${(r.ramTransferredBytes / 2 ** 20).toFixed(1)} MiB; host-a → host-b path ${hb?.path} (${hb?.endpoint}), ${hb?.txBytes} bytes sent`,
    );
    t.truthy(pause, 'both TAP captures saw the guest');
    if (!pause) return;
    const gaps = replyGaps(trace);
    t.log(
      `LAN ping (10 ms): ${trace.replies.length} replies, ${trace.lost} lost; largest gap ${fmt(gaps[0].ms)}; the guest's own reply gap at its NIC ${pause.nicReplyGapMs === null ? '-' : fmt(pause.nicReplyGapMs)}; pause to the RARP ${fmt(pause.pauseMs)}`,
    );
    t.true(trace.replies.length > 100, 'the LAN host pinged the guest throughout');
    t.truthy(pause.nicReplyGapMs, 'the guest answered pings on both TAPs');
    t.true(
      gaps[0].ms <= pause.nicReplyGapMs! + 20,
      `largest LAN gap ${fmt(gaps[0].ms)} ≤ the guest's own reply gap ${fmt(pause.nicReplyGapMs!)} + 20 ms`,
    );
    t.true((hb?.txBytes ?? 0) > 30 * 2 ** 20, 'the migration stream went through the mesh to host-b');
    const home = await status('home');
    t.is(home.macs.find((m) => m.mac === mac)?.port, 'host-b', "home's switch has the guest behind host-b");
  },
);

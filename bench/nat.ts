// Sites behind real NATs (lab/nat.ts), measured:
//   1. time from `homewire up` (the daemon's "homewire up" line) to the first reply to a guest's ping (every
//      20 ms; the guest retries ARP every 100 ms) of the home LAN host, per NAT kind: every host daemon restarted
//      --runs times, one at a time (median, p95); the process start before "homewire up" is reported beside it;
//   2. throughput (iperf3 TCP) and RTT (ping every 10 ms) between the same two guests (behind a full-cone and
//      a port-restricted NAT) over the direct path, through the relay at home (direct UDP between the two NATs
//      dropped), and through home with one of them on TCP (all its UDP dropped).
// Run as root: node --import tsx bench/nat.ts [--runs 10] [--seconds 10] [--repeat 3]
// Benchmarks report; they never fail for being slow.
import os from 'node:os';
import path from 'node:path';
import { INTERNET, NAT_KIND_HOSTS, NatNetwork, natSiteConfig } from '../lab/nat.ts';
import { median, run, sleep } from '../lab/run.ts';
import { deleteNamespaces, Lab, PLAN } from '../lab/topology.ts';
import { controlRequest } from '../src/control.ts';
import type { StatusReport } from '../src/status.ts';

const argv = process.argv.slice(2);
const opt = (name: string, dflt: number) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? Number(argv[i + 1]) : dflt;
};
const RUNS = opt('runs', 10);
const SECONDS = opt('seconds', 10);
const REPEAT = opt('repeat', 3);
const KINDS = NAT_KIND_HOSTS;
const HOSTS = Object.keys(KINDS);
const guestOf = (h: string) => `guest-${h.replace(/^host-/, '')}`;
const pct = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.ceil((p / 100) * xs.length) - 1)];

async function main(): Promise<void> {
  const prefix = 'hwnbench-';
  await deleteNamespaces(prefix);
  const network = new NatNetwork(KINDS);
  const lab = await Lab.create({
    prefix,
    sites: ['home', ...HOSTS],
    network,
    peersOf: (s, all) => (s === 'home' ? all.filter((x) => x !== 'home') : ['home']),
    // Static guest addresses, no coordinator reservations: the hosts learn first ARP claims.
    siteConfig: natSiteConfig({
      dhcp: false,
      extra: (s) => (s === 'home' ? '' : 'security: { arp_inspection: learn }'),
    }),
    upTimeoutMs: 120_000, // seven daemons start at once; Node.js + tsx take seconds each on a loaded machine
  });
  const status = async (site: string) =>
    (await controlRequest<StatusReport>(path.join(lab.dir, `${site}.sock`), 'GET', '/v1/status')).body;
  const pathAt = async (site: string, peer: string) =>
    (await status(site)).peers.find((p) => p.name === peer)?.path ?? 'absent';
  console.log(
    `load average at start: ${os
      .loadavg()
      .map((x) => x.toFixed(1))
      .join(' ')} (${os.cpus().length} CPUs)`,
  );
  try {
    // ---- 1. homewire up → first reply, per NAT kind -----------------------------------------------------
    const upToReply = new Map<string, number[]>(HOSTS.map((h) => [h, []]));
    const startToUp: number[] = [];
    // Guests resend unanswered ARP every 100 ms (Linux default: 1 s), so the figure is the mesh's, not the timer's.
    for (const h of HOSTS) await lab.exec(guestOf(h), ['sysctl', '-qw', 'net.ipv4.neigh.eth0.retrans_time_ms=100']);
    // One host at a time (a daemon's start is seconds of Node.js + tsx on this machine; several at once would
    // measure the machine). The guest's ping runs from before the start; errors do not stop it.
    for (let r = 0; r < RUNS; r++) {
      for (const h of HOSTS) {
        await lab.stopDaemon(h);
        await lab.exec(guestOf(h), ['ip', 'neigh', 'flush', 'all']);
        // No -c and no -w: with either, iputils ping stops at its first error (host unreachable while ARP fails).
        const pinger = lab.spawn(guestOf(h), ['ping', '-n', '-i', '0.02', PLAN.lan], { stdio: 'pipe' });
        const replied = new Promise<number | null>((resolve) => {
          const timer = setTimeout(() => resolve(null), 90_000);
          pinger.stdout!.setEncoding('utf8').on('data', (d: string) => {
            if (/bytes from/.test(d)) {
              clearTimeout(timer);
              resolve(Date.now());
            }
          });
          pinger.on('close', () => resolve(null));
        });
        await sleep(200);
        const spawnedAt = Date.now();
        lab.startDaemon(h);
        const replyAt = await replied;
        pinger.kill('SIGKILL');
        let up = lab.logLines(h).find((l) => l.msg === 'homewire up');
        for (let i = 0; i < 200 && !up; i++) {
          await sleep(50);
          up = lab.logLines(h).find((l) => l.msg === 'homewire up');
        }
        if (!up || replyAt === null) {
          console.log(`run ${r + 1}: ${h}: ${up ? 'no reply' : 'did not come up'}\n${lab.logTail(h, 5)}`);
          continue;
        }
        upToReply.get(h)!.push(replyAt - up.time);
        startToUp.push(up.time - spawnedAt);
      }
      process.stdout.write(`\rrun ${r + 1}/${RUNS}`);
    }
    if (RUNS > 0)
      console.log('\n\n| NAT kind | up → first guest ping reply: median | p95 | max | runs |\n|---|---|---|---|---|');
    for (const h of HOSTS) {
      const xs = upToReply.get(h)!;
      if (xs.length === 0) continue;
      console.log(
        `| ${KINDS[h]} | ${median(xs).toFixed(0)} ms | ${pct(xs, 95).toFixed(0)} ms | ${Math.max(...xs).toFixed(0)} ms | ${xs.length} |`,
      );
    }
    if (RUNS > 0)
      console.log(
        `process start → "homewire up": median ${median(startToUp).toFixed(0)} ms, p95 ${pct(startToUp, 95).toFixed(0)} ms (Node.js + tsx loading, on this loaded machine)`,
      );

    // ---- 2. direct vs relay vs TCP, the same pair ------------------------------------------------------
    const a = 'host-port';
    const b = 'host-full';
    const ga = lab.host(guestOf(a));
    const gb = lab.host(guestOf(b));
    const natA = network.routers(lab, a)[0];
    const ipt = (...args: string[]) => run('ip', ['netns', 'exec', natA, 'iptables', '-w', ...args]);
    const measure = async (label: string) => {
      await lab.ping(ga.name, gb.ip, { count: 20, intervalS: 0.05 });
      const p = await lab.ping(ga.name, gb.ip, { count: 100, intervalS: 0.01 });
      const mbps: number[] = [];
      for (let i = 0; i < REPEAT; i++) mbps.push((await lab.iperf3(ga.name, gb.name, { seconds: SECONDS })).mbps);
      const pa = await pathAt(a, b);
      const ph = await pathAt(a, 'home');
      console.log(
        `| ${label} | ${pa}${pa === 'relay' ? ` (${a} → home: ${ph})` : ''} | ${median(mbps).toFixed(0)} Mbit/s (${mbps.map((x) => x.toFixed(0)).join(', ')}) | ${p.rtt ? `${p.rtt.avg.toFixed(2)} / ${p.rtt.max.toFixed(2)} ms` : '-'} | ${p.lossPct}% |`,
      );
    };
    console.log(
      `\nguest-port (port-restricted NAT) → guest-full (full cone), iperf3 TCP ${SECONDS} s × ${REPEAT}, ping 100 × 10 ms\n`,
    );
    console.log('| path | status | throughput median | RTT avg / max | loss |\n|---|---|---|---|---|');
    await lab.ping(ga.name, gb.ip, { count: 40, intervalS: 0.05 });
    await measure('direct');
    // Relay: the two NATs cannot exchange UDP any more.
    const wanB = INTERNET.wan(lab.site(b).index);
    await ipt('-I', 'FORWARD', '-p', 'udp', '-s', wanB, '-j', 'DROP');
    await ipt('-I', 'FORWARD', '-p', 'udp', '-d', wanB, '-j', 'DROP');
    await lab.ping(ga.name, gb.ip, { count: 60, intervalS: 0.05 });
    await measure('relay via home');
    // TCP: no UDP out of host-port's NAT at all; its daemon restarts and falls back to TCP.
    await ipt('-I', 'FORWARD', '-i', 'lan0', '-o', 'wan0', '-p', 'udp', '-j', 'DROP');
    await lab.stopDaemon(a);
    lab.startDaemon(a);
    for (let i = 0; i < 200 && (await pathAt(a, 'home').catch(() => 'absent')) !== 'tcp'; i++) await sleep(100);
    await lab.ping(ga.name, gb.ip, { count: 60, intervalS: 0.05 });
    await measure('TCP to home, relay');
    console.log(
      `\nload average at end: ${os
        .loadavg()
        .map((x) => x.toFixed(1))
        .join(' ')}`,
    );
  } finally {
    await lab.destroy();
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);

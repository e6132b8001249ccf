// The README's first command (sudo bash deploy/demo.sh runs this): a home site and two VM hosts in network
// namespaces, one `homewire up` each, then the guests and the home LAN host talking through the encrypted
// mesh, a throughput figure, and a look at what the underlay carries. Cleans up after itself (and on Ctrl-C).
//
//   node --import tsx lab/demo.ts [--keep] [--ipv6]
//     --keep   leave the lab running until Ctrl-C (try the printed commands in another terminal)
//     --ipv6   run the mesh over an IPv6 underlay (2001:db8::/64)
//     --vms    then run real QEMU guests through the lifecycle coordinator: start, live-migrate, stop
// Exits non-zero if a ping through the mesh fails.
import fs from 'node:fs';
import path from 'node:path';
import { hasProgram, HOMEWIRE_BIN, Lab, PLAN } from './topology.ts';
import type { Packet } from './pcap.ts';
import type { PingResult } from './run.ts';

const keep = process.argv.includes('--keep');
const ipv6 = process.argv.includes('--ipv6');
const vms = process.argv.includes('--vms');
const tty = process.stdout.isTTY;
const bold = (s: string) => (tty ? `\x1b[1m${s}\x1b[0m` : s);
const dim = (s: string) => (tty ? `\x1b[2m${s}\x1b[0m` : s);
const good = (s: string) => (tty ? `\x1b[32m${s}\x1b[0m` : s);
const bad = (s: string) => (tty ? `\x1b[31m${s}\x1b[0m` : s);
const say = (s = '') => process.stdout.write(`${s}\n`);
const step = (n: number, s: string) => say(`\n${bold(`${n}. ${s}`)}`);

const PATTERN = 'homewire-demo!!!'; // 16 bytes: ping -p fills the ICMP payload with it

let interrupted = false;
process.on('SIGINT', () => {
  interrupted = true; // the lab's own handler tears down and exits 130
  say(`\n${dim('Ctrl-C: stopping the daemons and deleting the hwdemo-* namespaces…')}`);
});

async function main(): Promise<number> {
  say(bold('homewire demo: VMs on remote hosts, on the home LAN, over an encrypted UDP mesh'));
  say(dim('Everything runs in network namespaces named hwdemo-* on this machine, using documentation addresses only.'));

  step(1, 'Building the sites');
  const t0 = Date.now();
  const lab = await Lab.create({
    prefix: 'hwdemo-',
    family: ipv6 ? 6 : 4,
    start: false,
    staticAddresses: false,
    // The home site serves DHCP to the guests behind the mesh (the LAN host keeps the home router's address).
    siteConfig: (site) =>
      site !== 'home'
        ? ''
        : `${[
            'dhcp:',
            `  subnet: ${PLAN.lan.replace(/\.1$/, '.0')}/${PLAN.overlayLen}`,
            `  server_ip: ${PLAN.dhcpServer}`,
            `  pool: ${PLAN.dhcpPool[0]}-${PLAN.dhcpPool[1]}`,
            `  router: ${PLAN.lan}`,
            '  domain: home.example',
            '  lease_seconds: 3600',
            '  lease_db: leases.db',
          ].join('\n')}\n`,
  });
  const addr = new Map<string, string>([['lan', lab.host('lan').ip]]);
  const ipOf = (name: string) => addr.get(name) ?? lab.host(name).ip;
  const fam = ipv6 ? 'IPv6 2001:db8::/64' : 'IPv4 192.0.2.0/24 (TEST-NET-1)';
  say(`   ${'underlay'.padEnd(8)} namespace ${lab.underlayNs}: a bridge standing in for the internet, ${fam}`);
  for (const s of lab.sites) {
    const what = s.role === 'home' ? `LAN host ${s.host.name}` : `VM ${s.host.name}`;
    const where = s.role === 'home' ? s.host.ip : '(DHCP)';
    say(
      `   ${s.name.padEnd(8)} underlay ${s.address.padEnd(12)} ${what.padEnd(17)} ${where.padEnd(14)} public key ${s.publicKey}`,
    );
  }
  say(
    `   The home LAN is ${PLAN.lan.replace(/\.1$/, '.0')}/${PLAN.overlayLen} (TEST-NET-2). Each site bridges its TAP hw0 and its LAN/VM`,
  );
  say(
    `   port on br-hw; the LAN host and VMs use MTU ${lab.tapMtu}, the TAP's (an L2 overlay cannot send "fragmentation needed").`,
  );
  say(dim(`   Configs, keys and logs: ${lab.dir}. home's config:`));
  for (const line of fs.readFileSync(lab.site('home').configFile, 'utf8').trimEnd().split('\n'))
    say(dim(`     ${line}`));

  step(2, 'Starting one `homewire up` per site and waiting for the encrypted sessions (Noise IK)');
  const started = Date.now();
  for (const s of lab.sites) lab.startDaemon(s.name);
  await lab.waitPeersUp(20_000);
  for (const s of lab.sites) {
    const up = [...lab.peersUp(s.name)]
      .sort((a, b) => a[1] - b[1])
      .map(([p, at]) => `${p} (+${Math.max(0, at - started)} ms)`);
    say(`   ${s.name.padEnd(8)} pid ${String(s.daemon!.pid).padEnd(7)} peer up: ${up.join(', ')}`);
  }
  say(dim(`   (lab built and meshed in ${((Date.now() - t0) / 1000).toFixed(1)} s)`));

  let failed = 0;
  step(3, 'Guests on the VM hosts ask for an address: DHCP over the mesh, answered by the home site');
  for (const guest of ['guest-a', 'guest-b']) {
    const lease = await dhcpLease(lab, guest);
    if (!lease) {
      failed++;
      say(`   ${guest.padEnd(8)} ${bad('got no lease')}`);
      continue;
    }
    addr.set(guest, lease.ip);
    say(
      `   ${guest.padEnd(8)} ${good(lease.ip)} from server ${lease.serverid}, router ${lease.router}, domain ${lease.domain}, MTU ${lease.mtu}, lease ${lease.lease} s`,
    );
  }
  const leases = await lab.exec('home', [
    process.execPath,
    HOMEWIRE_BIN,
    'leases',
    '--config',
    lab.site('home').configFile,
  ]);
  say(dim('   `homewire leases` at home:'));
  for (const line of leases.stdout.trimEnd().split('\n')) say(dim(`     ${line}`));

  const snmpBefore = await lab.snmp('home');
  const ulBefore = await lab.linkStats('home', 'eth0');

  const expressBefore = await expressFrames(lab, 'home');
  step(4, 'Pinging through the mesh (5 pings each)');
  const pairs: Array<[string, string]> = [
    ['guest-a', 'guest-b'],
    ['guest-b', 'guest-a'],
    ['lan', 'guest-a'],
    ['guest-a', 'lan'],
    ['lan', 'guest-b'],
    ['guest-b', 'lan'],
  ];
  for (const [from, to] of pairs) {
    const p = await lab.ping(from, ipOf(to), { count: 5, intervalS: 0.2 });
    if (!p.ok) failed++;
    say(`   ${from.padEnd(7)} → ${to.padEnd(7)} ${ipOf(to).padEnd(14)} ${pingLine(p)}`);
  }
  const full = await lab.ping('guest-a', ipOf('lan'), {
    count: 3,
    intervalS: 0.2,
    size: lab.tapMtu - 28,
    dontFragment: true,
  });
  if (!full.ok) failed++;
  say(`   guest-a → lan     full ${lab.tapMtu}-byte packets, don't fragment: ${pingLine(full)}`);
  const expressAfter = await expressFrames(lab, 'home');
  if (expressAfter !== null && expressBefore !== null) {
    say(
      dim(
        `   home's express path carried ${expressAfter - expressBefore} of these frames in C, without JavaScript (established flows JavaScript had vetted)`,
      ),
    );
  }

  step(5, 'Throughput: iperf3 TCP, 3 s, guest-a → lan');
  try {
    const before = await expressFrames(lab, 'home');
    const r = await lab.iperf3('guest-a', 'lan', { seconds: 3 });
    const after = await expressFrames(lab, 'home');
    say(
      `   ${bold(`${r.mbps.toFixed(0)} Mbit/s`)} received${r.retransmits !== null ? `, ${r.retransmits} TCP retransmits` : ''} ${dim('(one stream, through encryption and two TAPs, on this machine)')}`,
    );
    if (before !== null && after !== null)
      say(
        dim(
          `   home's express path carried ${after - before} frames of the stream and its ACKs, whole wake-ups at a time`,
        ),
      );
  } catch (err) {
    say(`   ${bad('iperf3 failed:')} ${(err as Error).message}`);
  }

  step(6, 'What the underlay carries');
  const snmpAfter = await lab.snmp('home');
  const ulAfter = await lab.linkStats('home', 'eth0');
  const d = (k: string) => (snmpAfter[k] ?? 0) - (snmpBefore[k] ?? 0);
  const udpIn = d('Udp.InDatagrams') + d('Udp6InDatagrams');
  const tcpIn = d('Tcp.InSegs');
  const icmpIn = d('Icmp.InEchos') + d('Icmp.InEchoReps') + d('Icmp6InEchos') + d('Icmp6InEchoReplies');
  say(`   Kernel counters of home's own network stack during steps 4-5 (the LAN's ICMP and TCP crossed home):`);
  say(
    `     ${udpIn} UDP datagrams in, ${tcpIn} TCP segments in, ${icmpIn} ICMP echo messages in; eth0 received ${ulAfter.rxPackets - ulBefore.rxPackets} packets.`,
  );
  const onlyUdp = tcpIn === 0 && icmpIn === 0 && udpIn > 0;
  say(
    `     ${onlyUdp ? good('✔') : bad('✘')} home's stack saw the LAN traffic only as UDP to its homewire port: the pings and the TCP stream`,
  );
  say('       went through br-hw as Ethernet frames, and over the underlay inside encrypted datagrams.');
  if (hasProgram('tcpdump')) {
    await showCapture(lab, ipOf);
  } else {
    say(dim('   (install tcpdump to also see a capture of the underlay: apt-get install tcpdump)'));
  }

  if (vms) {
    step(7, 'VMs through the lifecycle coordinator: start on host-a, live-migrate to host-b while the LAN pings, stop');
    const { runVmDemo } = await import('./coordinator/demo.ts');
    if (!(await runVmDemo(lab, say))) failed++;
  }

  step(vms ? 8 : 7, failed ? bad(`${failed} step(s) failed`) : good('Every ping went through.'));
  if (failed) {
    for (const s of lab.sites) say(dim(`--- ${s.name} log ---\n${lab.logTail(s.name, 10)}`));
  }
  if (keep) {
    say('   The lab keeps running until Ctrl-C. Try, in another terminal:');
    say(`     sudo ip netns exec ${lab.ns('guest-a')} ping ${PLAN.lan}`);
    say(`     sudo ip netns exec ${lab.ns('lan')} ping ${ipOf('guest-b')}`);
    say(`     sudo node ${HOMEWIRE_BIN} status --config ${lab.site('home').configFile}`);
    say(`     sudo ip netns exec ${lab.ns('home')} ip -s link show hw0`);
    say(`     tail -f ${lab.site('home').logFile}`);
    say(`     sudo kill -TERM ${lab.site('home').daemon!.pid}   # stop home's daemon: its TAP goes away, pings stop`);
    await new Promise(() => {}); // SIGINT: the lab's handler cleans up and exits
  }
  await lab.destroy();
  say(dim('   Stopped the daemons and deleted the hwdemo-* namespaces.'));
  return failed ? 1 : 0;
}

/** Frames a site's express path carried both ways so far (`homewire status --json`), or null. */
async function expressFrames(lab: Lab, site: string): Promise<number | null> {
  try {
    const x = (await lab.status(site)).express;
    return x.txFrames + x.rxFrames;
  } catch {
    return null;
  }
}

function pingLine(p: PingResult): string {
  const status = p.ok ? good(`${p.received}/${p.transmitted}`) : bad(`${p.received}/${p.transmitted}`);
  return `${status} ${p.lossPct}% loss${p.rtt ? `, rtt min/avg/max ${p.rtt.min}/${p.rtt.avg}/${p.rtt.max} ms` : ''}`;
}

/** Captures the underlay (all ports of br-ul) and home's LAN port during patterned pings. */
/** Runs busybox udhcpc in the guest's namespace with a hook script of ours; returns the lease it applied. */
async function dhcpLease(lab: Lab, guest: string): Promise<Record<string, string> | null> {
  const script = path.join(lab.dir, `udhcpc-${guest}.sh`);
  const envFile = `${script}.env`;
  fs.writeFileSync(
    script,
    `#!/bin/sh\ncase "$1" in bound|renew)\n  ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface"\n  env > "${envFile}";;\nesac\nexit 0\n`,
    { mode: 0o755 },
  );
  const r = await lab.exec(
    guest,
    [
      'busybox',
      'udhcpc',
      '-i',
      'eth0',
      '-f',
      '-q',
      '-n',
      '-t',
      '10',
      '-T',
      '1',
      '-x',
      `hostname:${guest}`,
      '-s',
      script,
    ],
    { timeoutMs: 30_000 },
  );
  if (r.code !== 0 || !fs.existsSync(envFile)) return null;
  const env: Record<string, string> = {};
  for (const line of fs.readFileSync(envFile, 'utf8').split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) env[line.slice(0, i)] = line.slice(i + 1);
  }
  return env;
}

async function showCapture(lab: Lab, ipOf: (name: string) => string): Promise<void> {
  const port = lab.site('home').port;
  const ulCap = await lab.capture('ul', 'any', path.join(lab.dir, 'underlay.pcap'));
  const lanCap = await lab.capture('home', 'lan0', path.join(lab.dir, 'lan0.pcap'));
  const hex = Buffer.from(PATTERN).toString('hex');
  await lab.ping('guest-a', 'lan', { count: 10, intervalS: 0.05, pattern: hex });
  await lab.ping('guest-b', ipOf('guest-a'), { count: 10, intervalS: 0.05, pattern: hex });
  const ul = await ulCap.stop();
  const lan = await lanCap.stop();
  const needle = Buffer.from(PATTERN.slice(0, 13));
  const leaks = (ps: Packet[]) => ps.filter((p) => p.frame.includes(needle)).length;
  const mesh = ul.filter((p) => p.kind === 'udp' && (p.sport === port || p.dport === port)).length;
  // ARP, and IPv6 neighbour discovery / MLD of the sites' own underlay interfaces.
  const arp = ul.filter(
    (p) => p.kind === 'arp' || (p.kind === 'icmp6' && [133, 134, 135, 136, 143].includes(p.icmpType!)),
  ).length;
  const other = ul.length - mesh - arp;
  say(
    `   tcpdump on every underlay port while guest-a pinged lan and guest-b pinged guest-a with the payload "${PATTERN}":`,
  );
  say(
    `     ${ul.length} frames seen on the underlay's interfaces: ${mesh} UDP to/from port ${port}, ${arp} ARP/neighbour discovery, ${other} other`,
  );
  say(
    `     the payload in plaintext: ${leaks(lan)} of ${lan.length} frames on home's LAN port lan0, ${leaks(ul)} of ${ul.length} on the underlay`,
  );
  const ok = other === 0 && leaks(ul) === 0 && leaks(lan) > 0;
  say(
    `     ${ok ? good('✔') : bad('✘')} the underlay carried only homewire's UDP, and nothing of the payload in the clear.`,
  );
}

main().then(
  (code) => process.exit(code),
  (err) => {
    if (interrupted) return; // daemons stopped by the same Ctrl-C: not a failure worth a stack trace
    process.stderr.write(`${bad('demo failed:')} ${err?.stack ?? err}\n`);
    process.exit(1);
  },
);

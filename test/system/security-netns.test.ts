// The segment defences and the handshake guard attacked with real tools in network namespaces (README
// "Security model"): a guest that takes a home-LAN device's MAC and announces it with arping; a rogue dnsmasq
// in a guest while another guest leases with busybox udhcpc; ARP poisoning with arping against strict
// inspection; a raw-socket broadcast flood from random MACs and spoofed 198.18.0.0/15 addresses; 20,000
// mac1-valid handshake initiations per second from spoofed sources while a VM host restarts. Each asserts the
// attack fails, legitimate traffic carries on, and the counter moved (read from `homewire status --json`).
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { sleep } from '../../lab/run.ts';
import { deleteNamespaces, Lab, type LabOptions, PLAN, PROJECT_ROOT } from '../../lab/topology.ts';
import { netnsSkipReason, pingText } from '../helpers/netns.ts';
import { missingFor, testIf } from '../helpers/prereq.ts';

const netnsTest = testIf(
  netnsSkipReason ??
    missingFor({
      programs: {
        arping: 'iputils-arping',
        dnsmasq: 'dnsmasq',
        busybox: 'busybox-static',
        python3: 'python3',
        tcpdump: 'tcpdump',
      },
    }),
);
const RAWSEND = path.join(PROJECT_ROOT, 'lab/rawsend.py');

/** A lab with this helper's own namespace prefix (hws...-), destroyed by teardown even on failure. */
async function secLab(t: ExecutionContext, opts: Omit<LabOptions, 'prefix'> = {}): Promise<Lab> {
  const prefix = `hws${crypto.randomBytes(2).toString('hex')}-`;
  let lab: Lab | null = null;
  t.teardown(async () => {
    if (lab) await lab.destroy();
    else await deleteNamespaces(prefix);
  });
  lab = await Lab.create({ ...opts, prefix });
  return lab;
}

function dhcpHome(site: string): string {
  if (site !== 'home') return '';
  return [
    'dhcp:',
    '  subnet: 198.51.100.0/24',
    `  server_ip: ${PLAN.dhcpServer}`,
    `  pool: ${PLAN.dhcpPool[0]}-${PLAN.dhcpPool[1]}`,
    `  router: ${PLAN.lan}`,
    '  lease_seconds: 600',
    '  lease_db: leases.db',
  ].join('\n');
}

const status = (lab: Lab, site: string) => lab.status(site);

async function macOf(lab: Lab, ns: string): Promise<string> {
  return (await lab.exec(ns, ['cat', '/sys/class/net/eth0/address'])).stdout.trim();
}

/** busybox udhcpc in a guest namespace with its own hook script; resolves with the bound lease's fields. */
async function udhcpc(lab: Lab, guest: string): Promise<Record<string, string>> {
  const dir = fs.mkdtempSync(path.join(lab.dir, `udhcpc-${guest}-`));
  const script = path.join(dir, 'hook.sh');
  fs.writeFileSync(
    script,
    `#!/bin/sh\ncase "$1" in bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface"; env > "${dir}/bound.tmp"; mv "${dir}/bound.tmp" "${dir}/bound.env";; esac\nexit 0\n`,
    { mode: 0o755 },
  );
  const r = await lab.exec(
    guest,
    ['busybox', 'udhcpc', '-i', 'eth0', '-f', '-q', '-n', '-t', '10', '-T', '1', '-s', script],
    { timeoutMs: 30_000 },
  );
  if (r.code !== 0) throw new Error(`udhcpc in ${guest}: ${r.stdout}${r.stderr}`);
  const env: Record<string, string> = {};
  for (const line of fs.readFileSync(path.join(dir, 'bound.env'), 'utf8').split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) env[line.slice(0, i)] = line.slice(i + 1);
  }
  return env;
}

netnsTest(
  "arping from a guest with a home-LAN device's MAC: stopped at the guest's host; the LAN keeps its device",
  async (t) => {
    const lab = await secLab(t);
    t.true((await lab.ping('lan', 'guest-a', { count: 2 })).ok, 'the LAN host reaches guest-a');
    t.true((await lab.ping('guest-b', 'lan', { count: 2 })).ok, 'guest-b reaches the LAN host');
    const lanMac = await macOf(lab, 'lan');
    const guestMac = await macOf(lab, 'guest-a');
    // The attack: guest-a takes the LAN host's MAC and announces the LAN host's address with it.
    // (The guest is root in its own namespace: it adds the address so arping may send from it.)
    await lab.exec('guest-a', ['ip', 'link', 'set', 'eth0', 'address', lanMac]);
    await lab.exec('guest-a', ['ip', 'addr', 'add', `${PLAN.lan}/32`, 'dev', 'eth0']);
    const spoof = await lab.exec('guest-a', ['arping', '-U', '-c', '2', '-I', 'eth0', PLAN.lan], {
      timeoutMs: 10_000,
    });
    t.is(spoof.code, 0, `arping: ${spoof.stdout}${spoof.stderr}`);
    t.log(`arping: ${spoof.stdout.trim().split('\n')[0]}`);
    const ping = await lab.ping('guest-b', 'lan', { count: 10, intervalS: 0.1 });
    t.log(`guest-b → LAN host during the attack: ${pingText(ping)}`);
    t.true(ping.received >= 9, `guest-b → LAN host during the attack: ${pingText(ping)}`);
    const a = await status(lab, 'host-a');
    const home = await status(lab, 'home');
    t.true(a.security.portSecurityDrops.remote_mac >= 2, JSON.stringify(a.security.portSecurityDrops));
    t.is(home.macs.find((m) => m.mac === lanMac)?.port, 'local', "home keeps the LAN host's MAC on its LAN");
    t.is(
      (await status(lab, 'host-b')).macs.find((m) => m.mac === lanMac)?.port,
      'home',
      'host-b still sends its traffic to home',
    );
    // The guest gives the MAC back and is itself again.
    await lab.exec('guest-a', ['ip', 'addr', 'del', `${PLAN.lan}/32`, 'dev', 'eth0']);
    await lab.exec('guest-a', ['ip', 'link', 'set', 'eth0', 'address', guestMac]);
    t.true((await lab.ping('guest-a', 'lan', { count: 3 })).ok);
  },
);

netnsTest(
  'a rogue dnsmasq in a guest: another guest still leases from homewire with udhcpc; snooping counted',
  async (t) => {
    const lab = await secLab(t, { staticAddresses: false, siteConfig: dhcpHome });
    // guest-b runs a real DHCP server on its own range.
    await lab.exec('guest-b', ['ip', 'addr', 'add', '198.51.100.66/24', 'dev', 'eth0']);
    const dnsmasqLog = path.join(lab.dir, 'dnsmasq.log');
    const rogue = lab.spawn(
      'guest-b',
      [
        'dnsmasq',
        '--no-daemon',
        '--conf-file=/dev/null',
        '--port=0',
        '--interface=eth0',
        '--bind-interfaces',
        '--dhcp-range=198.51.100.60,198.51.100.70,2m',
        '--dhcp-authoritative',
        '--no-ping', // offer at once (by default dnsmasq pings an address for 3 s first)
        `--dhcp-leasefile=${path.join(lab.dir, 'dnsmasq.leases')}`,
        `--pid-file=${path.join(lab.dir, 'dnsmasq.pid')}`,
        '--log-dhcp',
        `--log-facility=${dnsmasqLog}`,
      ],
      { stdio: 'pipe' },
    );
    t.teardown(() => {
      rogue.kill('SIGKILL');
    });
    await sleep(500);
    // A capture on host-b's guest port proves the rogue did answer.
    const cap = await lab.capture('host-b', 'vm0', path.join(lab.dir, 'vm0.pcap'), ['udp', 'src', 'port', '67']);
    const lease = await udhcpc(lab, 'guest-a');
    const packets = await cap.stop();
    t.is(lease.serverid, PLAN.dhcpServer, "guest-a's lease is homewire's");
    t.regex(lease.ip, /^198\.51\.100\.1\d\d$/, `${lease.ip} is in homewire's pool`);
    t.true(packets.length >= 1, `the rogue sent ${packets.length} DHCP replies on host-b's guest port`);
    const b = await status(lab, 'host-b');
    t.true(b.security.dhcpSnoopingDrops.server_from_guest >= 1, JSON.stringify(b.security.dhcpSnoopingDrops));
    t.true((await lab.ping('lan', lease.ip, { count: 3 })).ok, 'the LAN host reaches the leased guest');
  },
);

netnsTest(
  'ARP poisoning with arping against strict inspection: dropped at the host; caches elsewhere keep the truth',
  async (t) => {
    const lab = await secLab(t, { staticAddresses: false, siteConfig: dhcpHome });
    const la = await udhcpc(lab, 'guest-a');
    const lb = await udhcpc(lab, 'guest-b');
    t.true((await lab.ping('guest-b', 'lan', { count: 2 })).ok);
    t.true((await lab.ping('guest-b', la.ip, { count: 2 })).ok);
    const lanMac = await macOf(lab, 'lan');
    // The attack: guest-a says the LAN host's address (the router here) and guest-b's are at guest-a's MAC.
    // (Root in its own namespace, it adds the addresses so arping may send from them.)
    for (const ip of [PLAN.lan, lb.ip]) {
      await lab.exec('guest-a', ['ip', 'addr', 'add', `${ip}/32`, 'dev', 'eth0']);
      const r = await lab.exec('guest-a', ['arping', ip === PLAN.lan ? '-U' : '-A', '-c', '2', '-I', 'eth0', ip], {
        timeoutMs: 10_000,
      });
      t.is(r.code, 0, `arping ${ip}: ${r.stdout}${r.stderr}`);
      await lab.exec('guest-a', ['ip', 'addr', 'del', `${ip}/32`, 'dev', 'eth0']);
    }
    const neigh = await lab.exec('guest-b', ['ip', 'neigh', 'show', PLAN.lan]);
    t.regex(neigh.stdout, new RegExp(lanMac), `guest-b's cache still has the LAN host: ${neigh.stdout.trim()}`);
    const lanNeigh = await lab.exec('lan', ['ip', 'neigh', 'show', lb.ip]);
    t.notRegex(lanNeigh.stdout, new RegExp(await macOf(lab, 'guest-a')), 'the LAN host was not poisoned');
    const a = await status(lab, 'host-a');
    t.true(a.security.inspectionDrops.arp_no_binding >= 4, JSON.stringify(a.security.inspectionDrops));
    // guest-a's own ARP (for its leased address) passes: it still reaches everyone.
    await lab.exec('lan', ['ip', 'neigh', 'flush', 'all']);
    t.true((await lab.ping('lan', la.ip, { count: 3 })).ok, 'the LAN host reaches guest-a after a fresh ARP');
  },
);

netnsTest(
  'a raw-socket broadcast flood from random MACs and spoofed 198.18/15 sources: capped at the host; pings carry on',
  async (t) => {
    const lab = await secLab(t, {
      siteConfig: (s) => (s === 'host-a' ? 'security: { arp_inspection: learn, flood_pps: 200 }' : ''),
    });
    t.true((await lab.ping('lan', 'guest-b', { count: 2 })).ok);
    t.true((await lab.ping('guest-a', 'lan', { count: 2 })).ok, "guest-a's own MAC is learned before the flood");
    const flood = lab.exec('guest-a', ['python3', RAWSEND, 'eth-flood', 'eth0', '20000', '10000'], {
      timeoutMs: 60_000,
    });
    const ping = await lab.ping('lan', 'guest-b', { count: 20, intervalS: 0.1 });
    const sent = await flood;
    t.log(`${sent.stdout.trim() || sent.stderr.trim()}; LAN host → guest-b meanwhile: ${pingText(ping)}`);
    t.true(ping.received >= 18, `LAN host → guest-b during the flood: ${pingText(ping)}`);
    const a = await status(lab, 'host-a');
    const home = await status(lab, 'home');
    t.log(
      `host-a: ${JSON.stringify(a.security.portSecurityDrops)}, TAP queue full ${a.tap.rxRingDropped}; home MAC table ${home.macs.length}`,
    );
    // Each flood frame is refused by port security, or (the daemon busy) earlier by the kernel at the TAP's
    // queue towards it (TAP_TX_QUEUE_LEN), counted as tap_ring_full: either way none reaches the mesh.
    const refused = a.security.portSecurityDrops.too_many_macs + (a.tap.rxRingDropped ?? 0);
    t.true(refused >= 19_000, `random source MACs beyond max_macs_per_site, refused: ${refused}`);
    t.true(a.security.portSecurityDrops.too_many_macs >= 10_000, 'most of the flood reached port security');
    t.true(home.macs.length <= 50, `home's MAC table holds ${home.macs.length} entries`);
    // The guest's own MAC, flooding broadcasts: storm control.
    const own = lab.exec('guest-a', ['python3', RAWSEND, 'eth-flood-own', 'eth0', '20000', '10000'], {
      timeoutMs: 60_000,
    });
    const ping2 = await lab.ping('lan', 'guest-b', { count: 10, intervalS: 0.1 });
    await own;
    t.log(`guest-a flooding broadcasts as itself; LAN host → guest-b meanwhile: ${pingText(ping2)}`);
    t.true(ping2.received >= 9, pingText(ping2));
    t.true((await status(lab, 'host-a')).security.stormDrops.broadcast > 1000);
  },
);

netnsTest(
  "20,000 mac1-valid initiations per second from spoofed sources: cookies, no DH; a VM host's restart still gets its session",
  async (t) => {
    const lab = await secLab(t);
    // Cookie replies to the spoofed sources leave through the underlay and are dropped there.
    await lab.exec('home', ['ip', 'route', 'add', '198.18.0.0/15', 'via', PLAN.internet4]);
    const flood = lab.exec(
      'ul',
      ['python3', RAWSEND, 'hs-flood', lab.site('home').address, '51820', lab.site('home').publicKey, '20000', '12'],
      { timeoutMs: 60_000 },
    );
    await sleep(2000);
    // host-a restarts during the flood: a new handshake with home.
    await lab.stopDaemon('host-a');
    const started = Date.now();
    lab.startDaemon('host-a');
    await lab.waitPeersUp(30_000, ['host-a']); // the flood shares the machine's two cores with every daemon
    const upMs = Date.now() - started;
    const ping = await lab.ping('guest-a', 'lan', { count: 10, intervalS: 0.1 });
    const sent = await flood;
    t.log(
      `${sent.stdout.trim()}; host-a up again ${upMs} ms after its restart (process start included); ${pingText(ping)}`,
    );
    t.true(ping.received >= 9, `guest-a → LAN host during the flood: ${pingText(ping)}`);
    const home = await status(lab, 'home');
    t.log(
      `home: handshake guard ${JSON.stringify(home.security.handshakeGuard)}, handshakes ${JSON.stringify(home.handshakes)}`,
    );
    const g = home.security.handshakeGuard;
    const udp = await lab.snmp('home');
    t.log(
      `home's kernel dropped ${udp['Udp.RcvbufErrors']} datagrams its daemon could not read in time; it met ` +
        `${g.cookies_sent + g.cookies_withheld} with a cookie (or none) and ${home.handshakes.invalid} with a DH`,
    );
    t.true(g.cookies_sent + g.cookies_withheld > 5_000, 'the flood reached the daemon and was met with cookies');
    t.true(home.handshakes.invalid < (g.cookies_sent + g.cookies_withheld) / 20, 'few bogus ones cost a DH');
  },
);

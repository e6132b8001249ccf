// DHCP with real clients over the mesh (root, namespaces): guests on a VM-host site get home addresses from
// the home site's built-in server with busybox udhcpc, ISC dhclient and dhcpcd; renewals work; a release frees
// the address; the LAN host reaches the leased address; a home daemon killed with SIGKILL keeps its leases.
// Clients never touch the host: own hook scripts, private mount namespace for dhcpcd.
import fs from 'node:fs';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { listLeases } from '../../src/dhcp/leases-cli.ts';
import { PLAN, type Lab } from '../../lab/topology.ts';
import { labFor, netnsTest } from '../helpers/netns.ts';

const LEASE_SECONDS = 20; // renewal (T1) after 10 s

function ipNum(ip: string): number {
  return ip.split('.').reduce((a, b) => a * 256 + Number(b), 0);
}

async function dhcpLab(t: ExecutionContext): Promise<{ lab: Lab; leaseDb: string }> {
  let leaseDb = '';
  const lab = await labFor(t, {
    sites: ['home', 'host-a', 'host-b'],
    staticAddresses: false,
    siteConfig: (site) => {
      if (site !== 'home') return '';
      return `${[
        'dhcp:',
        '  subnet: 198.51.100.0/24',
        `  server_ip: ${PLAN.dhcpServer}`,
        `  pool: ${PLAN.dhcpPool[0]}-${PLAN.dhcpPool[1]}`,
        `  router: ${PLAN.lan}`,
        '  domain: home.example',
        `  lease_seconds: ${LEASE_SECONDS}`,
        '  lease_db: leases.db',
      ].join('\n')}\n`;
    },
  });
  leaseDb = path.join(lab.dir, 'leases.db');
  return { lab, leaseDb };
}

/** A hook script that records the client's environment and applies the address inside the namespace. */
function hook(dir: string, name: string, body: string): string {
  const file = path.join(dir, name);
  // Written whole, then renamed: the test polls for the file and must never read half of it.
  fs.writeFileSync(
    file,
    `#!/bin/sh\n${body}\nenv | sort > "${dir}/${name}.$1.env.tmp" 2>/dev/null; mv "${dir}/${name}.$1.env.tmp" "${dir}/${name}.$1.env"\nexit 0\n`,
    { mode: 0o755 },
  );
  return file;
}

function readEnv(file: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}

async function until(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const start = Date.now();
  while (!(await cond())) {
    if (Date.now() - start > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

netnsTest('busybox udhcpc on a VM host gets a home address over the mesh; renew, release, MTU option', async (t) => {
  const { lab, leaseDb } = await dhcpLab(t);
  const dir = fs.mkdtempSync(path.join(lab.dir, 'udhcpc-'));
  const script = hook(
    dir,
    'udhcpc.sh',
    `case "$1" in bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface";; esac`,
  );
  // Foreground, stays running to renew; -R sends a RELEASE when it is told to stop.
  const client = lab.spawn('guest-a', [
    'busybox',
    'udhcpc',
    '-i',
    'eth0',
    '-f',
    '-R',
    '-t',
    '10',
    '-T',
    '1',
    '-x',
    'hostname:guest-a',
    '-s',
    script,
  ]);
  t.teardown(() => {
    client.kill('SIGKILL');
  });
  await until(() => fs.existsSync(`${script}.bound.env`), 20_000, 'udhcpc to be bound');
  const env = readEnv(`${script}.bound.env`);
  t.true(
    ipNum(env.ip) >= ipNum(PLAN.dhcpPool[0]) && ipNum(env.ip) <= ipNum(PLAN.dhcpPool[1]),
    `${env.ip} is in the pool`,
  );
  t.is(env.serverid, PLAN.dhcpServer);
  t.is(env.router, PLAN.lan);
  t.is(env.domain, 'home.example');
  t.is(Number(env.mtu), lab.tapMtu, 'option 26 carries the overlay MTU');
  t.is(Number(env.lease), LEASE_SECONDS);

  const ping = await lab.ping('lan', env.ip, { count: 3 });
  t.is(ping.received, 3, 'the LAN host reaches the leased address through the mesh');

  const leases = listLeases(leaseDb);
  const lease = leases.find((l) => l.ip === env.ip)!;
  t.truthy(lease, JSON.stringify(leases));
  t.is(lease.site, 'host-a');
  t.is(lease.hostname, 'guest-a');
  const firstExpiry = lease.expiresAt;

  // Renewal at T1 (unicast to server_ip, which homewire answers ARP for).
  await until(() => fs.existsSync(`${script}.renew.env`), 20_000, 'udhcpc to renew');
  await until(
    () => (listLeases(leaseDb).find((l) => l.ip === env.ip)?.expiresAt ?? 0) > firstExpiry,
    5000,
    'the renewed expiry',
  );

  // Release frees the address.
  client.kill('SIGTERM');
  await until(() => !listLeases(leaseDb).some((l) => l.ip === env.ip && l.state === 'bound'), 5000, 'the release');
});

netnsTest(
  'ISC dhclient and dhcpcd on two VM hosts get different home addresses; leases survive SIGKILL of the home daemon',
  async (t) => {
    const { lab, leaseDb } = await dhcpLab(t);
    const dir = fs.mkdtempSync(path.join(lab.dir, 'clients-'));
    fs.chmodSync(dir, 0o755);

    // ISC dhclient with its own hook script (never the stock dhclient-script).
    const dh = hook(
      dir,
      'dhclient.sh',
      'case "$reason" in BOUND|RENEW|REBOOT) ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface";; esac',
    );
    const dhclient = lab.spawn('guest-a', [
      'dhclient',
      '-4',
      '-1',
      '-d',
      '-cf',
      '/dev/null',
      '-pf',
      path.join(dir, 'dhclient.pid'),
      '-lf',
      path.join(dir, 'dhclient.leases'),
      '-sf',
      dh,
      'eth0',
    ]);
    t.teardown(() => {
      dhclient.kill('SIGKILL');
    });

    // dhcpcd in a private mount namespace (its /run and its database stay ours).
    const db = fs.mkdtempSync(path.join(dir, 'dhcpcd-db-'));
    const dhcpcd = await lab.exec(
      'guest-b',
      [
        'unshare',
        '-m',
        '--propagation',
        'private',
        'sh',
        '-c',
        `mount -t tmpfs tmpfs /run && mkdir -p /var/lib/dhcpcd && mount --bind ${db} /var/lib/dhcpcd && exec dhcpcd -4 -1 -w -t 15 -L -B --noarp -c /bin/true eth0`,
      ],
      { timeoutMs: 30_000 },
    );
    t.is(dhcpcd.code, 0, dhcpcd.stdout + dhcpcd.stderr);

    await until(
      async () => {
        const a = await lab.exec('guest-a', ['ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0']);
        return /inet 198\.51\.100\.1\d\d\//.test(a.stdout);
      },
      20_000,
      'dhclient to configure guest-a',
    );
    const addrOf = async (ns: string) =>
      /inet (198\.51\.100\.\d+)\//.exec(
        (await lab.exec(ns, ['ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0'])).stdout,
      )?.[1];
    const ipA = (await addrOf('guest-a'))!;
    const ipB = (await addrOf('guest-b'))!;
    t.truthy(ipB, 'dhcpcd configured guest-b');
    t.not(ipA, ipB);
    for (const ip of [ipA, ipB]) {
      t.true(ipNum(ip) >= ipNum(PLAN.dhcpPool[0]) && ipNum(ip) <= ipNum(PLAN.dhcpPool[1]), `${ip} is in the pool`);
      const ping = await lab.ping('lan', ip, { count: 2 });
      t.is(ping.received, 2, `the LAN host reaches ${ip}`);
    }
    const before = listLeases(leaseDb)
      .filter((l) => l.state === 'bound')
      .map((l) => `${l.mac} ${l.ip} ${l.site}`)
      .sort();
    t.is(before.length, 2);
    t.deepEqual(new Set(listLeases(leaseDb).map((l) => l.site)), new Set(['host-a', 'host-b']));

    // SIGKILL the home daemon, start it again: the lease table is intact and both clients keep their address.
    await lab.stopDaemon('home', { signal: 'SIGKILL' });
    lab.startDaemon('home');
    await lab.waitPeersUp();
    const after = listLeases(leaseDb)
      .filter((l) => l.state === 'bound')
      .map((l) => `${l.mac} ${l.ip} ${l.site}`)
      .sort();
    t.deepEqual(after, before);
    const status = await lab.exec('home', [
      process.execPath,
      path.resolve('bin/homewire.mjs'),
      'status',
      '--json',
      '--config',
      lab.site('home').configFile,
    ]);
    t.is(JSON.parse(status.stdout).dhcp.active, 2, 'the restarted daemon serves the stored leases');
    // A new client after the restart gets a third address.
    const script = hook(dir, 'udhcpc3.sh', 'true');
    const third = await lab.exec(
      'guest-b',
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
        '-s',
        script,
        '-x',
        'hostname:third',
        '-x',
        '0x3d:01aabbccddeeff',
      ],
      { timeoutMs: 30_000 },
    );
    t.is(third.code, 0, third.stdout + third.stderr);
    const ip3 = readEnv(`${script}.bound.env`).ip;
    t.false([ipA, ipB].includes(ip3), `${ip3} is new`);
  },
);

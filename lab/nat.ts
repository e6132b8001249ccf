// Sites behind real NATs (iptables + conntrack in router namespaces), for test/nat-*.test.ts and bench/nat.ts.
//
//   internet   <prefix>inet    bridge br-inet, 203.0.113.0/24 (TEST-NET-3), router address .254
//   home       <prefix>home    eth0 203.0.113.1 on br-inet: a public address, and a name, home.homewire.test,
//                              in every site's /etc/netns/<ns>/hosts (`ip netns exec` mounts it over /etc/hosts)
//   host i     <prefix>host-K  eth0 198.18.i.2/24 ─ lan0 of its router <prefix>nat-K (198.18.i.1), whose wan0
//                              203.0.113.(10+i) is on br-inet; the router NATs as its kind says:
//     full-cone           SNAT udp :51820 to WAN:51820, DNAT WAN:51820 to the host: anyone may send in
//     address-restricted  the same mapping, inbound only from addresses the host sent to (ipset)
//     port-restricted     MASQUERADE: one mapping per source port, replies only from where it sent to
//     symmetric           MASQUERADE --random-fully: a new port per destination
//     double              two port-restricted NATs in a row (<prefix>nat2-K inside <prefix>nat-K,
//                         198.18.(100+i).0/24 between them)
//     udp-blocked         MASQUERADE, but only TCP to port 443 may leave: no UDP at all
//     public              no NAT: the host's eth0 is on br-inet itself (203.0.113.(10+i))
// Site configs: home lists the hosts without endpoints, with introduce, relay and listen_tcp; each host lists
// only home, by its name, with endpoint_tcp and introducer: true. The overlay (home LAN) is 198.51.100.0/24 as
// in lab/topology.ts; hosts may take host addresses 198.51.100.(20+i).
//
// Everything is namespaces the lab's prefix names (deleted by prefix) and /etc/netns/<prefix>* (removed with
// them: lab/netns.ts).
import fs from 'node:fs';
import path from 'node:path';
import type { Lab, LabNetwork, Site } from './topology.ts';
import { ip, ipn, NETNS_ETC } from './netns.ts';
import { run, runOk } from './run.ts';
import { PLAN } from './topology.ts';

/** Extra config for the NAT lab's sites: home introduces, relays, takes TCP on 443 and serves DHCP; hosts may
 *  get a host_address. */
export function natSiteConfig(
  o: { dhcp?: boolean; hostAddresses?: Record<string, string>; home?: string; extra?: (site: string) => string } = {},
): (site: string) => string {
  return (site) => {
    const lines: string[] = [];
    if (site === (o.home ?? 'home')) {
      lines.push('introduce: true', 'relay: true', `listen_tcp: "0.0.0.0:${HOME_TCP_PORT}"`);
      if (o.dhcp !== false) {
        lines.push(
          'dhcp:',
          '  subnet: 198.51.100.0/24',
          `  server_ip: ${PLAN.dhcpServer}`,
          `  pool: ${PLAN.dhcpPool[0]}-${PLAN.dhcpPool[1]}`,
          `  router: ${PLAN.lan}`,
          '  lease_seconds: 600',
          '  lease_db: leases.db',
        );
      }
    }
    const a = o.hostAddresses?.[site];
    if (a) lines.push(`host_address: ${a}/24`);
    const extra = o.extra?.(site);
    if (extra) lines.push(extra);
    return lines.join('\n');
  };
}

export type NatKind =
  | 'full-cone'
  | 'address-restricted'
  | 'port-restricted'
  | 'symmetric'
  | 'double'
  | 'udp-blocked'
  | 'public';

/** The NAT lab's VM hosts, one behind each kind of NAT (the NAT tests and bench/nat.ts share them). */
export const NAT_KIND_HOSTS: Readonly<Record<string, NatKind>> = {
  'host-full': 'full-cone',
  'host-addr': 'address-restricted',
  'host-port': 'port-restricted',
  'host-sym': 'symmetric',
  'host-dbl': 'double',
  'host-udpb': 'udp-blocked',
};

export const INTERNET = {
  prefixLength: 24,
  router: '203.0.113.254',
  home: '203.0.113.1',
  wan: (i: number) => `203.0.113.${10 + i}`,
  inside: (i: number) => `198.18.${i}`, // .1 router, .2 host
  between: (i: number) => `198.18.${100 + i}`, // double NAT: .1 outer router, .2 inner router
};
export const HOME_DNS = 'home.homewire.test';
export const HOME_TCP_PORT = 443;
export const INTERNET_BRIDGE = 'br-inet';

/** A host's overlay address (host_address) in the lab's plan. */
export function hostAddress(index: number): string {
  return `198.51.100.${20 + index}`;
}

export class NatNetwork implements LabNetwork {
  constructor(
    /** NAT kind of each VM-host site (by site name); home is public. */
    readonly kinds: Record<string, NatKind>,
    readonly opts: { home?: string; tcp?: boolean } = {},
  ) {}

  private kindOf(name: string): NatKind {
    const k = this.kinds[name];
    if (!k) throw new Error(`site ${name} has no NAT kind (lab/nat.ts NatNetwork)`);
    return k;
  }

  address(site: { name: string; index: number; role: 'home' | 'host' }): string {
    if (site.role === 'home') return INTERNET.home;
    return this.kindOf(site.name) === 'public' ? INTERNET.wan(site.index) : `${INTERNET.inside(site.index)}.2`;
  }

  listen(site: Site): string {
    return site.role === 'home' ? `${INTERNET.home}:${site.port}` : `0.0.0.0:${site.port}`;
  }

  peerLines(_lab: Lab, site: Site, peer: Site): string[] {
    if (site.role === 'home') return []; // sites behind NAT: no endpoint, they come to us
    if (peer.role !== 'home') return [`endpoint: "${peer.endpoint}"`];
    const lines = [`endpoint: "${HOME_DNS}:${peer.port}"`];
    if (this.opts.tcp !== false) lines.push(`endpoint_tcp: "${HOME_DNS}:${HOME_TCP_PORT}"`);
    lines.push('introducer: true');
    return lines;
  }

  /** The router namespaces of a site (outer first), none for home and public hosts. */
  routers(lab: Lab, site: string): string[] {
    const s = lab.site(site);
    if (s.role === 'home') return [];
    const kind = this.kindOf(site);
    const short = site.replace(/^host-/, '');
    if (kind === 'public') return [];
    return kind === 'double' ? [lab.ns(`nat-${short}`), lab.ns(`nat2-${short}`)] : [lab.ns(`nat-${short}`)];
  }

  async build(lab: Lab): Promise<void> {
    const inet = lab.ns('inet');
    await ip('netns', 'add', inet);
    await ipn(inet, 'link', 'set', 'lo', 'up');
    await ipn(inet, 'link', 'add', INTERNET_BRIDGE, 'type', 'bridge');
    await ipn(inet, 'link', 'set', INTERNET_BRIDGE, 'up');
    await ipn(inet, 'addr', 'add', `${INTERNET.router}/${INTERNET.prefixLength}`, 'dev', INTERNET_BRIDGE);
    const hosts = `127.0.0.1 localhost\n${INTERNET.home} ${HOME_DNS}\n`;
    for (const s of lab.sites) {
      // The name of home, for this site's processes only (ip netns exec mounts it over /etc/hosts).
      const etc = path.join(NETNS_ETC, s.ns);
      fs.mkdirSync(etc, { recursive: true });
      fs.writeFileSync(path.join(etc, 'hosts'), hosts);
      if (s.role === 'home') {
        await this.plug(inet, `i-${s.name}`, s.ns, 'eth0', `${INTERNET.home}/${INTERNET.prefixLength}`);
        continue;
      }
      const kind = this.kindOf(s.name);
      if (kind === 'public') {
        await this.plug(inet, `i-${s.name}`, s.ns, 'eth0', `${INTERNET.wan(s.index)}/${INTERNET.prefixLength}`);
        continue;
      }
      const [outer, inner] = this.routers(lab, s.name);
      const wan = INTERNET.wan(s.index);
      await ip('netns', 'add', outer);
      await ipn(outer, 'link', 'set', 'lo', 'up');
      await this.plug(inet, `i-${s.name}`, outer, 'wan0', `${wan}/${INTERNET.prefixLength}`);
      let last = outer;
      if (inner) {
        const b = INTERNET.between(s.index);
        await ip('netns', 'add', inner);
        await ipn(inner, 'link', 'set', 'lo', 'up');
        await this.link(outer, 'lan0', `${b}.1/24`, inner, 'wan0', `${b}.2/24`);
        await ipn(inner, 'route', 'add', 'default', 'via', `${b}.1`);
        await this.nat(outer, 'port-restricted', `${b}.2`, wan);
        last = inner;
      }
      const net = INTERNET.inside(s.index);
      await this.link(last, 'lan0', `${net}.1/24`, s.ns, 'eth0', `${net}.2/24`);
      await ipn(s.ns, 'route', 'add', 'default', 'via', `${net}.1`);
      await this.nat(
        last,
        kind === 'double' ? 'port-restricted' : kind,
        `${net}.2`,
        inner ? `${INTERNET.between(s.index)}.2` : wan,
      );
    }
  }

  /** A veth from the internet bridge (or any namespace) into `ns` as `ifname` with an address. */
  private async plug(inet: string, port: string, ns: string, ifname: string, cidr: string): Promise<void> {
    await ipn(inet, 'link', 'add', port, 'type', 'veth', 'peer', 'name', ifname, 'netns', ns);
    await ipn(inet, 'link', 'set', port, 'master', INTERNET_BRIDGE, 'up');
    await ipn(ns, 'addr', 'add', cidr, 'dev', ifname);
    await ipn(ns, 'link', 'set', ifname, 'up');
  }

  private async link(a: string, aIf: string, aCidr: string, b: string, bIf: string, bCidr: string): Promise<void> {
    await ipn(a, 'link', 'add', aIf, 'type', 'veth', 'peer', 'name', bIf, 'netns', b);
    await ipn(a, 'addr', 'add', aCidr, 'dev', aIf);
    await ipn(b, 'addr', 'add', bCidr, 'dev', bIf);
    await ipn(a, 'link', 'set', aIf, 'up');
    await ipn(b, 'link', 'set', bIf, 'up');
  }

  /** The router's rules: wan0 outside, lan0 inside, the host (or inner router) at `inside`. */
  private async nat(ns: string, kind: NatKind, inside: string, wan: string): Promise<void> {
    const ipt = (...args: string[]) => runOk('ip', ['netns', 'exec', ns, 'iptables', '-w', ...args]);
    await runOk('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=1']);
    await ipt('-P', 'FORWARD', 'DROP');
    // Like a home router: nothing unsolicited from outside reaches the router itself. (Accepting it would also
    // leave conntrack entries that take the port a later outbound mapping wants.)
    await ipt('-A', 'INPUT', '-i', 'wan0', '-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED', '-j', 'ACCEPT');
    await ipt('-A', 'INPUT', '-i', 'wan0', '-j', 'DROP');
    await ipt('-A', 'FORWARD', '-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED', '-j', 'ACCEPT');
    if (kind === 'udp-blocked') {
      await ipt(
        '-A',
        'FORWARD',
        '-i',
        'lan0',
        '-o',
        'wan0',
        '-p',
        'tcp',
        '--dport',
        String(HOME_TCP_PORT),
        '-j',
        'ACCEPT',
      );
    } else {
      await ipt('-A', 'FORWARD', '-i', 'lan0', '-o', 'wan0', '-j', 'ACCEPT');
    }
    if (kind === 'full-cone' || kind === 'address-restricted') {
      const port = '51820';
      await ipt(
        '-t',
        'nat',
        '-A',
        'POSTROUTING',
        '-o',
        'wan0',
        '-p',
        'udp',
        '-s',
        inside,
        '--sport',
        port,
        '-j',
        'SNAT',
        '--to-source',
        `${wan}:${port}`,
      );
      await ipt(
        '-t',
        'nat',
        '-A',
        'PREROUTING',
        '-i',
        'wan0',
        '-p',
        'udp',
        '--dport',
        port,
        '-j',
        'DNAT',
        '--to-destination',
        `${inside}:${port}`,
      );
      if (kind === 'full-cone') {
        await ipt('-A', 'FORWARD', '-i', 'wan0', '-p', 'udp', '-d', inside, '--dport', port, '-j', 'ACCEPT');
      } else {
        await runOk('ip', ['netns', 'exec', ns, 'ipset', 'create', 'seen', 'hash:ip', 'timeout', '300']);
        await ipt(
          '-I',
          'FORWARD',
          '1',
          '-i',
          'lan0',
          '-o',
          'wan0',
          '-p',
          'udp',
          '-j',
          'SET',
          '--add-set',
          'seen',
          'dst',
          '--exist',
        );
        await ipt(
          '-A',
          'FORWARD',
          '-i',
          'wan0',
          '-p',
          'udp',
          '-d',
          inside,
          '--dport',
          port,
          '-m',
          'set',
          '--match-set',
          'seen',
          'src',
          '-j',
          'ACCEPT',
        );
      }
    }
    const masq = ['-t', 'nat', '-A', 'POSTROUTING', '-o', 'wan0', '-j', 'MASQUERADE'];
    if (kind === 'symmetric') masq.push('--random-fully');
    await ipt(...masq);
  }

  /** conntrack -F in every router of a site: its NAT forgets every mapping (as a NAT rebooting would). */
  async flush(lab: Lab, site: string): Promise<void> {
    for (const ns of this.routers(lab, site)) {
      const r = await run('ip', ['netns', 'exec', ns, 'conntrack', '-F']);
      if (r.code !== 0) throw new Error(`conntrack -F in ${ns} failed: ${r.stderr.trim()}`);
    }
  }

  /** UDP datagrams the NAT's rules dropped so far (FORWARD policy counter), for logs. */
  async forwardDrops(lab: Lab, site: string): Promise<number> {
    let n = 0;
    for (const ns of this.routers(lab, site)) {
      const r = await run('ip', ['netns', 'exec', ns, 'iptables', '-w', '-L', 'FORWARD', '-v', '-x', '-n']);
      const m = /policy DROP (\d+) packets/.exec(r.stdout);
      if (m) n += Number(m[1]);
    }
    return n;
  }
}

// QEMU guests in the namespace lab (lab/topology.ts): a guest runs inside a site's namespace, its TAP on
// the site's br-hw beside the daemon's TAP. Used by test/vm-*.test.ts and bench/migration.ts.
//
//   const guests = new LabGuests(lab, buildGuestImage());
//   const vm = await guests.boot('host-a', { mac });                       // waits for HOMEWIRE-READY
//   const dst = await guests.incoming('host-b', vm, 4444);                 // -incoming tcp:<host-b>:4444
//   await vm.migrate(dst.uri); ... await guests.stopAll();
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { hasProgram, type Lab, PLAN, PROJECT_ROOT, SITE_BRIDGE } from '../topology.ts';
import { type GuestImage, LEASE_MARK, READY_MARK } from '../guest-image.ts';
import { hasQemu, launch, type LaunchOptions, type Vm } from '../../src/agent/qemu/driver.ts';

export const GUEST_TAP = 'vmtap0';
export const MIGRATION_PORT = 4444;

/** Why QEMU lab tests cannot run here, or null. */
export function vmSkipReason(): string | null {
  if (process.platform !== 'linux') return 'QEMU lab tests run on Linux only';
  if (process.getuid?.() !== 0) return 'QEMU lab tests need root (network namespaces, TAPs, ping -i 0.002)';
  for (const [p, pkg] of [
    ['ip', 'iproute2'],
    ['ping', 'iputils-ping'],
    ['tcpdump', 'tcpdump'],
    ['iperf3', 'iperf3'],
    ['apt-get', 'apt'],
    ['dpkg-deb', 'dpkg'],
  ]) {
    if (!hasProgram(p)) return `QEMU lab tests need ${p} (apt-get install ${pkg})`;
  }
  if (!hasQemu()) return 'QEMU lab tests need qemu-system-x86_64 (apt-get install qemu-system-x86)';
  if (!hasProgram('qemu-img') || !hasProgram('qemu-nbd'))
    return 'QEMU lab tests need qemu-img and qemu-nbd for guest disks (apt-get install qemu-utils)';
  if (!hasProgram('curl')) return 'QEMU lab tests need curl to read guest state (apt-get install curl)';
  if (!fs.existsSync('/bin/busybox'))
    return 'QEMU lab tests need a static busybox for the guest (apt-get install busybox-static)';
  if (!fs.existsSync(path.join(PROJECT_ROOT, 'build/Release/homewire_tap.node')))
    return 'the TAP addon is not built (npm run build)';
  return null;
}

/** A lab prefix for VM tests: hwv + 4 hex + '-'. */
export function vmPrefix(): string {
  return `hwv${crypto.randomBytes(2).toString('hex')}-`;
}

/** Extra config for the lab's sites: with dhcp, a DHCP server at home (pool 198.51.100.100-199, router = the LAN
 *  host, leases in the lab dir). */
export function vmSiteConfig(o: { dhcp?: boolean; home?: string } = {}): (site: string) => string {
  return (site) => {
    if (!o.dhcp || site !== (o.home ?? 'home')) return '';
    return [
      'dhcp:',
      '  subnet: 198.51.100.0/24',
      `  server_ip: ${PLAN.dhcpServer}`,
      `  pool: ${PLAN.dhcpPool[0]}-${PLAN.dhcpPool[1]}`,
      `  router: ${PLAN.lan}`,
      '  lease_seconds: 600',
      '  lease_db: leases.db',
    ].join('\n');
  };
}

export interface Lease {
  ip: string;
  mask: number;
  router: string | null;
  server: string | null;
  mtu: string | null;
}

export function parseLease(serial: string): Lease | null {
  const m = new RegExp(`${LEASE_MARK} ip=(\\S+) mask=(\\d+)(.*)`).exec(serial);
  if (!m) return null;
  const kv = Object.fromEntries([...m[3].matchAll(/(\w+)=(\S+)/g)].map((x) => [x[1], x[2]]));
  const none = (v: string | undefined) => (v === undefined || v === 'none' ? null : v);
  return { ip: m[1], mask: Number(m[2]), router: none(kv.router), server: none(kv.server), mtu: none(kv.mtu) };
}

export class LabGuests {
  readonly vms: Vm[] = [];
  private n = 0;

  constructor(
    readonly lab: Lab,
    readonly image: GuestImage,
  ) {}

  private options(site: string, mac: string, extra: Partial<LaunchOptions>): LaunchOptions {
    const id = `${site}-${++this.n}`;
    return {
      name: id,
      kernel: this.image.kernel,
      initrd: this.image.initrd,
      mac,
      tap: GUEST_TAP,
      qmpSocket: path.join(this.lab.dir, `${id}.qmp`),
      serialLog: path.join(this.lab.dir, `${id}.serial`),
      netns: this.lab.ns(site),
      bridge: SITE_BRIDGE,
      tapMtu: this.lab.tapMtu,
      ...extra,
    };
  }

  /** Boots a guest at a site and waits until it has its address and services (static with ip: 'A/LEN'). */
  async boot(
    site: string,
    o: { mac: string; ip?: string; timeoutMs?: number },
  ): Promise<{ vm: Vm; lease: Lease; bootMs: number }> {
    const started = Date.now();
    const vm = await launch(this.options(site, o.mac, { append: `quiet${o.ip ? ` hw.ip=${o.ip}` : ''}` }));
    this.vms.push(vm);
    await vm.waitSerial(new RegExp(`${READY_MARK} ip=\\S+`), o.timeoutMs ?? 60_000);
    const lease = parseLease(vm.serial());
    if (!lease) throw new Error(`${vm.name}: READY without a lease line:\n${vm.tail()}`);
    return { vm, lease, bootMs: Date.now() - started };
  }

  /**
   * A destination for a live migration of `like` at a site: same machine, -incoming tcp:<address>:port (default:
   * the site's underlay address; behind NAT, its overlay host address, so the stream rides the mesh); with
   * tlsPskDir (driver.ts writePskDir) it listens only for TLS with that key, as the host agent's do.
   */
  async incoming(
    site: string,
    like: Vm,
    port = MIGRATION_PORT,
    o: { tlsPskDir?: string; address?: string } = {},
  ): Promise<{ vm: Vm; uri: string }> {
    const uri = `tcp:${o.address ?? this.lab.site(site).underlay4}:${port}`;
    const tls = o.tlsPskDir ? { incoming: 'defer', tlsPskDir: o.tlsPskDir } : { incoming: uri };
    const vm = await launch(this.options(site, like.opts.mac, { append: like.opts.append, ...tls }));
    this.vms.push(vm);
    if (o.tlsPskDir) await vm.incomingTls(uri);
    return { vm, uri };
  }

  async stopAll(): Promise<void> {
    await Promise.all(this.vms.map((v) => v.stop()));
  }
}

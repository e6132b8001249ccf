// The information service: which hosts exist, whether they are up, what they offer and what is free, and
// where a VM fits. Liveness is in memory on the leader (a heartbeat does not write the store); the record
// is written when a host registers or changes between up and down. After a takeover every known host gets
// a fresh grace period, so a new leader never marks hosts down for heartbeats its predecessor received.
import type { Logger } from '../log.ts';
import { HEARTBEAT_LEASES_MAX, HOST_DOWN_AFTER_MS } from './constants.ts';
import { holdsCapacity } from './states.ts';
import type { Store } from './store.ts';
import {
  ApiError,
  type GuestReport,
  type Heartbeat,
  type HostInfo,
  type HostRecord,
  type HostView,
  type MeshReport,
  type VmRecord,
} from './types.ts';

export interface Liveness {
  lastSeenMs: number;
  bootId: string;
  /** Highest guests_version seen in a command result: older heartbeats are stale for reconciling. */
  minGuestsVersion: number;
  guests: GuestReport[] | null;
  guestsVersion: number;
  reportedMs: number; // when `guests` arrived (0: none since this leader began)
  down: boolean;
  mesh?: MeshReport | null;
  /** MAC → IPv4 of the site's bound DHCP leases (hosts registered with dhcp only). */
  leases?: Map<string, string>;
}

export interface HostQuery {
  site?: string;
  labels?: Record<string, string | null>; // null: the label must exist, any value
  freeCpus?: number;
  freeMemoryMib?: number;
  state?: 'up' | 'down';
  hypervisor?: boolean;
}

export class HostRegistry {
  readonly live = new Map<string, Liveness>();

  constructor(
    private readonly store: Store,
    private readonly log: Logger,
    private readonly now: () => number,
    private readonly onDown: (host: string, reason?: string) => void,
  ) {}

  async register(info: HostInfo): Promise<HostRecord> {
    const now = this.now();
    const old = await this.store.get<HostRecord>('hosts', info.name);
    const rec: HostRecord = {
      ...info,
      state: 'up',
      registered_at: new Date(now).toISOString(),
      last_seen: new Date(now).toISOString(),
    };
    await this.store.put('hosts', info.name, rec);
    const l = this.live.get(info.name);
    const sameBoot = l?.bootId === info.boot_id;
    // A restarted agent will never answer what its predecessor was asked: fail those commands now, not at
    // their timeouts (its guests kept running; it reports them in its first heartbeat).
    if (l && !sameBoot) this.onDown(info.name, 'restarted its agent');
    this.live.set(info.name, {
      lastSeenMs: now,
      bootId: info.boot_id,
      minGuestsVersion: sameBoot ? l!.minGuestsVersion : 0,
      guests: sameBoot ? l!.guests : null,
      guestsVersion: sameBoot ? l!.guestsVersion : 0,
      reportedMs: sameBoot ? l!.reportedMs : 0,
      down: false,
    });
    this.log.info(
      {
        host: info.name,
        site: info.site,
        cpus: info.cpus,
        memoryMib: info.memory_mib,
        hypervisor: info.hypervisor,
        again: old !== null,
      },
      old ? 'host registered again' : 'host registered',
    );
    return rec;
  }

  /** Forgets a host (`homewire host remove`): its record, its liveness, its queued and running commands. */
  async remove(name: string): Promise<boolean> {
    const had = await this.store.delete('hosts', name);
    const live = this.live.delete(name);
    this.onDown(name);
    return had || live;
  }

  /** The address a DHCP-serving site (up, registered with dhcp) last reported leased to `mac`, or null. */
  leaseIp(mac: string): string | null {
    for (const l of this.live.values()) {
      const ip = l.down ? undefined : l.leases?.get(mac);
      if (ip !== undefined) return ip;
    }
    return null;
  }

  /** VM records as the API and the page show them: with `lease_ip` from the DHCP site's report. */
  withLeases(vms: VmRecord[]): VmRecord[] {
    return vms.map((v) => ({ ...v, lease_ip: this.leaseIp(v.mac) }));
  }

  /** A heartbeat: returns the host's guests if they are fresh enough to reconcile against, else null. */
  async heartbeat(hb: Heartbeat): Promise<{ known: boolean; guests: GuestReport[] | null }> {
    const rec = await this.store.get<HostRecord>('hosts', hb.name);
    const l = this.live.get(hb.name);
    if (!rec || !l || l.bootId !== hb.boot_id) return { known: false, guests: null }; // agent re-registers
    const now = this.now();
    l.lastSeenMs = now;
    l.down = false;
    l.mesh = meshReport(hb.mesh);
    if (rec.dhcp && Array.isArray(hb.leases)) l.leases = leaseMap(hb.leases);
    if (rec.state === 'down') {
      await this.store.put('hosts', hb.name, { ...rec, state: 'up', last_seen: new Date(now).toISOString() });
      this.log.info({ host: hb.name }, 'host up again');
    }
    if (hb.guests_version < l.minGuestsVersion) return { known: true, guests: null };
    l.guests = hb.guests;
    l.guestsVersion = hb.guests_version;
    l.reportedMs = now;
    return { known: true, guests: hb.guests };
  }

  /** A command result carries the agent's guests_version: heartbeats older than that are stale. */
  noteResult(host: string, bootId: string, guestsVersion: number): void {
    const l = this.live.get(host);
    if (l && l.bootId === bootId) l.minGuestsVersion = Math.max(l.minGuestsVersion, guestsVersion);
  }

  /** Marks hosts that missed their heartbeats down (one store write each); called by the leader's tick. */
  async tick(): Promise<void> {
    const now = this.now();
    for (const rec of await this.store.list<HostRecord>('hosts')) {
      if (rec.state !== 'up') continue;
      const l = this.live.get(rec.name);
      const last = l?.lastSeenMs ?? 0;
      if (now - last < HOST_DOWN_AFTER_MS) continue;
      await this.store.put('hosts', rec.name, {
        ...rec,
        state: 'down',
        last_seen: new Date(last || Date.parse(rec.last_seen)).toISOString(),
      });
      if (l) {
        l.guests = null;
        l.reportedMs = 0;
        l.down = true;
      }
      this.log.warn({ host: rec.name, silentMs: last ? now - last : null }, 'host down: missed its heartbeats');
      this.onDown(rec.name);
    }
  }

  /** A new leader: every host recorded up gets a full grace period; reports must arrive anew. */
  async takeover(): Promise<void> {
    const now = this.now();
    this.live.clear();
    for (const rec of await this.store.list<HostRecord>('hosts')) {
      this.live.set(rec.name, {
        lastSeenMs: now,
        bootId: rec.boot_id,
        minGuestsVersion: 0,
        guests: null,
        guestsVersion: 0,
        reportedMs: 0,
        down: rec.state === 'down',
      });
    }
  }

  isUp(rec: HostRecord | null | undefined): boolean {
    return rec?.state === 'up';
  }

  /** Hosts with free capacity and their VMs, computed from the VM records. */
  views(hosts: HostRecord[], vms: VmRecord[]): HostView[] {
    return hosts.map((h) => {
      let cpus = 0;
      let mem = 0;
      const names: string[] = [];
      for (const vm of vms) {
        if (!holdsCapacity(vm.state)) continue;
        if (vm.host === h.name || (vm.state === 'migrating' && vm.target === h.name)) {
          cpus += vm.cpus;
          mem += vm.memory_mib;
          names.push(vm.name);
        }
      }
      const l = this.live.get(h.name);
      const lastSeen = l && h.state === 'up' ? new Date(l.lastSeenMs).toISOString() : h.last_seen;
      return {
        ...h,
        last_seen: lastSeen,
        free: { cpus: Math.max(0, h.cpus - cpus), memory_mib: Math.max(0, h.memory_mib - mem) },
        vms: names,
        mesh: l?.mesh ?? null,
      };
    });
  }

  filter(views: HostView[], q: HostQuery): HostView[] {
    return views.filter((h) => {
      if (q.site !== undefined && h.site !== q.site) return false;
      if (q.state !== undefined && h.state !== q.state) return false;
      if (q.hypervisor !== undefined && h.hypervisor.available !== q.hypervisor) return false;
      if (q.freeCpus !== undefined && h.free.cpus < q.freeCpus) return false;
      if (q.freeMemoryMib !== undefined && h.free.memory_mib < q.freeMemoryMib) return false;
      for (const [k, v] of Object.entries(q.labels ?? {})) {
        if (!(k in h.labels)) return false;
        if (v !== null && h.labels[k] !== v) return false;
      }
      return true;
    });
  }

  /** Can `vm` run on `h`? null if yes, else why not. `need`: a further condition (a warm image's QEMU). */
  unfit(h: HostView, vm: VmRecord, need?: (h: HostView) => string | null): string | null {
    if (h.state !== 'up') return `${h.name} is down`;
    if (!h.hypervisor.available) return `${h.name} has no hypervisor (${h.hypervisor.reason ?? 'not available'})`;
    if (vm.placement.site !== undefined && h.site !== vm.placement.site)
      return `${h.name} is in site ${h.site}, not ${vm.placement.site}`;
    for (const [k, v] of Object.entries(vm.placement.labels ?? {})) {
      if (h.labels[k] !== v) return `${h.name} lacks label ${k}=${v}`;
    }
    if (h.free.cpus < vm.cpus) return `${h.name} has ${h.free.cpus} free CPUs, needs ${vm.cpus}`;
    if (h.free.memory_mib < vm.memory_mib) return `${h.name} has ${h.free.memory_mib} MiB free, needs ${vm.memory_mib}`;
    return need?.(h) ?? null;
  }

  /** The chosen host (checked), or the up host with the most free memory, then CPUs, that fits. */
  place(
    views: HostView[],
    vm: VmRecord,
    o: { host?: string; exclude?: string; need?: (h: HostView) => string | null; prefer?: string | null } = {},
  ): HostView {
    if (o.host !== undefined) {
      const h = views.find((x) => x.name === o.host);
      if (!h) throw new ApiError(404, 'not_found', `no host named ${o.host} (homewire host list)`);
      if (h.name === o.exclude)
        throw new ApiError(409, 'same_host', `vm ${vm.name} already runs on ${h.name}: pick another host`);
      const why = this.unfit(h, vm, o.need);
      if (why) throw new ApiError(409, 'no_host', `vm ${vm.name} cannot run on ${why}`);
      return h;
    }
    const reasons: string[] = [];
    const fits = views.filter((h) => {
      if (h.name === o.exclude) return false;
      const why = this.unfit(h, vm, o.need);
      if (why) reasons.push(why);
      return why === null;
    });
    // The host that keeps the VM's disk, if it fits: no copy needed.
    const preferred = o.prefer ? fits.find((h) => h.name === o.prefer) : undefined;
    if (preferred) return preferred;
    if (fits.length === 0) {
      throw new ApiError(
        409,
        'no_host',
        `no host fits vm ${vm.name} (${vm.cpus} CPUs, ${vm.memory_mib} MiB)${reasons.length ? `: ${reasons.join('; ')}` : ': no hosts registered'}`,
      );
    }
    fits.sort(
      (a, b) => b.free.memory_mib - a.free.memory_mib || b.free.cpus - a.free.cpus || a.name.localeCompare(b.name),
    );
    return fits[0];
  }
}

const LEASE_MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const LEASE_IP_RE = /^(\d{1,3})(\.\d{1,3}){3}$/;

/** A DHCP site's lease report, bounded and checked (a host is not trusted to send sane ones). */
function leaseMap(raw: unknown[]): Map<string, string> {
  const m = new Map<string, string>();
  for (const x of raw.slice(0, HEARTBEAT_LEASES_MAX)) {
    const l = x as { mac?: unknown; ip?: unknown };
    if (typeof l?.mac !== 'string' || typeof l.ip !== 'string') continue;
    if (LEASE_MAC_RE.test(l.mac) && LEASE_IP_RE.test(l.ip)) m.set(l.mac, l.ip);
  }
  return m;
}

/** An agent's mesh report, bounded and typed (a host is not trusted to send sane ones): or null. */
export function meshReport(m: unknown): MeshReport | null {
  const str = (v: unknown) => (typeof v === 'string' ? v.slice(0, 64) : null);
  if (!m || typeof m !== 'object') return null;
  const o = m as Record<string, unknown>;
  const endpoint = str(o.endpoint);
  if (endpoint === null || !Array.isArray(o.peers)) return null;
  const peers = (o.peers as unknown[]).slice(0, 64).flatMap((p) => {
    if (!p || typeof p !== 'object') return [];
    const q = p as Record<string, unknown>;
    const name = str(q.name);
    if (name === null) return [];
    const rtt = typeof q.rtt_ms === 'number' && Number.isFinite(q.rtt_ms) ? Math.max(0, q.rtt_ms) : null;
    return [{ name, endpoint: str(q.endpoint), up: q.up === true, rtt_ms: rtt }];
  });
  return { endpoint, peers };
}

// The records the coordinator keeps (also the JSON the API returns: one shape, snake_case on the wire) and the
// messages between the coordinator and host agents. Shared by the coordinator, the agent and the CLI.

export type VmState = 'defined' | 'starting' | 'running' | 'migrating' | 'stopped' | 'failed';

export interface ImageRecord {
  name: string;
  kernel: string; // http(s):// URL or absolute path on the hosts
  initrd: string;
  disk?: string;
  sha256: { kernel: string; initrd: string; disk?: string };
  /** Kernel command line (default: console=ttyS0). */
  cmdline?: string;
  created_at: string;
}

export interface VmRecord {
  name: string;
  image: string;
  cpus: number;
  memory_mib: number;
  mac: string;
  /** DHCP reservation at the home site, or null for a pool lease. */
  ip: string | null;
  state: VmState;
  /** Where it runs (starting, running, migrating: the source), or ran last (stopped, failed). */
  host: string | null;
  /** Destination while migrating. */
  target: string | null;
  /** Placement constraints for automatic placement. */
  placement: { site?: string; labels?: Record<string, string> };
  cmdline?: string;
  /** When the guest last booted (starting → running); a migration keeps it. */
  started_at?: string;
  /** Why the last operation failed (kept until the next one succeeds). */
  error: string | null;
  created_at: string;
  updated_at: string;
  /** Bumped on every write: what a client saw is what it acted on. */
  generation: number;
}

export interface Hypervisor {
  kind: string; // 'qemu', 'fake'
  available: boolean;
  accel: 'kvm' | 'tcg' | null;
  reason?: string; // why not available
}

/** What the agent says about itself at registration. */
export interface HostInfo {
  name: string;
  site: string;
  cpus: number;
  memory_mib: number;
  labels: Record<string, string>;
  hypervisor: Hypervisor;
  /** Address other hosts reach this one at for live migration (its overlay address once it has one). */
  address: string | null;
  /** TCP ports the coordinator may choose from for a migration to this host (inclusive). */
  migration_ports: [number, number] | null;
  /** The daemon's public key (base64): moves of a migrating guest's MAC are authorized to this site. */
  public_key: string | null;
  bridge: string;
  /** This site serves DHCP: it takes the coordinator's reservations. */
  dhcp: boolean;
  boot_id: string;
  version: string;
}

export interface HostRecord extends HostInfo {
  state: 'up' | 'down';
  registered_at: string;
  last_seen: string;
}

/** A host as the API shows it: the record plus what the coordinator computes. */
export interface HostView extends HostRecord {
  free: { cpus: number; memory_mib: number };
  vms: string[];
  /** From the host's last heartbeat, if its agent reports it. */
  mesh: MeshReport | null;
}

/** What a host's daemon says about its place in the mesh (heartbeats; shown by the web page). */
export interface MeshReport {
  /** The daemon's underlay address:port. */
  endpoint: string;
  /** Its peers as it sees them: where they are, whether the session is up, the round trip. */
  peers: { name: string; endpoint: string | null; up: boolean; rtt_ms: number | null }[];
}

/** VM state as the hypervisor on a host sees it. */
export type GuestState = 'running' | 'paused' | 'incoming' | 'migrated' | 'exited';

export interface GuestReport {
  name: string;
  state: GuestState;
  mac: string;
}

export interface Heartbeat {
  name: string;
  boot_id: string;
  /** Bumped by the agent whenever its set of guests changes; results carry it too (orders reports). */
  guests_version: number;
  guests: GuestReport[];
  mesh?: MeshReport;
}

/** Everything a host needs to run a VM: no lookups on the host. */
export interface LaunchSpec {
  name: string;
  mac: string;
  cpus: number;
  memory_mib: number;
  image: ImageRecord;
  /** Where the image may come from (the coordinator's image_sources): the agent checks again. */
  image_sources: string[];
}

/** A guest MAC the coordinator places on a host (heartbeat reply: the daemon's port security). */
export interface GuestMac {
  mac: string;
  ip: string | null;
  vm: string;
}

/**
 * Commands to host agents. A migration: `incoming` on the destination with the URI the coordinator built from
 * the destination's registered address and port range, `authorize-move` to the source, the destination and
 * the site serving DHCP, `expect` on the destination, then `migrate` on the source with the same URI; both
 * QEMUs get the same fresh TLS pre-shared key (64 hex digits), so the stream is encrypted and only the
 * intended destination can receive it.
 */
export type Command =
  | { id: string; type: 'start'; vm: LaunchSpec }
  | { id: string; type: 'incoming'; vm: LaunchSpec; uri: string; tls_psk: string }
  | { id: string; type: 'expect'; mac: string }
  | { id: string; type: 'authorize-move'; mac: string; site_key: string; ttl_ms: number }
  | { id: string; type: 'migrate'; name: string; uri: string; tls_psk: string }
  | { id: string; type: 'confirm'; name: string; resume?: boolean }
  | { id: string; type: 'stop'; name: string }
  /** Open a console stream for guest `name` to GET /v1/agent/console?session=...; replay from `from` if `stream` is
   *  still the guest's current one, else the whole scrollback (src/agent/console.ts). */
  | { id: string; type: 'console'; name: string; session: string; stream?: string; from?: number };

export type CommandBody = Command extends infer C ? (C extends { id: string } ? Omit<C, 'id'> : never) : never;

export interface CommandResult {
  id: string;
  ok: boolean;
  error?: string;
  /** confirm: the guest's state. */
  state?: GuestState | 'absent';
  guests_version: number;
  boot_id: string;
}

export interface DhcpReservationView {
  mac: string;
  ip: string;
  vm: string;
}

/** An API error: HTTP status, a stable code and a message that says what to do. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

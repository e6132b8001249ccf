// The records the coordinator keeps (also the JSON the API returns: one shape, snake_case on the wire) and the
// messages between the coordinator and host agents. Shared by the coordinator, the agent and the CLI.

export type VmState = 'defined' | 'starting' | 'running' | 'migrating' | 'stopped' | 'failed';

export interface ImageRecord {
  name: string;
  kernel: string; // http(s):// URL or absolute path on the hosts
  initrd: string;
  /** The read-only base of every VM's disk (VMs write to their own overlay over it). */
  disk?: string;
  sha256: { kernel: string; initrd: string; disk?: string };
  /** Kernel command line (default: console=ttyS0). */
  cmdline?: string;
  /** A warm image (homewire vm snapshot): the saved state of a running VM, resumed instead of booted. */
  warm?: WarmImage;
  created_at: string;
}

/** What must be the same on a host for a saved state to resume there. */
export interface WarmManifest {
  qemu: string; // "7.2.22"
  machine: string; // "pc-i440fx-7.2"
  cpu: string; // "max"
  accel: 'kvm' | 'tcg';
  memory_mib: number;
  cpus: number;
  /** The guest's devices, in order: "virtio-net-pci", "virtio-blk-pci". */
  devices: string[];
}

export interface WarmImage {
  /** The saved RAM and device state (a QEMU migration stream), fetched by hash from the coordinator. */
  state: { sha256: string; bytes: number };
  /** The disk overlay frozen at the same instant (over the image's base), if the VM had a disk. */
  overlay: { sha256: string; bytes: number } | null;
  /** The overlay's virtual size in GiB (null: the base's size). */
  disk_gib: number | null;
  /** The guest's MAC, in its memory: a VM resumed from this image has it (unless it is a clone). */
  mac: string;
  /** The VM it was taken from, and when. */
  source_vm: string;
  manifest: WarmManifest;
}

export interface VmRecord {
  name: string;
  image: string;
  cpus: number;
  memory_mib: number;
  mac: string;
  /** DHCP reservation at the home site, or null for a pool lease. */
  ip: string | null;
  /** In API answers and the page only (never stored): the address the DHCP-serving site leased to the MAC. */
  lease_ip?: string | null;
  state: VmState;
  /** Where it runs (starting, running, migrating: the source), or ran last (stopped, failed). */
  host: string | null;
  /** Destination while migrating. */
  target: string | null;
  /** Placement constraints for automatic placement. */
  placement: { site?: string; labels?: Record<string, string> };
  cmdline?: string;
  /** Writable disk size in GiB (null: the image's base size; absent: a VM made before disks). */
  disk_gib?: number | null;
  /** Where the VM's disk overlay lives (it stays there while the VM is stopped); null: not made yet. */
  disk_host?: string | null;
  /** Made from a warm image as a clone: its own MAC (the guest must renew its DHCP lease). */
  clone?: boolean;
  /** Its warm image has been resumed: later starts boot from the VM's own disk. */
  resumed?: boolean;
  /** When the guest last booted (starting → running); a migration keeps it. */
  started_at?: string;
  /** Why the last operation failed (kept until the next one succeeds). */
  error: string | null;
  /** What the host said about the last start (a clone must renew its DHCP lease). */
  note?: string | null;
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
  /** What a warm image must match to resume here. */
  qemu_version?: string;
  machine?: string;
  cpu?: string;
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
  /** VMs whose disk overlay this host keeps (running or not). */
  disks?: string[];
  mesh?: MeshReport;
  /** A DHCP-serving site's bound leases (the API and the page show a pool-leased VM's home IP from them). */
  leases?: { mac: string; ip: string }[];
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
  /** The VM has a writable disk (an overlay over image.disk, or empty): its size in GiB, null for the base's. */
  disk?: { gib: number | null } | null;
  /** A warm image resumed as a clone: its MAC is new (mac above), not the one in the saved memory. */
  clone?: boolean;
}

/** The NBD export a migration's destination offers for the disk mirror. */
export interface NbdTarget {
  host: string;
  port: number;
  export: string;
}

/** A stopped VM's overlay, offered by the host that has it to the host that starts the VM (cold copy). */
export interface DiskSource extends NbdTarget {
  bytes: number;
  sha256: string;
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
  | { id: string; type: 'start'; vm: LaunchSpec; disk_from?: DiskSource; tls_psk?: string }
  /** nbd_port: a VM with a disk also takes its overlay's mirror there (NBD, same address and key as uri). */
  | { id: string; type: 'incoming'; vm: LaunchSpec; uri: string; tls_psk: string; nbd_port?: number }
  | { id: string; type: 'expect'; mac: string }
  | { id: string; type: 'authorize-move'; mac: string; site_key: string; ttl_ms: number }
  | { id: string; type: 'migrate'; name: string; uri: string; tls_psk: string; nbd?: NbdTarget }
  | { id: string; type: 'confirm'; name: string; resume?: boolean; wait?: boolean }
  | { id: string; type: 'stop'; name: string; discard?: boolean }
  /** Offer a stopped VM's overlay for one copy on this host's migration address and `port` (TLS, tls_psk). */
  | { id: string; type: 'export_disk'; name: string; tls_psk: string; port: number }
  | { id: string; type: 'snapshot'; name: string; image: string }
  /** Open a console stream for guest `name` to GET /v1/agent/console?session=...; replay from `from` if `stream` is
   *  still the guest's current one, else the whole scrollback (src/agent/console.ts). */
  | { id: string; type: 'console'; name: string; session: string; stream?: string; from?: number };

export type CommandBody = Command extends infer C ? (C extends { id: string } ? Omit<C, 'id'> : never) : never;

export interface CommandResult {
  id: string;
  ok: boolean;
  error?: string;
  /** export_disk: where the overlay can be fetched (and its size and SHA-256). */
  disk?: DiskSource;
  /** snapshot: the saved state, uploaded to the coordinator's blob store. */
  warm?: Omit<WarmImage, 'disk_gib' | 'source_vm'>;
  /** Something the operator should know (a clone must renew its DHCP lease). */
  note?: string;
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

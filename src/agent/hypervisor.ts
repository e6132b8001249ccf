// The seam between the host agent and whatever runs guests: QEMU (qemu/hypervisor.ts over qemu/driver.ts) or the
// in-memory twin (lab/twins/hypervisor.ts), which tests use to run a coordinator and several hosts in one process.
//
// Contract: launch/incoming resolve once the guest exists (running, or waiting for a migration stream);
// migrate resolves when the migration completed (the local guest is then 'migrated', paused for good) and
// rejects when it failed, with the local guest running again; stop is idempotent and keeps the guest's disk
// unless told to discard it. onChange fires when a guest changes by itself (QEMU exited, an incoming migration
// landed), so the agent reports it at once. Guests outlive the agent: close() lets them run unless asked to
// stop them, and start() re-adopts what an earlier agent left running.
import type {
  DiskSource,
  GuestReport,
  GuestState,
  Hypervisor as HypervisorInfo,
  NbdTarget,
  WarmManifest,
} from '../coordinator/types.ts';

export type { DiskSource, NbdTarget };
import type { GuestConsole } from './console.ts';

export interface GuestSpec {
  name: string;
  mac: string;
  cpus: number;
  memoryMib: number;
  kernel: string; // local paths (from the image cache)
  initrd: string;
  /** The VM's writable disk: a qcow2 overlay over base (a local path in the image cache), or an empty one. */
  disk?: { base: { file: string; format: 'qcow2' | 'raw' } | null; gib: number | null };
  /** Resume a warm image instead of booting: its saved state and frozen overlay (local paths). */
  warm?: { state: string; overlay: string | null; manifest: WarmManifest; clone: boolean };
  /** Kernel command line after console=ttyS0. */
  cmdline: string;
  /** The bridge the guest's TAP joins (the daemon's tap.bridge). */
  bridge: string;
}

/**
 * One migration's channel, from the coordinator (checked by the agent): `tcp:IP:PORT` on the destination's
 * migration address, and the TLS pre-shared key both ends use (64 hex digits), so the stream is encrypted
 * and only a destination holding the key can receive it. With a disk, `nbd` is the destination's NBD export of
 * its overlay (incoming: the port to serve it on, on uri's address; migrate: where the source mirrors to),
 * under the same key.
 */
export interface MigrationChannel {
  uri: string;
  tlsPsk: string;
  nbd?: NbdTarget;
}

export interface SnapshotFiles {
  /** Local files (the caller moves them into its cache and publishes them). */
  state: string;
  overlay: string | null;
  manifest: WarmManifest;
  pauseMs: number;
}

export interface AdoptReport {
  adopted: string[];
  /** Guests whose QEMU had died meanwhile (reported as exited: their VMs fail). */
  dead: string[];
  /** Operations found half-done and settled (resumed or rolled back). */
  settled: string[];
}

export interface Hypervisor {
  readonly info: HypervisorInfo;
  /** Re-adopts the guests an earlier agent left running (before the first heartbeat). */
  start?(): Promise<AdoptReport>;
  /** Boots (or resumes a warm image); with diskFrom, copies the VM's overlay from another host first. */
  launch(spec: GuestSpec, o?: { diskFrom?: DiskSource; psk?: string }): Promise<{ note?: string } | undefined>;
  /** A guest that waits for a migration stream at `m.uri` (and its disk's mirror at `m.nbd`), TLS with `m.tlsPsk`. */
  incoming(spec: GuestSpec, m: MigrationChannel): Promise<void>;
  /** Sends the guest (and its disk, to `m.nbd`) to `m.uri` over TLS keyed with `m.tlsPsk`. */
  migrate(name: string, m: MigrationChannel): Promise<void>;
  state(name: string): Promise<GuestState | 'absent'>;
  /** Continues a paused guest (one whose migration was cancelled or completed but not taken over). */
  resume(name: string): Promise<void>;
  /** Stops the guest; its disk stays on this host unless discard (deleted, moved away, or never ran here). */
  stop(name: string, o?: { discard?: boolean }): Promise<void>;
  /** Offers a stopped VM's overlay to another host (one copy, TLS with psk). */
  exportDisk?(name: string, address: string, port: number, psk: string): Promise<DiskSource>;
  /** Saves a running guest's memory and disk at one instant (it keeps running). */
  snapshot?(name: string): Promise<SnapshotFiles>;
  /** VMs whose disk this host keeps. */
  disks?(): string[];
  list(): GuestReport[];
  /** The guest's serial console (scrollback and fan-out), or null if there is no such guest or no console. */
  console?(name: string): GuestConsole | null;
  /** Brings the states list() returns up to date (QEMU: query-status of each guest); before heartbeats. */
  refresh?(): Promise<void>;
  onChange: (() => void) | null;
  /** Lets go of the guests (they keep running) or, with stopGuests, stops them; releases what it holds. */
  close(o?: { stopGuests?: boolean }): Promise<void>;
}

// The seam between the host agent and whatever runs guests: QEMU (qemu/hypervisor.ts over qemu/driver.ts) or the
// in-memory twin (lab/twins/hypervisor.ts), which tests use to run a coordinator and several hosts in one process.
//
// Contract: launch/incoming resolve once the guest exists (running, or waiting for a migration stream);
// migrate resolves when the migration completed (the local guest is then 'migrated', paused for good) and
// rejects when it failed, with the local guest running again; stop is idempotent. onChange fires when a
// guest changes by itself (QEMU exited), so the agent reports it at once.
import type { GuestReport, GuestState, Hypervisor as HypervisorInfo } from '../coordinator/types.ts';
import type { GuestConsole } from './console.ts';

export interface GuestSpec {
  name: string;
  mac: string;
  cpus: number;
  memoryMib: number;
  kernel: string; // local paths (from the image cache)
  initrd: string;
  disk?: string; // attached read-only: the same bytes on every host, so migration needs no block copy
  /** Kernel command line after console=ttyS0. */
  cmdline: string;
  /** The bridge the guest's TAP joins (the daemon's tap.bridge). */
  bridge: string;
}

/**
 * One migration's channel, from the coordinator (checked by the agent): `tcp:IP:PORT` on the destination's
 * migration address, and the TLS pre-shared key both ends use (64 hex digits), so the stream is encrypted
 * and only a destination holding the key can receive it.
 */
export interface MigrationChannel {
  uri: string;
  tlsPsk: string;
}

export interface Hypervisor {
  readonly info: HypervisorInfo;
  launch(spec: GuestSpec): Promise<void>;
  /** A guest that waits for a migration stream at `m.uri`, accepting only a TLS session keyed with `m.tlsPsk`. */
  incoming(spec: GuestSpec, m: MigrationChannel): Promise<void>;
  /** Sends the guest to `m.uri` over TLS keyed with `m.tlsPsk`. */
  migrate(name: string, m: MigrationChannel): Promise<void>;
  state(name: string): Promise<GuestState | 'absent'>;
  /** Continues a paused guest (one whose migration was cancelled or completed but not taken over). */
  resume(name: string): Promise<void>;
  stop(name: string): Promise<void>;
  list(): GuestReport[];
  /** The guest's serial console (scrollback and fan-out), or null if there is no such guest or no console. */
  console?(name: string): GuestConsole | null;
  /** Brings the states list() returns up to date (QEMU: query-status of each guest); before heartbeats. */
  refresh?(): Promise<void>;
  onChange: (() => void) | null;
  /** Stops every guest and releases what the hypervisor holds. */
  close(): Promise<void>;
}

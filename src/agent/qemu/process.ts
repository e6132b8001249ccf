// A QEMU process as the agent holds it: either a child it spawned, or one it re-adopted after a restart (a
// pid it did not fork, so no 'exit' event: it watches /proc and the QMP connection instead).
//
// Identity: a pid alone is not a process (pids are reused), so a process is named by its pid AND its start
// time (field 22 of /proc/PID/stat, clock ticks since boot) AND the boot it belongs to
// (/proc/sys/kernel/random/boot_id). runtime.json records all three; an adoption that finds another start
// time, or another boot, is a different process and is never touched.
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { hasExited } from '../../proc.ts';

/** How often an adopted process is checked for having exited (QMP closing usually tells first). */
const ADOPTED_POLL_MS = 500;

export interface QemuProcess {
  readonly pid: number;
  readonly running: boolean;
  /** Resolves when the process has exited. */
  readonly exited: Promise<void>;
  kill(signal: NodeJS.Signals): void;
}

/** Start time of a live, non-zombie process (clock ticks since boot), or null. */
export function procStartTime(pid: number): number | null {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  if (fields[0] === 'Z' || fields[0] === 'X') return null;
  const start = Number(fields[19]); // field 22 overall; fields[0] is field 3
  return Number.isFinite(start) ? start : null;
}

/** This boot's id: pids and start times mean nothing across a reboot. */
export function bootId(): string {
  try {
    return fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

/** The argv of a live process (from /proc/PID/cmdline), or null. */
export function procArgv(pid: number): string[] | null {
  try {
    const raw = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return raw.split('\0').slice(0, -1);
  } catch {
    return null;
  }
}

/** A QEMU this agent spawned. */
export class ChildQemu implements QemuProcess {
  readonly exited: Promise<void>;
  constructor(readonly child: ChildProcess) {
    this.exited = new Promise((r) => {
      if (hasExited(child)) r();
      else child.once('exit', () => r());
    });
  }
  get pid(): number {
    return this.child.pid ?? -1;
  }
  get running(): boolean {
    return !hasExited(this.child);
  }
  kill(signal: NodeJS.Signals): void {
    try {
      if (this.running) this.child.kill(signal);
    } catch {
      /* gone */
    }
  }
}

/** A QEMU an earlier agent spawned: known by pid and start time; polled, since it is not our child. */
export class AdoptedQemu implements QemuProcess {
  readonly exited: Promise<void>;
  private gone = false;
  private timer: NodeJS.Timeout | null = null;
  private resolve!: () => void;

  constructor(
    readonly pid: number,
    readonly startTime: number,
  ) {
    this.exited = new Promise((r) => {
      this.resolve = r;
    });
    this.timer = setInterval(() => this.check(), ADOPTED_POLL_MS);
    this.timer.unref();
    this.check();
  }

  /** Looks at /proc now (also called when QMP closes, so an exit is seen at once). */
  check(): boolean {
    if (this.gone) return false;
    if (procStartTime(this.pid) !== this.startTime) {
      this.gone = true;
      if (this.timer) clearInterval(this.timer);
      this.resolve();
      return false;
    }
    return true;
  }

  get running(): boolean {
    return this.check();
  }

  kill(signal: NodeJS.Signals): void {
    // Only the process we adopted: a pid whose start time changed belongs to someone else now.
    if (!this.check()) return;
    try {
      process.kill(this.pid, signal);
    } catch {
      /* gone */
    }
  }

  /** Stops watching (the agent is shutting down and leaves the guest running). */
  release(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}

// What every overlay in the side-by-side bench provides: the tools it needs (checked before anything is built,
// each with what to install), a one-time preparation (keys, certificates), and up(): both daemons started in
// the bed, the inner addresses on their interfaces, and traffic passing between the inner addresses.
import type { ChildProcess } from 'node:child_process';
import { hasProgram } from '../../lab/netns.ts';
import { run, sleep } from '../../lab/run.ts';
import { type Bed, PLAN, SIDES, type Side, tail } from './bed.ts';

export type OverlayId = 'homewire' | 'tinc' | 'nebula' | 'wireguard-go';
export const OVERLAY_IDS: readonly OverlayId[] = ['homewire', 'tinc', 'nebula', 'wireguard-go'];

export interface Requirement {
  /** What is missing, as the user would look for it (a program, a file). */
  what: string;
  present: () => boolean;
  /** What to run to get it. */
  install: string;
}

export function program(name: string, install: string): Requirement {
  return { what: `${name} (on PATH)`, present: () => hasProgram(name), install };
}

export interface Running {
  daemons: Record<Side, ChildProcess>;
  logs: Record<Side, string>;
  /** The overlay's interface in each namespace (carrying the inner address). */
  ifname: Record<Side, string>;
  /** MTU of the overlay interface (the largest inner IP packet). */
  mtu: number;
  /** UDP port of the encrypted traffic on the underlay. */
  underlayPort: number;
  /** Overlay-specific facts worth keeping in the JSON (cipher, discovered path MTU...). */
  facts: Record<string, unknown>;
}

export interface Overlay {
  id: OverlayId;
  /** Column heading of the table. */
  label: string;
  requirements(): Requirement[];
  /** The version string the tool prints (for the JSON). */
  version(): Promise<string>;
  /** Keys, certificates, configs: once per bench, reused by every run. */
  prepare(bed: Bed): Promise<void>;
  /** Starts both daemons and returns once inner traffic passes (and anything the overlay must settle has). */
  up(bed: Bed): Promise<Running>;
  /** Overlay-specific cleanup after its daemons are gone (files outside the bed's directory). */
  afterDown?(bed: Bed): void;
}

/** Pings the other side's inner address once per try until it answers; throws with both logs if it never does. */
export async function waitReachable(
  bed: Bed,
  r: Pick<Running, 'daemons' | 'logs'>,
  timeoutMs: number,
): Promise<number> {
  const started = Date.now();
  for (;;) {
    for (const s of SIDES) {
      const d = r.daemons[s];
      if (d.exitCode !== null || d.signalCode !== null) {
        throw new Error(
          `the daemon in ${PLAN[s].ns} exited (${d.signalCode ?? `code ${d.exitCode}`}) before traffic passed:\n${tail(r.logs[s])}`,
        );
      }
    }
    const p = await bed.exec('a', ['ping', '-n', '-q', '-c', '1', '-W', '1', PLAN.b.inner]);
    if (p.code === 0) return Date.now() - started;
    if (Date.now() - started > timeoutMs) {
      throw new Error(
        `no ping from ${PLAN.a.inner} to ${PLAN.b.inner} through the overlay after ${timeoutMs} ms\n` +
          SIDES.map((s) => `--- ${PLAN[s].ns} ---\n${tail(r.logs[s])}`).join('\n'),
      );
    }
    await sleep(100);
  }
}

/** First line of a program's version output (stdout or stderr: tools disagree). */
export async function versionOf(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args, { timeoutMs: 5000 });
  return (r.stdout.trim() || r.stderr.trim()).split('\n')[0] ?? 'unknown';
}

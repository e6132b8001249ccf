// Stopping child processes (QEMU guests here; the lab's daemons and tools too): one shape everywhere.
import type { ChildProcess } from 'node:child_process';

/** Whether a child has exited (or was killed by a signal). */
export function hasExited(p: ChildProcess): boolean {
  return p.exitCode !== null || p.signalCode !== null;
}

/** Resolves when the child has exited (at once if it already has). */
export function exited(p: ChildProcess): Promise<void> {
  return new Promise((resolve) => (hasExited(p) ? resolve() : p.once('exit', () => resolve())));
}

/**
 * Sends `signal` (default SIGTERM), waits up to graceMs for the child to exit, then SIGKILLs it and waits for
 * that. Never throws; `killed` says whether SIGKILL was needed.
 */
export async function stopChild(
  p: ChildProcess,
  o: { signal?: NodeJS.Signals; graceMs?: number } = {},
): Promise<{ killed: boolean; ms: number }> {
  const started = Date.now();
  if (hasExited(p)) return { killed: false, ms: 0 };
  const gone = exited(p);
  signalChild(p, o.signal ?? 'SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const inTime = await Promise.race([
    gone.then(() => true),
    new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), o.graceMs ?? 2000);
    }),
  ]);
  clearTimeout(timer);
  const ms = Date.now() - started;
  if (!inTime) {
    signalChild(p, 'SIGKILL');
    await gone;
  }
  return { killed: !inTime, ms };
}

/** kill() that never throws (the child may be gone already). */
export function signalChild(p: ChildProcess, signal: NodeJS.Signals): void {
  try {
    if (!hasExited(p)) p.kill(signal);
  } catch {
    /* gone */
  }
}

// Namespace housekeeping for the lab: deleting namespaces by prefix (ending what still runs inside them),
// and tearing labs down when the process exits or is signalled. Prefixes must look like "hw...-" so a
// mistake can never delete someone else's namespaces.
import fs from 'node:fs';
import { run, runOk, type RunResult, runSync, sleep } from './run.ts';

export const PREFIX_RE = /^hw[a-z0-9]{0,12}-$/;

export function ip(...args: string[]): Promise<RunResult> {
  return runOk('ip', args);
}

/** `ip -n NS ...`, throwing on failure. */
export function ipn(ns: string, ...args: string[]): Promise<RunResult> {
  return runOk('ip', ['-n', ns, ...args]);
}

/** Whether a program is on PATH (tcpdump is optional). */
export function hasProgram(name: string): boolean {
  return runSync('sh', ['-c', `command -v ${name}`]).code === 0;
}

/** Alive and not a zombie (a child not yet reaped still answers kill 0). */
export function running(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

function namespacesWith(prefix: string, listing: string): string[] {
  return listing
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0])
    .filter((n) => n?.startsWith(prefix));
}

/** Deletes every namespace whose name starts with prefix, first ending the processes left inside them. */
export async function deleteNamespaces(prefix: string): Promise<void> {
  if (!PREFIX_RE.test(prefix)) throw new Error(`refusing to delete namespaces by prefix "${prefix}"`);
  const names = namespacesWith(prefix, (await run('ip', ['netns', 'list'])).stdout);
  await endProcessesIn(names);
  for (const ns of names) await run('ip', ['netns', 'del', ns]);
  removeNetnsEtc(prefix);
}

/** /etc/netns/<ns>/ holds files `ip netns exec` bind-mounts over /etc (a lab's per-namespace hosts file). */
export const NETNS_ETC = '/etc/netns';

/** Removes /etc/netns/<prefix>* (what a lab wrote there for its namespaces). */
function removeNetnsEtc(prefix: string): void {
  if (!PREFIX_RE.test(prefix) || !fs.existsSync(NETNS_ETC)) return;
  for (const name of fs.readdirSync(NETNS_ETC)) {
    if (name.startsWith(prefix)) fs.rmSync(`${NETNS_ETC}/${name}`, { recursive: true, force: true });
  }
}

export function deleteNamespacesSync(prefix: string): void {
  if (!PREFIX_RE.test(prefix)) return;
  const names = namespacesWith(prefix, runSync('ip', ['netns', 'list']).stdout);
  const pids = names.flatMap((ns) => pidsIn(runSync('ip', ['netns', 'pids', ns]).stdout));
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  for (const ns of names) runSync('ip', ['netns', 'del', ns]);
  removeNetnsEtc(prefix);
}

/** Processes still inside the lab's namespaces (left by a crashed earlier run): SIGTERM, then SIGKILL. */
async function endProcessesIn(names: string[]): Promise<void> {
  const list = async () =>
    (await Promise.all(names.map((ns) => run('ip', ['netns', 'pids', ns])))).flatMap((r) => pidsIn(r.stdout));
  let pids = await list();
  if (pids.length === 0) return;
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      /* gone */
    }
  }
  for (let i = 0; i < 40 && pids.length > 0; i++) {
    await sleep(50);
    pids = (await list()).filter(running);
  }
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

function pidsIn(text: string): number[] {
  return text
    .split('\n')
    .map(Number)
    .filter((n) => Number.isInteger(n) && n > 1 && n !== process.pid);
}

export interface Teardown {
  destroy(): Promise<void>;
  destroySync(): void;
}

const live = new Set<Teardown>();
let hooked = false;

/** Tears `t` down on normal exit, on SIGINT/SIGTERM/SIGHUP, and on an uncaught error, until released. */
export function tearDownOnExit(t: Teardown): void {
  live.add(t);
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const x of [...live]) x.destroySync();
  });
  let signalled = false;
  for (const [sig, num] of [
    ['SIGINT', 2],
    ['SIGTERM', 15],
    ['SIGHUP', 1],
  ] as const) {
    process.on(sig, () => {
      if (signalled) process.exit(128 + num); // a second Ctrl-C: the exit hook still cleans up
      signalled = true;
      Promise.all([...live].map((x) => x.destroy())).finally(() => process.exit(128 + num));
    });
  }
}

export function releaseOnExit(t: Teardown): void {
  live.delete(t);
}

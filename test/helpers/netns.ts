// Namespace tests: a lab per test with its own random prefix, torn down by t.teardown even on failure.
// They need root, iproute2, ping, iperf3 and the built TAP addon; without them they fail, saying why.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { deleteNamespaces, hasProgram, Lab, type LabOptions, PROJECT_ROOT } from '../../lab/topology.ts';

/** Why the namespace tests cannot run here, or null if they can. */
export const netnsSkipReason: string | null = (() => {
  if (process.platform !== 'linux') return 'namespace tests run on Linux only';
  if (process.getuid?.() !== 0) return 'namespace tests need root (sudo npx ava test/netns-*.test.ts)';
  for (const p of ['ip', 'ping', 'iperf3'])
    if (!hasProgram(p)) return `namespace tests need ${p} (apt-get install iproute2 iputils-ping iperf3)`;
  if (!fs.existsSync(path.join(PROJECT_ROOT, 'build/Release/homewire_tap.node')))
    return 'the TAP addon is not built (npm run build)';
  return null;
})();

/** test.serial; when the lab cannot run here, the test fails saying why (the suite needs root and tools). */
export const netnsTest: typeof test.serial = (
  netnsSkipReason ? (title: string) => test.serial(title, (t) => t.fail(`cannot run: ${netnsSkipReason}`)) : test.serial
) as typeof test.serial;

export function newPrefix(): string {
  return `hwt${crypto.randomBytes(2).toString('hex')}-`;
}

/** Builds a lab with a fresh prefix; teardown destroys it (or whatever part of it was made). */
export async function labFor(t: ExecutionContext, opts: Omit<LabOptions, 'prefix'> = {}): Promise<Lab> {
  const prefix = newPrefix();
  let lab: Lab | null = null;
  t.teardown(async () => {
    if (lab) await lab.destroy();
    else await deleteNamespaces(prefix);
  });
  lab = await Lab.create({ ...opts, prefix });
  return lab;
}

/** A ping summary for assertion messages. */
export function pingText(p: {
  transmitted: number;
  received: number;
  lossPct: number;
  rtt: { avg: number } | null;
}): string {
  return `${p.received}/${p.transmitted} received, ${p.lossPct}% loss${p.rtt ? `, rtt avg ${p.rtt.avg} ms` : ''}`;
}

// Namespace tests: a lab per test with its own random prefix, torn down by t.teardown even on failure.
// They need root, iproute2, ping, iperf3 and the built TAP addon; without them they fail, saying why.
import crypto from 'node:crypto';
import type { ExecutionContext } from 'ava';
import { deleteNamespaces, Lab, type LabOptions } from '../../lab/topology.ts';
import { missingFor, testIf } from './prereq.ts';

/** Why the namespace tests cannot run here, or null if they can. */
export const netnsSkipReason: string | null = missingFor({
  root: true,
  programs: { ip: 'iproute2', ping: 'iputils-ping', iperf3: 'iperf3' },
  addon: true,
});

/** test.serial; when the lab cannot run here, the test fails saying why and what to install. */
export const netnsTest = testIf(netnsSkipReason);

export function newPrefix(tag = 'hwt'): string {
  return `${tag}${crypto.randomBytes(2).toString('hex')}-`;
}

/** Builds a lab with a fresh prefix (`tag` and 4 hex digits); teardown destroys it (or whatever part of it was
 *  made). */
export async function labFor(t: ExecutionContext, opts: Omit<LabOptions, 'prefix'> = {}, tag = 'hwt'): Promise<Lab> {
  const prefix = newPrefix(tag);
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

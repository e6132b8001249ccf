// QEMU lab tests: a lab per test with its own hwv prefix; teardown stops the guests and deletes the namespaces
// even on failure. Without root or the tools a test fails saying why (CI must install them).
import type { ExecutionContext } from 'ava';
import { buildGuestImage } from '../../lab/guest-image.ts';
import { deleteNamespaces, Lab, type LabOptions } from '../../lab/topology.ts';
import { LabGuests, vmPrefix, vmSkipReason } from '../../lab/vm/guests.ts';
import { testIf } from './prereq.ts';

/** test.serial; when QEMU guests cannot run here, the test fails saying why and what to install. */
export const vmTest = testIf(vmSkipReason());

export async function vmLab(
  t: ExecutionContext,
  opts: Omit<LabOptions, 'prefix'> & { prefix?: string },
): Promise<{ lab: Lab; guests: () => LabGuests }> {
  const prefix = opts.prefix ?? vmPrefix();
  let lab: Lab | null = null;
  let guests: LabGuests | null = null;
  t.teardown(async () => {
    await guests?.stopAll();
    if (lab) await lab.destroy();
    else await deleteNamespaces(prefix);
  });
  lab = await Lab.create({ ...opts, prefix });
  const l = lab;
  return { lab, guests: () => (guests ??= new LabGuests(l, buildGuestImage({ log: (m) => t.log(m) }))) };
}

// QEMU lab tests: a lab per test with its own hwv prefix; teardown stops the guests and deletes the namespaces
// even on failure. Without root or the tools a test fails saying why (CI must install them).
import test, { type ExecutionContext } from 'ava';
import { buildGuestImage } from '../../lab/guest-image.ts';
import { deleteNamespaces, Lab, type LabOptions } from '../../lab/topology.ts';
import { LabGuests, vmPrefix, vmSkipReason } from '../../lab/vm/guests.ts';

const skip = vmSkipReason();

export const vmTest = (
  skip ? (title: string) => test.serial(title, (t) => t.fail(`cannot run: ${skip}`)) : test.serial
) as typeof test.serial;

export async function vmLab(
  t: ExecutionContext,
  opts: Omit<LabOptions, 'prefix'>,
): Promise<{ lab: Lab; guests: () => LabGuests }> {
  const prefix = vmPrefix();
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

// What the coordinator decides about a VM's state beyond its RAM: its writable disk (where the overlay lives,
// whether a start must copy it first) and warm images (which hosts can resume a saved state, which MAC a VM
// made from one gets). The operations in vms.ts call these; the hosts do the work (src/agent/qemu/).
import { ApiError, type HostView, type ImageRecord, type LaunchSpec, type VmRecord } from './types.ts';

/** Whether the VM has a writable disk: the image has a base, a size was asked for, or a warm image had one. */
export function hasDisk(vm: VmRecord, image: ImageRecord): boolean {
  return image.disk !== undefined || (vm.disk_gib ?? null) !== null || (image.warm?.overlay ?? null) !== null;
}

/** A warm image's saved state is used once: the VM's first start resumes it, later starts boot its own disk. */
export function resumesWarm(vm: VmRecord, image: ImageRecord): boolean {
  return image.warm !== undefined && !vm.resumed;
}

/** Everything a host needs to run the VM (image_sources: where the host may fetch the image from). */
export function launchSpec(vm: VmRecord, image: ImageRecord, imageSources: string[]): LaunchSpec {
  let img = vm.cmdline ? { ...image, cmdline: vm.cmdline } : image;
  if (img.warm && !resumesWarm(vm, image)) {
    const { warm: _, ...cold } = img;
    img = cold;
  }
  return {
    name: vm.name,
    mac: vm.mac,
    cpus: vm.cpus,
    memory_mib: vm.memory_mib,
    image: img,
    image_sources: imageSources,
    ...(hasDisk(vm, image) ? { disk: { gib: vm.disk_gib ?? null } } : {}),
    ...(vm.clone ? { clone: true } : {}),
  };
}

/** Why host h cannot resume the VM's warm image (its QEMU differs from the manifest), or null. */
export function warmUnfit(h: HostView, vm: VmRecord, image: ImageRecord): string | null {
  if (!resumesWarm(vm, image)) return null;
  const m = image.warm!.manifest;
  const hv = h.hypervisor;
  const diffs: string[] = [];
  if (hv.qemu_version !== m.qemu) diffs.push(`QEMU ${hv.qemu_version ?? 'unknown'}, not ${m.qemu}`);
  if (hv.machine !== m.machine) diffs.push(`machine ${hv.machine ?? 'unknown'}, not ${m.machine}`);
  if (hv.cpu !== m.cpu) diffs.push(`CPU model ${hv.cpu ?? 'unknown'}, not ${m.cpu}`);
  if (hv.accel !== m.accel) diffs.push(`accelerator ${hv.accel ?? 'none'}, not ${m.accel}`);
  return diffs.length ? `${h.name}, which cannot resume warm image ${image.name}: it has ${diffs.join(', ')}` : null;
}

/** The fields a create request fills from a warm image (memory, CPUs and MAC are in the saved state). */
export function warmCreate(
  image: ImageRecord,
  req: { memoryMib: number; cpus: number; mac?: string; clone?: boolean; diskGib?: number },
  given: { memory: boolean; cpus: boolean },
): { memoryMib: number; cpus: number; mac: string | undefined; diskGib: number | null } {
  const w = image.warm!;
  const m = w.manifest;
  if (given.memory && req.memoryMib !== m.memory_mib)
    throw new ApiError(
      400,
      'bad_request',
      `warm image ${image.name} was saved with ${m.memory_mib} MiB: leave memory_mib out`,
    );
  if (given.cpus && req.cpus !== m.cpus)
    throw new ApiError(400, 'bad_request', `warm image ${image.name} was saved with ${m.cpus} CPUs: leave cpus out`);
  if (req.diskGib !== undefined && req.diskGib !== w.disk_gib)
    throw new ApiError(400, 'bad_request', `warm image ${image.name} has its disk's size: leave disk_gib out`);
  if (!req.clone && req.mac !== undefined && req.mac !== w.mac)
    throw new ApiError(
      400,
      'bad_request',
      `a VM resumed from warm image ${image.name} has the MAC in its memory (${w.mac}); for another MAC create a clone`,
    );
  return {
    memoryMib: m.memory_mib,
    cpus: m.cpus,
    mac: req.clone ? req.mac : w.mac,
    diskGib: w.disk_gib,
  };
}

/** One guest per MAC: a warm image (not cloned) resumes as one VM at a time. */
export function checkOneAtATime(vm: VmRecord, vms: VmRecord[]): void {
  const other = vms.find(
    (v) =>
      v.name !== vm.name &&
      v.mac === vm.mac &&
      (v.state === 'starting' || v.state === 'running' || v.state === 'migrating'),
  );
  if (other)
    throw new ApiError(
      409,
      'mac_in_use',
      `vm ${other.name} runs with the same MAC ${vm.mac} (the same saved guest): stop it first, or create a clone (--clone) to run both`,
    );
}

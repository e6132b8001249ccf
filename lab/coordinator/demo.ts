// The demo's `--vms` part (lab/demo.ts): the lifecycle coordinator on the lab, driving real QEMU guests.
// Needs a lab made with vmSiteConfig({ dhcp: true }) and QEMU installed (vmSkipReason in lab/vm/guests.ts).
// Prints each command as a person would type it, then what came back. Returns false if a step failed.
import fs from 'node:fs';
import { buildGuestImage } from '../guest-image.ts';
import { sleep } from '../run.ts';
import type { Lab } from '../topology.ts';
import { parseLease } from '../vm/guests.ts';
import { replyGaps, startPing } from '../vm/measure.ts';
import { GridLab, LAB_COORDINATOR } from './grid.ts';
import type { VmRecord } from '../../src/coordinator/types.ts';

export async function runVmDemo(lab: Lab, say: (s?: string) => void): Promise<boolean> {
  const indent = (text: string) =>
    text
      .trimEnd()
      .split('\n')
      .map((l) => `     ${l}`)
      .join('\n');
  say('   Building the guest image (Debian kernel + busybox initramfs; cached after the first run)…');
  const image = buildGuestImage();
  const grid = await GridLab.start(lab, image, { logLevel: 'info' });
  say(
    `   Coordinator at ${LAB_COORDINATOR} (underlay namespace); a host agent beside the daemon on ${grid.hosts.join(', ')}.`,
  );
  for (const h of grid.hosts) say(`   $ homewire host add ${h} > ${h}.token      # each host its own token`);
  say('   $ homewire host add home > home.token          # home joins too, without VMs: it hears of every move');
  say('   (QEMU runs under -sandbox as an unprivileged user; migrations are TLS with a key per migration.)');
  const run = async (...argv: string[]) => {
    say(`   $ homewire ${argv.join(' ')}`);
    const out = await grid.ok(...argv);
    say(indent(out));
    return out;
  };
  try {
    await run('host', 'list');
    await grid.addImage('tiny');
    say(
      '   $ homewire image add tiny --kernel http://192.0.2.254:8080/vmlinux --initrd http://192.0.2.254:8080/initrd.cpio.gz …',
    );
    await run('vm', 'create', 'demo-vm', '--image', 'tiny', '--memory', '128');
    const [first, second] = grid.hosts;
    await run('vm', 'start', 'demo-vm', '--host', first);
    const serial = grid.serialLog(first, 'demo-vm');
    let lease = null;
    for (let i = 0; i < 600 && !lease; i++) {
      const text = fs.existsSync(serial) ? fs.readFileSync(serial, 'utf8') : '';
      lease = text.includes('HOMEWIRE-READY') ? parseLease(text) : null;
      if (!lease) await sleep(100);
    }
    if (!lease) {
      say('   the guest got no DHCP lease within 60 s');
      return false;
    }
    say(`   The guest booted on ${first} and leased ${lease.ip} from the home DHCP server ${lease.server}.`);
    const ping = startPing(lab, 'lan', lease.ip, 0.01);
    await sleep(1000);
    await run('vm', 'migrate', 'demo-vm', '--to', second);
    await sleep(1500);
    const trace = await ping.stop();
    const gap = replyGaps(trace)[0]?.ms ?? NaN;
    say(
      `   The LAN host pinged it every 10 ms throughout: ${trace.replies.length} replies, ${trace.lost} lost, largest gap ${gap.toFixed(0)} ms.`,
    );
    await run('vm', 'list');
    await run('vm', 'stop', 'demo-vm');
    await run('vm', 'delete', 'demo-vm');
    const vms = await grid.json<{ vms: VmRecord[] }>('vm', 'list');
    return trace.replies.length > 0 && vms.vms.length === 0;
  } catch (err) {
    say(`   ${(err as Error).message.split('\n')[0]}`);
    return false;
  }
}

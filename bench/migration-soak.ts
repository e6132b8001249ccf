// Migration soak: one lab guest live-migrates back and forth between host-a and host-b while the LAN host pings
// it every 10 ms; after each move: does the guest still answer, and did its kernel panic? A slow migration
// (--bandwidth-mbs) widens the window in which QEMU < 9.0 under TCG loses guest writes (README, Limitations).
//   sudo node --import tsx bench/migration-soak.ts [--moves 10] [--bandwidth-mbs 15]
// Reports; never fails for what it finds.
import { parseArgs } from 'node:util';
import { buildGuestImage } from '../lab/guest-image.ts';
import { sleep } from '../lab/run.ts';
import { HOMEWIRE_BIN, Lab } from '../lab/topology.ts';
import { LabGuests, MIGRATION_PORT, vmSiteConfig } from '../lab/vm/guests.ts';
import { startPing } from '../lab/vm/measure.ts';
import { guestMac } from '../src/agent/qemu/driver.ts';

const { values } = parseArgs({
  options: { moves: { type: 'string', default: '10' }, 'bandwidth-mbs': { type: 'string', default: '15' } },
});
const moves = Number(values.moves);
const bandwidth = Number(values['bandwidth-mbs']) * 1e6;
const lab = await Lab.create({ prefix: 'hwsoak-', siteConfig: vmSiteConfig({ dhcp: true }) });
const guests = new LabGuests(lab, buildGuestImage({ log: () => {} }));
let clean = 0;
try {
  const mac = guestMac(0x5a5a);
  let { vm, lease } = await guests.boot('host-a', { mac });
  let at = 'host-a';
  for (let i = 0; i < moves; i++) {
    const to = at === 'host-a' ? 'host-b' : 'host-a';
    const dst = await guests.incoming(to, vm, MIGRATION_PORT + i);
    const ping = startPing(lab, 'lan', lease.ip, 0.01);
    await sleep(500);
    await lab.authorizeMove(mac, to);
    await lab.exec(to, [process.execPath, HOMEWIRE_BIN, 'expect', '--config', lab.site(to).configFile, '--mac', mac]);
    const r = await vm.migrate(dst.uri, { maxBandwidthBytes: bandwidth || undefined });
    await dst.vm.waitRunning(20_000);
    await sleep(1500);
    await ping.stop();
    const after = await lab.ping('lan', lease.ip, { count: 5, intervalS: 0.1 });
    const serial = dst.vm.serial();
    const panic = /Kernel panic|BUG:|Oops|not a head/.test(serial);
    const ok = after.received >= 3 && !panic;
    if (ok) clean++;
    console.log(
      `${i + 1} ${at} → ${to}: ${r.totalTimeMs} ms (downtime ${r.downtimeMs} ms); pings after it ${after.received}/5; guest kernel ${panic ? 'PANICKED' : 'fine'}`,
    );
    if (panic)
      console.log(
        serial.slice(Math.max(0, serial.search(/BUG:|Oops|invalid opcode|general protection/))).slice(0, 1500),
      );
    await vm.stop();
    vm = dst.vm;
    at = to;
    if (!ok) break;
  }
} finally {
  await guests.stopAll();
  await lab.destroy();
}
console.log(`${clean} clean moves of ${moves} at ${values['bandwidth-mbs']} MB/s`);

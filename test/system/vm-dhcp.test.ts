// A real QEMU guest (TCG) on host-a gets its address from homewire's DHCP server at home, over the encrypted
// overlay, and the LAN host at home reaches it (issue 3). Needs root, QEMU and the guest image packages (see
// lab/vm/guests.ts vmSkipReason); the guest image is built once and cached (lab/guest-image.ts).
import { parsePing } from '../../lab/run.ts';
import { HOMEWIRE_BIN, PLAN } from '../../lab/topology.ts';
import { vmSiteConfig } from '../../lab/vm/guests.ts';
import { guestMac } from '../../src/agent/qemu/driver.ts';
import { vmLab, vmTest } from '../helpers/vm.ts';

const ipNum = (ip: string) => ip.split('.').reduce((a, o) => a * 256 + Number(o), 0);

vmTest(
  'a QEMU guest on host-a gets a lease from home over the overlay, inside the pool, and the LAN host pings it',
  async (t) => {
    t.timeout(180_000);
    const { lab, guests } = await vmLab(t, { siteConfig: vmSiteConfig({ dhcp: true }) });
    const mac = guestMac(0xd1c9);
    const { vm, lease, bootMs } = await guests().boot('host-a', { mac });
    t.log(
      `guest ${mac} booted (${lab.tapMtu}-byte TAP MTU) and leased ${lease.ip}/${lease.mask} from ${lease.server} in ${bootMs} ms`,
    );

    t.is(lease.server, PLAN.dhcpServer, "the lease came from homewire's server at home");
    t.true(
      ipNum(lease.ip) >= ipNum(PLAN.dhcpPool[0]) && ipNum(lease.ip) <= ipNum(PLAN.dhcpPool[1]),
      `${lease.ip} is in the pool`,
    );
    t.is(lease.mask, 24);
    t.is(lease.router, PLAN.lan);
    t.is(lease.mtu, String(lab.tapMtu), 'the interface MTU option matches the TAP');

    // The home daemon's lease table holds it, for this MAC, at site host-a.
    const leases = await lab.exec('home', [
      process.execPath,
      HOMEWIRE_BIN,
      'leases',
      '--config',
      lab.site('home').configFile,
      '--json',
    ]);
    t.is(leases.code, 0, leases.stderr);
    t.regex(leases.stdout, new RegExp(lease.ip.replace(/\./g, '\\.')), 'home lists the lease');
    t.regex(leases.stdout, new RegExp(mac), "for the guest's MAC");

    const ping = parsePing(
      (
        await lab.exec('lan', ['ping', '-n', '-q', '-c', '10', '-i', '0.05', '-W', '2', lease.ip], {
          timeoutMs: 20_000,
        })
      ).stdout,
    );
    t.true(ping.ok, `lan → guest ${lease.ip}: ${ping.received}/${ping.transmitted} received`);
    t.true(vm.running);
  },
);

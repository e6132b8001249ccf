// DHCP over the mesh, in process: a guest on a VM host gets its lease from the home site; the broadcasts
// do not leak onto the home LAN and the replies go back to the guest's host only.
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DHCPACK, DHCPOFFER } from '../../src/dhcp/constants.ts';
import { parseReply, SimClient, simMac } from '../../lab/dhcp-client-sim.ts';
import { formatIPv4 } from '../../src/dhcp/ip.ts';
import { allUp, buildMesh, waitFor } from '../helpers/memory-mesh.ts';

test('a guest behind host-a gets a home address from the home site over the mesh', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-dhcpmesh-'));
  const { nodes, stop } = await buildMesh({
    names: ['home', 'host-a', 'host-b'],
    extra: (name) =>
      name !== 'home'
        ? ''
        : [
            'dhcp:',
            '  subnet: 198.51.100.0/24',
            '  server_ip: 198.51.100.2',
            '  pool: 198.51.100.100-198.51.100.199',
            '  router: 198.51.100.1',
            '  lease_seconds: 600',
            `  lease_db: ${path.join(dir, 'leases.db')}`,
          ].join('\n'),
  });
  t.teardown(stop);
  await waitFor(() => allUp(nodes));
  const [home, a, b] = ['home', 'host-a', 'host-b'].map((n) => nodes.get(n)!);
  const client = new SimClient(simMac(7), 'udhcpc', 'guest7');
  a.tap.inject(client.discover());
  await waitFor(() => a.tap.written.length === 1);
  const offer = parseReply(a.tap.written[0])!;
  t.is(offer.type, DHCPOFFER);
  t.regex(formatIPv4(offer.msg.yiaddr), /^198\.51\.100\.1\d\d$/);
  a.tap.inject(client.select(offer));
  await waitFor(() => a.tap.written.length === 2);
  const ack = parseReply(a.tap.written[1])!;
  t.is(ack.type, DHCPACK);
  t.is(ack.msg.yiaddr, offer.msg.yiaddr);
  await new Promise((r) => setTimeout(r, 50));
  t.is(home.tap.written.length, 0, 'the DISCOVER/REQUEST broadcasts were not passed onto the home LAN');
  const serverMac = home.daemon.dhcp!.mac;
  t.is(
    b.tap.written.filter((f) => f.subarray(6, 12).equals(serverMac)).length,
    0,
    'replies went to host-a only, not to every site',
  );
  t.is(b.tap.written.length, 2, "host-b saw the guest's two broadcasts, as any site does");
  const lease = home.daemon.dhcp!.leases()[0];
  t.is(lease.site, 'host-a');
  t.is(lease.hostname, 'guest7');
});

test("reservations handed over at run time (the coordinator's VMs) are what the guest gets", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-dhcpres-'));
  const { nodes, stop } = await buildMesh({
    names: ['home', 'host-a'],
    extra: (name) =>
      name !== 'home'
        ? ''
        : [
            'dhcp:',
            '  subnet: 198.51.100.0/24',
            '  server_ip: 198.51.100.2',
            '  pool: 198.51.100.100-198.51.100.199',
            '  lease_seconds: 600',
            `  lease_db: ${path.join(dir, 'leases.db')}`,
          ].join('\n'),
  });
  t.teardown(stop);
  await waitFor(() => allUp(nodes));
  const home = nodes.get('home')!;
  const a = nodes.get('host-a')!;
  const mac = simMac(9);
  home.daemon.dhcp!.setExtraReservations([
    { mac: [...mac].map((b) => b.toString(16).padStart(2, '0')).join(':'), ip: '198.51.100.50' },
    { mac: 'not-a-mac', ip: '198.51.100.51' },
    { mac: '02:00:00:00:00:01', ip: '203.0.113.9' },
  ]);
  const client = new SimClient(mac, 'dhclient');
  a.tap.inject(client.discover());
  await waitFor(() => a.tap.written.length === 1);
  const offer = parseReply(a.tap.written[0])!;
  t.is(formatIPv4(offer.msg.yiaddr), '198.51.100.50');
});

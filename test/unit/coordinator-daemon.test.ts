// The host agent on a real daemon (in-memory TAP and UDP twins): the coordinator's migration reaches the
// destination daemon's switch through HostAgent's expect(mac) seam, and the home site's switch sends the
// guest's frames to both hosts until the guest shows up at the destination.
import test from 'ava';
import { Harness, waitFor } from '../../lab/coordinator/harness.ts';
import type { VmRecord } from '../../src/coordinator/types.ts';
import { macNumber } from '../../src/addr.ts';
import { allUp, arp, authorizeEverywhere, buildMesh } from '../helpers/memory-mesh.ts';

test('migrate: the destination daemon is told the MAC is about to arrive; home dual-sends to it', async (t) => {
  const mesh = await buildMesh({ names: ['home', 'host-a', 'host-b'] });
  t.teardown(() => mesh.stop());
  await waitFor(() => allUp(mesh.nodes), 5000, 'mesh up');
  const h = await Harness.start();
  t.teardown(() => h.stop());
  const daemon = (n: string) => mesh.nodes.get(n)!.daemon;
  await h.addHost('host-a', { expect: (mac) => daemon('host-a').expect(mac) });
  await h.addHost('host-b', {
    expect: (mac) => {
      // A migration is authorized on every site before its expect (security.mac_moves: authorized). The
      // coordinator sends authorizeMove to the hosts' agents; home runs no agent in this test, so the test
      // authorizes on every daemon itself.
      authorizeEverywhere(mesh.nodes, mac, 'host-b');
      return daemon('host-b').expect(mac);
    },
  });
  await h.addImage();
  const vm = await h.admin.request<VmRecord>('POST', '/v1/vms', { name: 'web', image: 'tiny' });
  await h.admin.request('POST', '/v1/vms/web/start', { host: 'host-a' });
  // The guest talks on host-a: home learns its MAC behind host-a.
  mesh.nodes.get('host-a')!.tap.inject(arp(1, vm.mac, '198.51.100.50', '00:00:00:00:00:00', '198.51.100.1'));
  const mac = macNumber(vm.mac);
  const homeSw = daemon('home').sw;
  await waitFor(() => homeSw.table.get(mac)?.port?.name === 'host-a', 3000, 'home learned the guest behind host-a');
  const moved = await h.admin.request<VmRecord>('POST', '/v1/vms/web/migrate', {});
  t.is(moved.host, 'host-b');
  t.deepEqual(h.host('host-b').expects, [vm.mac]);
  await waitFor(
    () => homeSw.table.get(mac)?.alsoTo?.name === 'host-b',
    3000,
    "home sends the guest's frames to host-b too",
  );
  t.pass();
});

// A host's overlay address (host_address) keeps its MAC while VMs come and go: a Linux bridge whose MAC was
// never set takes the lowest MAC of its ports, so a VM's TAP joining would move the host's address to a new
// MAC behind the peers' ARP caches (src/daemon.ts pinBridgeMac). The test joins a TAP with a MAC lower than
// any other to host-b's bridge and asserts that the bridge's MAC stays and host-a reaches host-b's address at
// once, without a new ARP.
import { SITE_BRIDGE } from '../../lab/topology.ts';
import { labFor, netnsTest, pingText } from '../helpers/netns.ts';

const ADDRESS = { 'host-a': '198.51.100.21', 'host-b': '198.51.100.22' } as Record<string, string>;
const LOWEST_MAC = '02:00:00:00:00:01';

netnsTest(
  'host_address: a VM TAP with a lower MAC joins the bridge; the host keeps its MAC and is reached at once',
  async (t) => {
    const lab = await labFor(t, { siteConfig: (s) => (ADDRESS[s] ? `host_address: ${ADDRESS[s]}/24` : '') });
    const macOf = async (site: string) =>
      (await lab.exec(site, ['cat', `/sys/class/net/${SITE_BRIDGE}/address`])).stdout.trim();
    t.true((await lab.ping('host-a', ADDRESS['host-b'], { count: 3 })).ok, "host-a reaches host-b's overlay address");
    const before = await macOf('host-b');
    const assign = (await lab.exec('host-b', ['cat', `/sys/class/net/${SITE_BRIDGE}/addr_assign_type`])).stdout.trim();
    t.is(assign, '3', "the daemon set the bridge's MAC (NET_ADDR_SET), so the kernel keeps it");

    for (const cmd of [
      ['ip', 'tuntap', 'add', 'dev', 'vmlow0', 'mode', 'tap'],
      ['ip', 'link', 'set', 'dev', 'vmlow0', 'address', LOWEST_MAC],
      ['ip', 'link', 'set', 'dev', 'vmlow0', 'master', SITE_BRIDGE, 'up'],
    ]) {
      const r = await lab.exec('host-b', cmd);
      t.is(r.code, 0, `${cmd.join(' ')}: ${r.stderr}`);
    }
    t.is(await macOf('host-b'), before, `host-b's bridge keeps ${before} with ${LOWEST_MAC} on a port`);
    const neigh = await lab.exec('host-a', ['ip', 'neigh', 'show', ADDRESS['host-b']]);
    t.regex(neigh.stdout, new RegExp(before), `host-a's ARP cache: ${neigh.stdout.trim()}`);
    const ping = await lab.ping('host-a', ADDRESS['host-b'], { count: 5, intervalS: 0.1 });
    t.is(ping.received, 5, `host-a → host-b's address after the TAP joined: ${pingText(ping)}`);
  },
);

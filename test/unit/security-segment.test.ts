// The segment defences, attacked in process (in-memory TAPs and UDP; README "Security model"): a guest that
// spoofs MACs, floods, runs a DHCP server, poisons ARP or sends router advertisements; a hostile host whose
// daemon sends frames, move announcements and EXPECTs for MACs it does not own. Each test performs the
// attack, asserts that it fails, that legitimate traffic carries on, and that the counter moved.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { macNumber } from '../../src/addr.ts';
import { encodeExpect, encodeMacAt } from '../../src/mesh/signal.ts';
import type { Peer } from '../../src/mesh/peer.ts';
import { parseReply, SimClient, simMac } from '../../lab/dhcp-client-sim.ts';
import { formatIPv4 } from '../../src/dhcp/ip.ts';
import { DHCPACK } from '../../src/dhcp/constants.ts';
import {
  dhcpServerReply,
  hiddenRouterAdvertisement,
  neighbourAdvertisement,
  routerAdvertisement,
  truncatedChainRouterAdvertisement,
} from '../helpers/attack-frames.ts';
import {
  allUp,
  arp,
  authorizeEverywhere,
  buildMesh,
  frame,
  labSecurity,
  type Node,
  waitFor,
} from '../helpers/memory-mesh.ts';

const LAN = '52:54:00:00:00:01'; // a device on the home LAN
const GA = '52:54:00:00:00:0a'; // a guest on host-a
const GB = '52:54:00:00:00:0b'; // a guest on host-b
const BCAST = 'ff:ff:ff:ff:ff:ff';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Sites {
  home: Node;
  a: Node;
  b: Node;
  nodes: Map<string, Node>;
  net: Awaited<ReturnType<typeof buildMesh>>['net'];
}

async function sites(
  t: ExecutionContext,
  o: { security?: (n: string) => string; extra?: (n: string) => string } = {},
): Promise<Sites> {
  const m = await buildMesh({ names: ['home', 'host-a', 'host-b'], security: o.security, extra: o.extra });
  t.teardown(m.stop);
  await waitFor(() => allUp(m.nodes), 20_000); // the machine is shared: handshakes may queue
  const [home, a, b] = ['home', 'host-a', 'host-b'].map((n) => m.nodes.get(n)!);
  return { home, a, b, nodes: m.nodes, net: m.net };
}

const peerOf = (n: Node, name: string): Peer => n.daemon.mesh.peerByName(name)!;
const portOf = (n: Node, mac: string) => {
  const e = n.daemon.sw.table.get(macNumber(mac));
  return e === undefined ? undefined : (e.port?.name ?? 'local');
};
const wrote = (n: Node, pred: (f: Buffer) => boolean) => n.tap.written.some(pred);
const fromMac = (m: string) => (f: Buffer) => f.subarray(6, 12).equals(Buffer.from(m.replace(/:/g, ''), 'hex'));
const sized = (len: number) => (f: Buffer) => f.length === len;

/** The LAN device and both guests talk once, so every site knows where they are. */
async function introduce(s: Sites): Promise<void> {
  s.home.tap.inject(arp(1, LAN, '198.51.100.1', '00:00:00:00:00:00', '198.51.100.10'));
  s.a.tap.inject(arp(2, GA, '198.51.100.10', LAN, '198.51.100.1'));
  s.b.tap.inject(arp(1, GB, '198.51.100.11', '00:00:00:00:00:00', '198.51.100.1'));
  await waitFor(
    () =>
      portOf(s.a, LAN) === 'home' &&
      portOf(s.b, LAN) === 'home' &&
      portOf(s.home, GA) === 'host-a' &&
      portOf(s.home, GB) === 'host-b' &&
      portOf(s.b, GA) === 'host-a',
  );
}

// ---- port security (sending side) ----------------------------------------------------------------------

test.serial(
  "a guest that sends as a home-LAN device's MAC is stopped at its own host; the device keeps its traffic",
  async (t) => {
    const s = await sites(t);
    await introduce(s);
    // The attack: one gratuitous ARP from the guest with the LAN device's MAC and address.
    s.a.tap.inject(arp(1, LAN, '198.51.100.1', '00:00:00:00:00:00', '198.51.100.1'));
    await sleep(50);
    t.is(s.a.daemon.sw.security.portSecurity.remote_mac, 1);
    t.is(portOf(s.home, LAN), 'local', 'home still has the device on its LAN');
    t.is(portOf(s.b, LAN), 'home', 'host-b still sends its traffic to home');
    // Legitimate traffic carries on: host-b's guest reaches the LAN device, the LAN device reaches host-a's guest.
    s.b.tap.inject(frame(LAN, GB, 0x0800, Buffer.alloc(101, 1)));
    s.home.tap.inject(frame(GA, LAN, 0x0800, Buffer.alloc(102, 2)));
    await waitFor(() => wrote(s.home, sized(115)) && wrote(s.a, sized(116)));
    t.false(wrote(s.a, sized(115)), "host-a's guest did not get the device's traffic");
  },
);

test.serial('strict with a guest list: only the coordinator-given MACs (and the bridge) leave the host', async (t) => {
  const s = await sites(t);
  t.deepEqual(s.a.daemon.setGuestMacs([GA, { mac: '52:54:00:00:00:0c', ip: '198.51.100.12' }]), { ok: true });
  t.false(s.a.daemon.setGuestMacs(['01:00:5e:00:00:01']).ok, 'a group MAC is refused');
  const STRANGER = '52:54:00:00:99:99';
  s.a.tap.inject(frame(BCAST, STRANGER, 0x0800, Buffer.alloc(50)), frame(BCAST, GA, 0x0800, Buffer.alloc(51)));
  await waitFor(() => wrote(s.home, sized(65)));
  await sleep(30);
  t.false(wrote(s.home, sized(64)), 'the stranger did not get through');
  t.is(s.a.daemon.sw.security.portSecurity.unknown_mac, 1);
  t.is(portOf(s.home, STRANGER), undefined);
  // The host's own bridge MAC is allowed beside the guests.
  s.a.daemon.sw.security.infraMacs.add(macNumber('02:00:00:00:00:aa'));
  s.a.tap.inject(frame(BCAST, '02:00:00:00:00:aa', 0x0800, Buffer.alloc(52)));
  await waitFor(() => wrote(s.home, sized(66)));
});

test.serial(
  'learn: at most max_macs_per_site MACs leave a guests side; a MAC flood fills nothing elsewhere',
  async (t) => {
    const s = await sites(t, {
      security: (n) => (n === 'host-a' ? 'security: { port_security: learn, max_macs_per_site: 4 }' : ''),
    });
    const frames = Array.from({ length: 10 }, (_, i) =>
      frame(BCAST, `52:54:00:00:10:${i.toString(16).padStart(2, '0')}`, 0x0800, Buffer.alloc(46)),
    );
    s.a.tap.inject(...frames);
    await sleep(80);
    t.is(s.a.daemon.sw.security.portSecurity.too_many_macs, 6);
    t.is(s.home.daemon.sw.security.macCount(peerOf(s.home, 'host-a')), 4);
    // The four it has keep working.
    s.a.tap.inject(frame(BCAST, '52:54:00:00:10:00', 0x0800, Buffer.alloc(47)));
    await waitFor(() => wrote(s.home, sized(61)));
  },
);

test.serial("home: a LAN frame claiming a remote guest's MAC is not sent into the mesh", async (t) => {
  const s = await sites(t);
  await introduce(s);
  s.home.tap.inject(frame(BCAST, GA, 0x0806, Buffer.alloc(46))); // a LAN device spoofing host-a's guest
  await sleep(50);
  t.is(s.home.daemon.sw.security.portSecurity.remote_mac, 1);
  t.is(portOf(s.home, GA), 'host-a');
  t.is(portOf(s.b, GA), 'host-a');
  s.b.tap.inject(frame(GA, GB, 0x0800, Buffer.alloc(103)));
  await waitFor(() => wrote(s.a, sized(117)));
});

// ---- ownership (receiving side): a hostile host's daemon ----------------------------------------------

test.serial(
  "a hostile host's frames, MAC_AT and EXPECT for MACs it does not own are refused at the receivers",
  async (t) => {
    const s = await sites(t);
    await introduce(s);
    const home = s.home.daemon.sw;
    const toHome = peerOf(s.a, 'home');
    const toB = peerOf(s.a, 'host-b');
    // 1. Frames with the home LAN device's MAC, straight from host-a's daemon (its port security is not ours).
    s.a.daemon.mesh.sendFrame(toHome, frame(BCAST, LAN, 0x0806, Buffer.alloc(46)));
    // 2. "The LAN device is at me" and "host-b's guest is at me", with high sequences.
    s.a.daemon.mesh.sendSignal(toHome, encodeMacAt(macNumber(LAN), 1000));
    s.a.daemon.mesh.sendSignal(toHome, encodeMacAt(macNumber(GB), 1000));
    s.a.daemon.mesh.sendSignal(toB, encodeMacAt(macNumber(GB), 1000));
    // 3. "Send me a copy of host-b's guest's traffic."
    s.a.daemon.mesh.sendSignal(toHome, encodeExpect(macNumber(GB)));
    // 4. Frames as host-b's guest.
    s.a.daemon.mesh.sendFrame(toHome, frame(LAN, GB, 0x0800, Buffer.alloc(104)));
    s.a.daemon.mesh.flush();
    await waitFor(
      () =>
        home.security.ownership.local_mac === 1 &&
        home.security.ownership.move_refused === 2 &&
        home.security.ownership.expect_refused === 1 &&
        home.security.ownership.owned_elsewhere === 1,
    );
    t.is(s.b.daemon.sw.security.ownership.move_refused, 1, 'host-b refuses a claim on its own guest');
    t.is(portOf(s.home, LAN), 'local');
    t.is(portOf(s.home, GB), 'host-b');
    t.is(portOf(s.b, GB), 'local');
    t.is(home.table.get(macNumber(GB))!.alsoTo, null, 'no copy of the traffic goes to host-a');
    t.false(wrote(s.home, sized(118)), 'the forged frame did not reach the LAN');
    // Legitimate traffic carries on, and host-a gets none of host-b's guest's frames.
    const before = s.a.tap.written.length;
    s.home.tap.inject(frame(GB, LAN, 0x0800, Buffer.alloc(105)));
    await waitFor(() => wrote(s.b, sized(119)));
    await sleep(20);
    t.is(s.a.tap.written.length, before);
    // With the coordinator's authorization the same announcement is a migration, and is followed.
    authorizeEverywhere(s.nodes, GB, 'host-a');
    s.a.daemon.mesh.sendSignal(toHome, encodeMacAt(macNumber(GB), 1001));
    s.a.daemon.mesh.flush();
    await waitFor(() => portOf(s.home, GB) === 'host-a');
  },
);

test.serial('mac_moves: open lets peers claim MACs other peers hold, never MACs pinned here', async (t) => {
  const s = await sites(t, {
    security: (n) =>
      n === 'home' ? 'security: { local_side: lan, mac_moves: open, arp_inspection: learn }' : labSecurity(n),
  });
  await introduce(s);
  s.a.daemon.mesh.sendSignal(peerOf(s.a, 'home'), encodeMacAt(macNumber(GB), 5));
  s.a.daemon.mesh.sendSignal(peerOf(s.a, 'home'), encodeMacAt(macNumber(LAN), 5));
  s.a.daemon.mesh.flush();
  await waitFor(() => portOf(s.home, GB) === 'host-a' && s.home.daemon.sw.security.ownership.move_refused === 1);
  t.is(portOf(s.home, LAN), 'local');
});

test.serial('a local MAC stays pinned after its entry ages out', async (t) => {
  const m = await buildMesh({ names: ['home', 'host-a'] });
  t.teardown(m.stop);
  await waitFor(() => allUp(m.nodes));
  const home = m.nodes.get('home')!;
  const a = m.nodes.get('host-a')!;
  home.tap.inject(frame(BCAST, LAN, 0x0806, Buffer.alloc(46)));
  await sleep(20);
  home.daemon.sw.tick(Date.now() + 301_000); // past MAC ageing
  t.is(portOf(home, LAN), undefined);
  a.daemon.mesh.sendFrame(peerOf(a, 'home'), frame(BCAST, LAN, 0x0806, Buffer.alloc(46)));
  a.daemon.mesh.flush();
  await waitFor(() => home.daemon.sw.security.ownership.local_mac === 1);
  t.is(portOf(home, LAN), undefined, 'the quiet device was not taken');
});

test.serial('a peer holds at most max_macs_per_peer MACs here; other sites are unaffected', async (t) => {
  const s = await sites(t, {
    security: (n) => (n === 'home' ? 'security: { local_side: lan, max_macs_per_peer: 100 }' : ''),
  });
  const toHome = peerOf(s.a, 'home');
  for (let i = 0; i < 2000; i++) {
    const src = `02:00:${((i >> 16) & 255).toString(16).padStart(2, '0')}:${((i >> 8) & 255).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}:01`;
    s.a.daemon.mesh.sendFrame(toHome, frame(BCAST, src, 0x0800, Buffer.alloc(46)));
  }
  s.a.daemon.mesh.flush();
  await waitFor(() => s.home.daemon.sw.security.ownership.peer_quota >= 1900, 10_000);
  t.is(s.home.daemon.sw.security.macCount(peerOf(s.home, 'host-a')), 100);
  s.b.tap.inject(frame(BCAST, GB, 0x0800, Buffer.alloc(46)));
  await waitFor(() => portOf(s.home, GB) === 'host-b');
});

// ---- storm control --------------------------------------------------------------------------------------

test.serial('storm control: a guest flooding broadcasts gets flood_pps through; unicast carries on', async (t) => {
  const s = await sites(t, {
    security: (n) =>
      n === 'home'
        ? 'security: { local_side: lan, flood_pps: 100 }'
        : 'security: { flood_pps: 100, arp_inspection: learn }',
  });
  await introduce(s);
  const flood = Array.from({ length: 3000 }, () => frame(BCAST, GA, 0x0800, Buffer.alloc(77)));
  s.a.tap.inject(...flood);
  s.a.tap.inject(frame(LAN, GA, 0x0800, Buffer.alloc(106)));
  await waitFor(() => wrote(s.home, sized(120)));
  await sleep(50);
  const got = s.home.tap.written.filter(sized(91)).length;
  t.true(got <= 110, `${got} broadcasts crossed (flood_pps 100)`);
  t.true(s.a.daemon.sw.security.storm.drops.broadcast >= 2890);
  // A hostile host without storm control: the receivers hold the line too.
  s.a.daemon.sw.security.reconfigure({ ...s.a.daemon.sw.security.cfg, floodPps: 0 });
  const toB = peerOf(s.a, 'host-b');
  for (let i = 0; i < 2000; i++)
    s.a.daemon.mesh.sendFrame(toB, frame('01:00:5e:00:00:fb', GA, 0x0800, Buffer.alloc(78)));
  s.a.daemon.mesh.flush();
  await waitFor(() => s.b.daemon.sw.security.storm.drops.multicast >= 1800, 10_000);
  t.true(s.b.tap.written.filter(sized(92)).length <= 110);
});

// ---- DHCP snooping ------------------------------------------------------------------------------------

function dhcpSites(t: ExecutionContext, security?: (n: string) => string): Promise<Sites> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hws-dhcp-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return sites(t, {
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
    security: security ?? ((n) => (n === 'home' ? '' : 'security: { dhcp_servers: [home] }')),
  });
}

/** A full DORA for a simulated guest behind `site`; returns its address. */
async function lease(site: Node, client: SimClient): Promise<string> {
  const n = site.tap.written.length;
  site.tap.inject(client.discover());
  await waitFor(() => site.tap.written.slice(n).some((f) => parseReply(f)?.type === 2));
  const offer = site.tap.written
    .slice(n)
    .map(parseReply)
    .find((r) => r?.type === 2)!;
  site.tap.inject(client.select(offer));
  await waitFor(() => site.tap.written.slice(n).some((f) => parseReply(f)?.type === DHCPACK));
  client.bound(
    site.tap.written
      .slice(n)
      .map(parseReply)
      .find((r) => r?.type === DHCPACK)!,
  );
  return formatIPv4(offer.msg.yiaddr);
}

test.serial(
  "a guest's rogue DHCP server is stopped at its host; a hostile host's at the receivers; guests still lease from home",
  async (t) => {
    const s = await dhcpSites(t);
    const ROGUE = '52:54:00:00:66:66';
    const victim = new SimClient(simMac(21), 'udhcpc');
    const victimMac = [...simMac(21)].map((x) => x.toString(16).padStart(2, '0')).join(':');
    // A guest on host-b answers DHCP (offers and ACKs with its own router) to host-a's guest.
    s.b.tap.inject(
      dhcpServerReply(2, ROGUE, '198.51.100.66', victimMac, '198.51.100.67'),
      dhcpServerReply(5, ROGUE, '198.51.100.66', victimMac, '198.51.100.67'),
    );
    // host-b's daemon itself is hostile as well: it sends rogue replies straight into the mesh.
    const rogue = dhcpServerReply(5, ROGUE, '198.51.100.66', victimMac, '198.51.100.68');
    s.b.daemon.mesh.sendFrame(peerOf(s.b, 'host-a'), rogue);
    s.b.daemon.mesh.sendFrame(peerOf(s.b, 'home'), rogue);
    s.b.daemon.mesh.flush();
    await waitFor(
      () =>
        s.b.daemon.sw.security.snooping.server_from_guest === 2 &&
        s.a.daemon.sw.security.snooping.server_from_peer === 1 &&
        s.home.daemon.sw.security.snooping.server_from_peer === 1,
    );
    t.false(wrote(s.a, fromMac(ROGUE)), "no rogue reply reached host-a's guests");
    t.false(wrote(s.home, fromMac(ROGUE)), 'none reached the home LAN');
    // The guest on host-a gets its address from home's server.
    const ip = await lease(s.a, victim);
    t.regex(ip, /^198\.51\.100\.1\d\d$/);
  },
);

test.serial('home LAN DHCP stays on the LAN when serve_local is false; so do the LAN server replies', async (t) => {
  const s = await dhcpSites(t);
  const lanClient = new SimClient(simMac(31), 'dhclient');
  s.home.tap.inject(lanClient.discover());
  s.home.tap.inject(dhcpServerReply(2, '52:54:00:00:00:fe', '198.51.100.254', '52:54:00:00:00:1f', '198.51.100.30'));
  await sleep(50);
  t.is(s.home.daemon.sw.security.snooping.lan_dhcp_kept_local, 2);
  t.false(wrote(s.a, fromMac('52:54:00:00:00:1f')));
  t.false(wrote(s.a, fromMac('52:54:00:00:00:fe')));
  t.false(wrote(s.b, fromMac('52:54:00:00:00:fe')));
});

// ---- ARP/ND inspection, RA guard, bindings --------------------------------------------------------------

test.serial(
  'ARP inspection (strict): a guest may claim only its leased address; RA guard; ND inspection',
  async (t) => {
    const s = await dhcpSites(t);
    const client = new SimClient(simMac(41), 'udhcpc');
    const G = [...simMac(41)].map((x) => x.toString(16).padStart(2, '0')).join(':');
    // Before a lease: the guest's gratuitous ARP for an address is dropped (no binding).
    s.a.tap.inject(arp(1, G, '198.51.100.150', '00:00:00:00:00:00', '198.51.100.150'));
    await sleep(30);
    const insp = s.a.daemon.sw.security.inspection;
    t.is(insp.arp_no_binding, 1);
    const ip = await lease(s.a, client);
    t.is(s.a.daemon.sw.security.stats.bindingsSnooped, 1, "host-a snooped the guest's ACK");
    const ownArp = arp(1, G, ip, '00:00:00:00:00:00', '198.51.100.1');
    s.a.tap.inject(ownArp);
    await waitFor(() => wrote(s.home, (f) => f.equals(ownArp)));
    // The attack: claim the router's address (ARP poisoning), and an ARP whose sender MAC is not the source.
    s.a.tap.inject(arp(2, G, '198.51.100.1', LAN, '198.51.100.9'));
    const mismatched = arp(1, G, ip, '00:00:00:00:00:00', '198.51.100.1');
    Buffer.from('020000000099', 'hex').copy(mismatched, 22);
    s.a.tap.inject(mismatched);
    // Router advertisements, plain and hidden behind extension headers; a neighbour advertisement whose
    // link-layer address is someone else's.
    s.a.tap.inject(
      routerAdvertisement(G),
      hiddenRouterAdvertisement(G),
      truncatedChainRouterAdvertisement(G),
      neighbourAdvertisement(G, 'fe80::1', LAN),
    );
    await sleep(50);
    t.is(insp.arp_no_binding, 2);
    t.is(insp.arp_sha_mismatch, 1);
    t.is(insp.ra_guard, 2);
    t.is(insp.unparseable, 1);
    t.is(insp.nd_lladdr_mismatch, 1);
    t.false(
      wrote(s.home, (f) => f.readUInt16BE(12) === 0x86dd),
      'no RA or forged NA reached home',
    );
    // Its own neighbour advertisement passes.
    const na = neighbourAdvertisement(G, 'fe80::5054:ff:fe00:29', G);
    s.a.tap.inject(na);
    await waitFor(() => wrote(s.home, (f) => f.equals(na)));
  },
);

test.serial(
  'a guest that moves keeps its binding: home tells the new host (BINDING); a forged BINDING is refused',
  async (t) => {
    const s = await dhcpSites(t);
    const client = new SimClient(simMac(42), 'udhcpc');
    const G = [...simMac(42)].map((x) => x.toString(16).padStart(2, '0')).join(':');
    const ip = await lease(s.a, client);
    authorizeEverywhere(s.nodes, G, 'host-b');
    const garp = arp(1, G, ip, '00:00:00:00:00:00', ip);
    s.b.tap.inject(garp); // the guest resumed on host-b: its first gratuitous ARP may race the binding
    await waitFor(() => portOf(s.home, G) === 'host-b' && s.b.daemon.sw.security.stats.bindingSignals === 1);
    const again = arp(1, G, ip, '00:00:00:00:00:00', '198.51.100.1');
    s.b.tap.inject(again);
    await waitFor(() => wrote(s.home, (f) => f.equals(again)));
    // host-a (not the DHCP server) tries to hand host-b a binding for the router's address.
    const { encodeBinding } = await import('../../src/security/signal.ts');
    s.a.daemon.mesh.sendSignal(peerOf(s.a, 'host-b'), encodeBinding(macNumber(G), 0xc6336401, 600));
    s.a.daemon.mesh.flush();
    await waitFor(() => s.b.daemon.sw.security.snooping.server_from_peer === 1);
    const noBinding = s.b.daemon.sw.security.inspection.arp_no_binding;
    s.b.tap.inject(arp(2, G, '198.51.100.1', LAN, '198.51.100.9'));
    await waitFor(() => s.b.daemon.sw.security.inspection.arp_no_binding === noBinding + 1);
    t.is(portOf(s.home, G), 'host-b');
  },
);

test.serial("a hostile host's ARP for an address that lives elsewhere is dropped at home", async (t) => {
  const s = await dhcpSites(t);
  s.home.tap.inject(arp(1, LAN, '198.51.100.1', '00:00:00:00:00:00', '198.51.100.1')); // the router says hello
  await waitFor(() => portOf(s.b, LAN) === 'home');
  const ip = await lease(s.b, new SimClient(simMac(43)));
  // host-a's daemon (no inspection of its own) sends ARP for its guest claiming the router's and the leased address.
  s.a.tap.inject(frame(BCAST, GA, 0x0800, Buffer.alloc(46)));
  await waitFor(() => portOf(s.home, GA) === 'host-a');
  const toHome = peerOf(s.a, 'home');
  s.a.daemon.mesh.sendFrame(toHome, arp(2, GA, '198.51.100.1', LAN, '198.51.100.1'));
  s.a.daemon.mesh.sendFrame(toHome, arp(2, GA, ip, LAN, '198.51.100.1'));
  s.a.daemon.mesh.flush();
  await waitFor(() => s.home.daemon.sw.security.inspection.arp_peer_conflict === 2);
  t.false(
    wrote(s.home, (f) => fromMac(GA)(f) && f.readUInt16BE(12) === 0x0806),
    'no forged ARP reached the LAN',
  );
});

test.serial(
  'ARP suppression: home answers a LAN request for a leased guest itself; nothing crosses the mesh',
  async (t) => {
    const s = await dhcpSites(t);
    const ip = await lease(s.a, new SimClient(simMac(44)));
    const G = [...simMac(44)].map((x) => x.toString(16).padStart(2, '0')).join(':');
    s.a.tap.inject(frame(BCAST, G, 0x0800, Buffer.alloc(46)));
    await waitFor(() => portOf(s.home, G) === 'host-a');
    let sentByHome = 0;
    s.net.filter = (msg, from) => {
      if (from === '192.0.2.1:51820' && msg[0] === 4 && msg.length > 32) sentByHome++;
      return msg;
    };
    s.home.tap.inject(arp(1, LAN, '198.51.100.1', '00:00:00:00:00:00', ip));
    await waitFor(() => s.home.tap.written.some((f) => f.readUInt16BE(12) === 0x0806 && f.readUInt16BE(20) === 2));
    const reply = s.home.tap.written.find((f) => f.readUInt16BE(12) === 0x0806 && f.readUInt16BE(20) === 2)!;
    t.true(fromMac(G)(reply), "the reply carries the guest's MAC");
    t.is(`${reply[28]}.${reply[29]}.${reply[30]}.${reply[31]}`, ip);
    await sleep(50);
    t.is(sentByHome, 0, 'frames over the mesh for this broadcast');
    t.is(s.home.daemon.sw.security.stats.arpSuppressed, 1);
    // Without suppression the same request goes to every peer.
    s.home.daemon.sw.security.reconfigure({ ...s.home.daemon.sw.security.cfg, arpSuppression: false });
    s.home.tap.inject(arp(1, LAN, '198.51.100.1', '00:00:00:00:00:00', ip));
    await waitFor(() => sentByHome === 2);
  },
);

// ---- DHCP identity over the mesh ----------------------------------------------------------------------

test.serial('DHCP identity: chaddr must be the sender; a lease cannot be released from another host', async (t) => {
  const s = await dhcpSites(t);
  const victim = new SimClient(simMac(51), 'udhcpc');
  const ip = await lease(s.a, victim);
  const dhcp = s.home.daemon.dhcp!;
  // A guest on host-b asks in the victim's name (chaddr = the victim's MAC, source = its own).
  const spoof = victim.release();
  Buffer.from(GB.replace(/:/g, ''), 'hex').copy(spoof, 6);
  s.b.tap.inject(spoof);
  await waitFor(() => dhcp.stats.dropped.chaddr_mismatch === 1);
  // A hostile host-b sends the victim's RELEASE with the victim's MAC as source: the switch at home refuses
  // the MAC (it lives behind host-a), so the server never sees it.
  s.b.daemon.mesh.sendFrame(peerOf(s.b, 'home'), victim.release());
  s.b.daemon.mesh.flush();
  await waitFor(() => s.home.daemon.sw.security.ownership.owned_elsewhere === 1);
  t.true(
    dhcp.leases().some((l) => l.ip === ip && l.state === 'bound'),
    'the lease is still bound',
  );
  // A copied client-id gets another address, not the victim's.
  const first = new SimClient(simMac(53), 'plain', undefined, Buffer.from([1, ...simMac(53)]));
  const firstIp = await lease(s.a, first);
  const copied = new SimClient(simMac(52), 'plain', undefined, Buffer.from([1, ...simMac(53)]));
  t.not(await lease(s.b, copied), firstIp);
  t.true(dhcp.stats.clientIdConflicts >= 1);
});

// ---- through a relay: judged against the origin site -----------------------------------------------------

test.serial('a relayed frame or move announcement is judged against its origin site, not the relay', async (t) => {
  const { buildNatMesh, allIntroduced, peerAt } = await import('../helpers/nat-mesh.ts');
  const { encodeKey, publicKeyOf } = await import('../../src/mesh/keys.ts');
  // Two symmetric NATs: host-a and host-c reach each other only through home.
  const m = await buildNatMesh({
    sites: [
      { name: 'host-a', nat: 'symmetric' },
      { name: 'host-c', nat: 'symmetric' },
    ],
  });
  t.teardown(m.stop);
  await waitFor(() => allIntroduced(m), 10_000);
  const a = m.sites.get('host-a')!;
  const c = m.sites.get('host-c')!;
  const G = '52:54:00:00:02:0a';
  a.tap.inject(arp(1, G, '198.51.100.60', '00:00:00:00:00:00', '198.51.100.1'));
  await waitFor(() => c.daemon.sw.table.get(macNumber(G))?.port?.name === 'host-a', 5000);
  const toA = peerAt(c, 'host-a')!;
  t.is(c.daemon.mesh.pathOf(toA), 'relay');
  // host-c's daemon claims host-a's guest, and sends as it, through home.
  c.daemon.mesh.sendSignal(toA, encodeMacAt(macNumber(G), 999));
  c.daemon.mesh.sendFrame(toA, frame(BCAST, G, 0x0800, Buffer.alloc(46)));
  c.daemon.mesh.flush();
  const own = a.daemon.sw.security.ownership;
  await waitFor(() => own.move_refused === 1 && own.local_mac === 1, 5000);
  t.is(a.daemon.sw.table.get(macNumber(G))?.port, null, 'host-a keeps its guest');
  // The refusal names the origin (host-c), not the relay: with host-c authorized, the same claim is followed.
  a.daemon.authorizeMove(G, encodeKey(publicKeyOf(c.key)), Date.now() + 60_000);
  c.daemon.mesh.sendSignal(toA, encodeMacAt(macNumber(G), 1000));
  c.daemon.mesh.flush();
  await waitFor(() => a.daemon.sw.table.get(macNumber(G))?.port?.name === 'host-c', 5000);
});

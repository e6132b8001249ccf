// The DHCP server's RFC 2131 state machine, driven through offer()/send exactly as the switch drives it.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  clientFrame,
  parseReply,
  SimClient,
  simMac,
  type ClientStyle,
  type ServerReply,
} from '../../lab/dhcp-client-sim.ts';
import { u32 } from '../../src/dhcp/codec.ts';
import { parseDhcpConfig } from '../../src/dhcp/config.ts';
import {
  DECLINE_QUARANTINE_MS,
  DHCPACK,
  DHCPNAK,
  DHCPOFFER,
  OFFER_HOLD_MS,
  OPT_BROADCAST,
  OPT_CLASSLESS_ROUTES,
  OPT_CLIENT_ID,
  OPT_DNS,
  OPT_DOMAIN,
  OPT_HOSTNAME,
  OPT_INTERFACE_MTU,
  OPT_LEASE_TIME,
  OPT_REBINDING_TIME,
  OPT_RENEWAL_TIME,
  OPT_ROUTER,
  OPT_SERVER_ID,
  OPT_SUBNET_MASK,
} from '../../src/dhcp/constants.ts';
import { decodeClasslessRoutes, encodeDhcp, u8 } from '../../src/dhcp/codec.ts';
import { FRAME_HEADROOM_BYTES, fillUdpHeaders } from '../../src/dhcp/frame.ts';
import { formatIPv4, parseIPv4 } from '../../src/dhcp/ip.ts';
import { formatLeases, listLeases } from '../../src/dhcp/leases-cli.ts';
import { DhcpServer, serverMac } from '../../src/dhcp/server.ts';

const ip = (s: string) => parseIPv4(s)!;
const SERVER = ip('192.168.77.2');
const T0 = 1_700_000_000_000;
const BASE = {
  subnet: '192.168.77.0/24',
  server_ip: '192.168.77.2',
  pool: '192.168.77.100-192.168.77.199',
  router: '192.168.77.1',
  dns: ['192.168.77.1'],
  domain: 'home.example',
  lease_seconds: 3600,
  reservations: [{ mac: '52:54:00:00:00:10', ip: '192.168.77.10' }],
};

interface Sent {
  frame: Buffer;
  to: string;
  r: ServerReply | null;
}

function setup(t: ExecutionContext, over: Record<string, unknown> = {}, dir?: string) {
  const d = dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'hwdhcp-'));
  if (!dir) t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  const cfg = parseDhcpConfig({ ...BASE, lease_db: 'leases.db', ...over }, path.join(d, 'homewire.yaml'));
  let now = T0;
  const sent: Sent[] = [];
  const warnings: string[] = [];
  const log = {
    info() {},
    debug() {},
    warn(_o: object, msg?: string) {
      warnings.push(msg ?? '');
    },
  };
  const server = DhcpServer.open(cfg, {
    mtu: 1400,
    send: (frame, to) => sent.push({ frame, to, r: parseReply(frame) }),
    now: () => now,
    log,
  });
  t.teardown(() => server.close());
  const h = {
    server,
    sent,
    warnings,
    dir: d,
    cfg,
    now: () => now,
    advance(ms: number) {
      now += ms;
      server.tick(now);
    },
    /** Offer a frame, let the end-of-turn commit run, return what was sent. */
    async exchange(frame: Buffer, from = 'hostA'): Promise<{ consumed: boolean; out: Sent[] }> {
      sent.length = 0;
      const consumed = server.offer(frame, from);
      await new Promise((r) => setImmediate(r));
      return { consumed, out: sent.splice(0) };
    },
    async one(frame: Buffer, from = 'hostA'): Promise<ServerReply | null> {
      const { out } = await h.exchange(frame, from);
      t.true(out.length <= 1, 'at most one reply');
      for (const s of out) t.is(s.to, from, 'replies go only to the port the request came from');
      return out[0]?.r ?? null;
    },
    /** Full DORA; returns the ACK (asserting OFFER then ACK). */
    async dora(c: SimClient, from = 'hostA'): Promise<ServerReply> {
      const offer = await h.one(c.discover(), from);
      t.is(offer?.type, DHCPOFFER);
      const ack = await h.one(c.select(offer!), from);
      t.is(ack?.type, DHCPACK);
      c.bound(ack!);
      return ack!;
    },
  };
  return h;
}

test('DORA: offer and ack carry the address and every configured option; sent only to the asking site', async (t) => {
  const h = setup(t, { routes: [{ destination: '10.0.0.0/8', gateway: '192.168.77.1' }] });
  const c = new SimClient(simMac(1), 'plain', 'vm-one');
  const { consumed, out } = await h.exchange(c.discover(), 'hostA');
  t.true(consumed);
  t.is(out.length, 1);
  t.is(out[0].to, 'hostA');
  const offer = out[0].r!;
  t.is(offer.type, DHCPOFFER);
  t.true(offer.msg.yiaddr >= ip('192.168.77.100') && offer.msg.yiaddr <= ip('192.168.77.199'));
  t.is(offer.dstMac, '52:54:00:00:00:01', 'no broadcast flag: unicast to chaddr');
  t.is(offer.dstIp, offer.msg.yiaddr);
  t.is(offer.srcIp, SERVER);
  t.is(offer.srcMac, [...h.server.mac].map((b) => b.toString(16).padStart(2, '0')).join(':'));
  t.true(offer.ipChecksumOk && offer.udpChecksumOk);
  const o = offer.msg.options;
  t.is(o.get(OPT_SERVER_ID)!.readUInt32BE(0), SERVER);
  t.is(o.get(OPT_LEASE_TIME)!.readUInt32BE(0), 3600);
  t.is(o.get(OPT_RENEWAL_TIME)!.readUInt32BE(0), 1800);
  t.is(o.get(OPT_REBINDING_TIME)!.readUInt32BE(0), 3150);
  t.is(o.get(OPT_SUBNET_MASK)!.readUInt32BE(0), ip('255.255.255.0'));
  t.is(o.get(OPT_BROADCAST)!.readUInt32BE(0), ip('192.168.77.255'));
  t.is(o.get(OPT_ROUTER)!.readUInt32BE(0), ip('192.168.77.1'));
  t.is(o.get(OPT_DNS)!.readUInt32BE(0), ip('192.168.77.1'));
  t.is(o.get(OPT_DOMAIN)!.toString(), 'home.example');
  t.is(o.get(OPT_INTERFACE_MTU)!.readUInt16BE(0), 1400, 'option 26 = overlay MTU');
  t.is(o.get(OPT_HOSTNAME)!.toString(), 'vm-one', 'option 12 echoed');
  t.deepEqual(decodeClasslessRoutes(o.get(OPT_CLASSLESS_ROUTES)!), [
    { network: 0, prefix: 0, gateway: ip('192.168.77.1') }, // the default route repeated (RFC 3442)
    { network: ip('10.0.0.0'), prefix: 8, gateway: ip('192.168.77.1') },
  ]);
  const ack = await h.one(c.select(offer), 'hostA');
  t.is(ack!.type, DHCPACK);
  t.is(ack!.msg.yiaddr, offer.msg.yiaddr);
  c.bound(ack!);
  const [l] = h.server.leases();
  t.like(l, {
    mac: '52:54:00:00:00:01',
    ip: formatIPv4(offer.msg.yiaddr),
    hostname: 'vm-one',
    site: 'hostA',
    state: 'bound',
    clientId: null,
  });
  t.is(l.expiresAt, T0 + 3600_000);
  t.is(h.server.stats.leasesActive, 1);
  t.like(h.server.stats.messages, { discover: 1, offer: 1, request: 1, ack: 1 });
});

test('broadcast flag: replies go to ff:ff:ff:ff:ff:ff / 255.255.255.255', async (t) => {
  const h = setup(t);
  const offer = await h.one(clientFrame({ type: 1, mac: simMac(2), xid: 9, broadcastFlag: true }));
  t.is(offer!.dstMac, 'ff:ff:ff:ff:ff:ff');
  t.is(offer!.dstIp, 0xffffffff);
});

test('real client option sets (udhcpc, dhclient, dhcpcd) all complete DORA; client-id echoed (RFC 6842)', async (t) => {
  const h = setup(t);
  const styles: ClientStyle[] = ['udhcpc', 'dhclient', 'dhcpcd'];
  const ips = new Set<number>();
  for (const [i, style] of styles.entries()) {
    const c = new SimClient(simMac(20 + i), style, `guest-${style}`);
    const ack = await h.dora(c);
    ips.add(ack.msg.yiaddr);
    const id = ack.msg.options.get(OPT_CLIENT_ID);
    if (style === 'dhclient') t.is(id, undefined);
    else t.truthy(id, `${style} client-id echoed`);
  }
  t.is(ips.size, 3);
  const rows = h.server.leases();
  t.is(
    rows.find((r) => r.hostname === 'guest-dhcpcd')!.clientId!.slice(0, 2),
    'ff',
    'dhcpcd RFC 4361 client-id stored',
  );
  t.is(rows.find((r) => r.hostname === 'guest-udhcpc')!.clientId, '01525400000014');
});

test('two concurrent DISCOVERs get different addresses; a repeated DISCOVER gets the same offer', async (t) => {
  const h = setup(t);
  h.server.offer(new SimClient(simMac(1)).discover(), 'hostA');
  h.server.offer(new SimClient(simMac(2)).discover(), 'hostB');
  h.server.offer(new SimClient(simMac(1)).discover(), 'hostA');
  t.is(h.sent.length, 3);
  const [a, b, a2] = h.sent.map((s) => s.r!.msg.yiaddr);
  t.not(a, b);
  t.is(a, a2);
  t.deepEqual(
    h.sent.map((s) => s.to),
    ['hostA', 'hostB', 'hostA'],
  );
});

test('leases are keyed by client-id when present, else by MAC', async (t) => {
  const h = setup(t);
  const id = Buffer.from([0xff, 1, 2, 3, 4, 0, 1, 9, 9]);
  const first = new SimClient(simMac(1), 'plain', undefined, id);
  const a = await h.dora(first);
  // Same MAC, no client-id: another client.
  const b = await h.dora(new SimClient(simMac(1)));
  t.not(b.msg.yiaddr, a.msg.yiaddr);
  t.is(h.server.leases().length, 2);
  // Same client-id, other MAC while the first lease is active: a client-id is a claim, not a proof (a
  // guest copying a neighbour's id must not get its address): another client, keyed by its MAC.
  const thief = await h.dora(new SimClient(simMac(2), 'plain', undefined, id));
  t.not(thief.msg.yiaddr, a.msg.yiaddr);
  t.is(h.server.stats.clientIdConflicts >= 1, true);
  // Once the first MAC released it (e.g. a re-created NIC), the same client-id gets the same lease again.
  await h.exchange(first.release());
  const again = await h.dora(new SimClient(simMac(3), 'plain', undefined, id));
  t.is(again.msg.yiaddr, a.msg.yiaddr);
});

test('NAK for addresses that are not ours or not free', async (t) => {
  const h = setup(t);
  const a = new SimClient(simMac(1));
  await h.dora(a);
  const b = new SimClient(simMac(2));
  let r = await h.one(b.reboot(ip('10.9.9.9')));
  t.is(r!.type, DHCPNAK, 'another subnet');
  t.is(r!.dstMac, 'ff:ff:ff:ff:ff:ff', 'NAK is broadcast');
  t.is(r!.dstIp, 0xffffffff);
  t.is(r!.msg.yiaddr, 0);
  r = await h.one(b.reboot(a.ip));
  t.is(r!.type, DHCPNAK, "another client's address");
  r = await h.one(b.reboot(ip('192.168.77.50')));
  t.is(r!.type, DHCPNAK, 'in the subnet but outside the pool');
  r = await h.one(b.reboot(ip('192.168.77.10')));
  t.is(r!.type, DHCPNAK, "someone else's reservation");
  r = await h.one(b.reboot(ip('192.168.77.150')));
  t.is(r!.type, DHCPACK, 'a free pool address: we are authoritative for the segment');
  t.is(h.server.stats.messages.nak, 4);
});

test('a REQUEST naming another server is ignored and our offer released', async (t) => {
  const h = setup(t, { pool: '192.168.77.100-192.168.77.100' });
  const a = new SimClient(simMac(1));
  const offer = await h.one(a.discover());
  t.is(offer!.type, DHCPOFFER);
  t.is(await h.one(new SimClient(simMac(2)).discover()), null, 'only address is held by the offer');
  const { consumed, out } = await h.exchange(
    clientFrame({
      type: 3,
      mac: simMac(1),
      xid: a.xid,
      requestedIp: ip('192.168.77.100'),
      serverId: ip('192.168.77.1'),
    }),
  );
  t.true(consumed);
  t.is(out.length, 0);
  t.is(h.server.stats.dropped.other_server, 1);
  const b = await h.one(new SimClient(simMac(2)).discover());
  t.is(b!.type, DHCPOFFER, 'the address is free again');
});

test('offers lapse after OFFER_HOLD_MS', async (t) => {
  const h = setup(t, { pool: '192.168.77.100-192.168.77.100' });
  t.is((await h.one(new SimClient(simMac(1)).discover()))!.type, DHCPOFFER);
  t.is(await h.one(new SimClient(simMac(2)).discover()), null);
  h.advance(OFFER_HOLD_MS + 1);
  t.is((await h.one(new SimClient(simMac(2)).discover()))!.type, DHCPOFFER);
});

test('RENEW: unicast to server_ip with ciaddr, answered unicast; ARP for server_ip answered first', async (t) => {
  const h = setup(t);
  const c = new SimClient(simMac(1));
  await h.dora(c);
  // The client resolves server_ip before unicasting.
  const arp = Buffer.alloc(42);
  arp.fill(0xff, 0, 6);
  simMac(1).copy(arp, 6);
  arp.writeUInt16BE(0x0806, 12);
  arp.writeUInt16BE(1, 14);
  arp.writeUInt16BE(0x0800, 16);
  arp[18] = 6;
  arp[19] = 4;
  arp.writeUInt16BE(1, 20);
  simMac(1).copy(arp, 22);
  arp.writeUInt32BE(c.ip, 28);
  arp.writeUInt32BE(SERVER, 38);
  const { consumed, out } = await h.exchange(arp, 'hostA');
  t.true(consumed);
  t.is(out.length, 1);
  t.is(out[0].to, 'hostA');
  t.deepEqual(out[0].frame.subarray(22, 28), h.server.mac, 'ARP reply: server_ip is at our MAC');
  t.is(out[0].frame.readUInt32BE(28), SERVER);
  const other = Buffer.from(arp);
  other.writeUInt32BE(ip('192.168.77.1'), 38);
  t.false(h.server.offer(other, 'hostA'), 'ARP for other addresses is not ours');

  h.advance(1800_000);
  const ack = await h.one(c.renew());
  t.is(ack!.type, DHCPACK);
  t.is(ack!.msg.yiaddr, c.ip);
  t.is(ack!.msg.ciaddr, c.ip);
  t.is(ack!.dstIp, c.ip, 'unicast to ciaddr');
  t.is(ack!.dstMac, '52:54:00:00:00:01');
  t.is(h.server.leases()[0].expiresAt, T0 + 1800_000 + 3600_000, 'lease extended');
  t.is(h.server.stats.renewals, 1);
});

test('REBIND: broadcast with ciaddr is answered; a VM that moved site is tracked at the new site', async (t) => {
  const h = setup(t);
  const c = new SimClient(simMac(1));
  await h.dora(c, 'hostA');
  h.advance(3200_000);
  const ack = await h.one(c.rebind(), 'hostB');
  t.is(ack!.type, DHCPACK);
  t.is(ack!.msg.yiaddr, c.ip);
  t.is(h.server.stats.rebinds, 1);
  t.is(h.server.leases()[0].site, 'hostB');
  // Renewing an address that is not the client's: NAK.
  const d = new SimClient(simMac(2));
  await h.dora(d);
  d.ip = c.ip;
  t.is((await h.one(d.rebind()))!.type, DHCPNAK);
});

test('RELEASE frees the address; the same client gets it back first', async (t) => {
  const h = setup(t, { pool: '192.168.77.100-192.168.77.101' });
  const a = new SimClient(simMac(1));
  await h.dora(a);
  const released = a.ip;
  const { consumed, out } = await h.exchange(a.release());
  t.true(consumed);
  t.is(out.length, 0, 'no reply to RELEASE');
  t.is(h.server.stats.leasesActive, 0);
  t.is(h.server.leases()[0].state, 'released');
  const b = new SimClient(simMac(2));
  await h.dora(b);
  t.not(b.ip, released, 'a fresh address is preferred over a remembered one');
  const c = new SimClient(simMac(3));
  await h.dora(c);
  t.is(c.ip, released, 'the released address is reused when needed');
  // A RELEASE for an address that is not the sender's is ignored.
  const x = new SimClient(simMac(4));
  x.ip = c.ip;
  await h.exchange(x.release());
  t.is(h.server.stats.leasesActive, 2);
});

test('DECLINE quarantines the address; only its holder may decline it', async (t) => {
  const h = setup(t, { pool: '192.168.77.100-192.168.77.101' });
  const a = new SimClient(simMac(1));
  await h.dora(a);
  const bad = a.ip;
  // Someone else declining a's address is ignored.
  const m = new SimClient(simMac(9));
  m.serverId = SERVER;
  await h.exchange(m.decline(bad));
  t.is(h.server.stats.dropped.not_for_us, 1);
  t.is(h.server.stats.leasesActive, 1);
  await h.exchange(a.decline());
  t.is(h.server.stats.messages.decline, 2);
  t.is(h.server.stats.leasesActive, 0);
  const again = await h.dora(a);
  t.not(again.msg.yiaddr, bad, 'the declined address is not offered again');
  h.advance(DECLINE_QUARANTINE_MS + 1);
  const b = new SimClient(simMac(2));
  t.is((await h.one(b.discover()))!.msg.yiaddr, bad, 'quarantine over');
});

test('DECLINE cannot drain the pool: when nothing else is left, the quarantine that ends first is cut short', async (t) => {
  const h = setup(t, { pool: '192.168.77.100-192.168.77.101' });
  const a = new SimClient(simMac(1));
  await h.dora(a);
  const bad = a.ip;
  await h.exchange(a.decline());
  await h.dora(a); // gets the other address
  const b = new SimClient(simMac(2));
  await h.dora(b);
  t.is(b.ip, bad);
  t.true(h.warnings.some((w) => /declined \(quarantined\) address early/.test(w)));
  t.is(h.server.stats.leasesActive, 2);
});

test('INFORM: ACK with configuration but no lease, unicast to ciaddr', async (t) => {
  const h = setup(t);
  const c = new SimClient(simMac(5));
  const ack = await h.one(c.inform(ip('192.168.77.40')));
  t.is(ack!.type, DHCPACK);
  t.is(ack!.msg.yiaddr, 0);
  t.is(ack!.msg.ciaddr, ip('192.168.77.40'));
  t.is(ack!.dstIp, ip('192.168.77.40'));
  t.false(ack!.msg.options.has(OPT_LEASE_TIME));
  t.false(ack!.msg.options.has(OPT_RENEWAL_TIME));
  t.true(ack!.msg.options.has(OPT_ROUTER));
  t.is(h.server.leases().length, 0);
  t.is(h.server.stats.messages.inform, 1);
});

test('lease expiry frees the address', async (t) => {
  const h = setup(t, { pool: '192.168.77.100-192.168.77.100', lease_seconds: 60 });
  const a = new SimClient(simMac(1));
  await h.dora(a);
  const b = new SimClient(simMac(2));
  t.is(await h.one(b.discover()), null);
  h.advance(60_000);
  t.is(h.server.stats.expired, 1);
  t.is(h.server.leases()[0].state, 'expired');
  await h.dora(b);
  t.is(b.ip, ip('192.168.77.100'));
  t.is(h.server.leases().length, 1, "the expired client's record gave the address up");
  t.is((await h.one(a.renew()))!.type, DHCPNAK, 'the old holder cannot renew it any more');
});

test('reservations: the reserved MAC gets its address, nobody else does', async (t) => {
  const h = setup(t);
  const r = new SimClient(Buffer.from('525400000010', 'hex'));
  const ack = await h.dora(r);
  t.is(ack.msg.yiaddr, ip('192.168.77.10'));
  t.is((await h.one(r.reboot(ip('192.168.77.150'))))!.type, DHCPNAK, 'a reserved MAC may not take a pool address');
  t.is((await h.one(new SimClient(simMac(3)).reboot(ip('192.168.77.10'))))!.type, DHCPNAK);
  const reserveInPool = setup(t, { reservations: [{ mac: '52:54:00:00:00:11', ip: '192.168.77.100' }] });
  const x = new SimClient(simMac(1));
  await reserveInPool.dora(x);
  t.not(x.ip, ip('192.168.77.100'), 'a reserved address inside the pool is never handed out dynamically');
});

test('pool exhaustion: no offer, a counter and a log line; existing clients keep renewing', async (t) => {
  const h = setup(t, { pool: '192.168.77.100-192.168.77.101' });
  const a = new SimClient(simMac(1));
  const b = new SimClient(simMac(2));
  await h.dora(a);
  await h.dora(b);
  const c = new SimClient(simMac(3));
  const { consumed, out } = await h.exchange(c.discover());
  t.true(consumed);
  t.is(out.length, 0);
  t.is(h.server.stats.dropped.pool_exhausted, 1);
  t.true(h.warnings.some((w) => /pool exhausted/.test(w)));
  t.is((await h.one(a.renew()))!.type, DHCPACK);
  t.is((await h.one(b.rebind()))!.type, DHCPACK);
  t.is((await h.one(a.discover()))!.type, DHCPOFFER, 'a bound client rediscovering gets its own address');
});

test('rate limit: new leases per site per minute; existing clients and other sites unaffected', async (t) => {
  const h = setup(t, { rate_limit_per_site_per_minute: 3 });
  const clients = Array.from({ length: 5 }, (_, i) => new SimClient(simMac(100 + i)));
  let offered = 0;
  for (const c of clients) if ((await h.one(c.discover(), 'hostA'))?.type === DHCPOFFER) offered++;
  t.is(offered, 3);
  t.is(h.server.stats.dropped.rate_limited, 2);
  t.true(h.warnings.some((w) => /rate_limit_per_site_per_minute/.test(w)));
  // A client straight to REQUEST (INIT-REBOOT) is limited too.
  t.is(await h.one(new SimClient(simMac(200)).reboot(ip('192.168.77.180')), 'hostA'), null);
  // The three offered complete, without spending more.
  for (const c of clients.slice(0, 3)) {
    const o = await h.one(c.discover(), 'hostA');
    const ack = await h.one(c.select(o!), 'hostA');
    t.is(ack!.type, DHCPACK);
    c.bound(ack!);
  }
  t.is(
    (await h.one(new SimClient(simMac(300)).discover(), 'hostB'))!.type,
    DHCPOFFER,
    'another site has its own budget',
  );
  t.is((await h.one(clients[0].renew(), 'hostA'))!.type, DHCPACK, 'renewals need no budget');
  h.advance(20_000); // one token back (3 per 60 s)
  t.is((await h.one(clients[3].discover(), 'hostA'))!.type, DHCPOFFER);
  t.is(await h.one(clients[4].discover(), 'hostA'), null);
  h.advance(20_000);
  t.is((await h.one(clients[4].discover(), 'hostA'))!.type, DHCPOFFER);
});

test('serve_local false: the home LAN is left to its own server; peers are always consumed', async (t) => {
  const h = setup(t);
  const c = new SimClient(simMac(1));
  const { consumed, out } = await h.exchange(c.discover(), 'local');
  t.false(consumed, 'a local broadcast goes on to the home LAN as usual');
  t.is(out.length, 0);
  const unicast = clientFrame({
    type: 3,
    mac: simMac(1),
    xid: 1,
    ciaddr: ip('192.168.77.120'),
    dstIp: SERVER,
    dstMac: h.server.mac,
  });
  t.true(h.server.offer(unicast, 'local'), 'unicast to our MAC is ours to drop');
  t.is(h.server.stats.dropped.local_not_served, 1);
  t.is(h.sent.length, 0);
  // From a peer: consumed even when malformed, never leaked.
  const bad = clientFrame({ type: 1, mac: simMac(2), xid: 1 });
  bad.writeUInt32BE(0, FRAME_HEADROOM_BYTES + 236); // break the magic cookie
  t.true(h.server.offer(bad, 'hostA'));
  t.is(h.server.stats.dropped.malformed, 1);
  t.false(h.server.offer(bad, 'local'), "a malformed local broadcast is the home LAN's business");
});

test('serve_local true: local clients are served, replies go to local', async (t) => {
  const h = setup(t, { serve_local: true });
  const c = new SimClient(simMac(1));
  const ack = await h.dora(c, 'local');
  t.is(ack.type, DHCPACK);
  t.is(h.server.leases()[0].site, 'local');
});

test("another server's OFFER is counted and logged, and not consumed", async (t) => {
  const h = setup(t);
  const chaddr = Buffer.alloc(16);
  simMac(1).copy(chaddr);
  const f = encodeDhcp(
    {
      op: 2,
      htype: 1,
      hlen: 6,
      hops: 0,
      xid: 1,
      secs: 0,
      flags: 0,
      ciaddr: 0,
      yiaddr: ip('192.168.77.30'),
      siaddr: 0,
      giaddr: 0,
      chaddr,
    },
    [
      [53, u8(DHCPOFFER)],
      [54, u32(ip('192.168.77.1'))],
    ],
    548,
    FRAME_HEADROOM_BYTES,
  )!;
  fillUdpHeaders(
    f,
    Buffer.alloc(6, 0xff),
    Buffer.from([0, 0x11, 0x22, 0x33, 0x44, 0x55]),
    ip('192.168.77.1'),
    0xffffffff,
    67,
    68,
  );
  t.false(h.server.offer(f, 'local'));
  t.false(h.server.offer(f, 'local'));
  t.is(h.server.stats.foreignOffers, 2);
  t.is(h.warnings.filter((w) => /another DHCP server/.test(w)).length, 1, 'the log line is rate-limited');
});

test('relayed messages, wrong hardware types and BOOTP without a message type are dropped and counted', async (t) => {
  const h = setup(t);
  const relayed = clientFrame({ type: 1, mac: simMac(1), xid: 1 });
  relayed.writeUInt32BE(ip('10.0.0.1'), FRAME_HEADROOM_BYTES + 24);
  t.true(h.server.offer(relayed, 'hostA'));
  t.is(h.server.stats.dropped.relayed, 1);
  const hw = clientFrame({ type: 1, mac: simMac(1), xid: 1 });
  hw[FRAME_HEADROOM_BYTES + 1] = 6; // IEEE 802
  t.true(h.server.offer(hw, 'hostA'));
  t.is(h.server.stats.dropped.malformed, 1);
  const ack = clientFrame({ type: DHCPACK, mac: simMac(1), xid: 1 });
  t.true(h.server.offer(ack, 'hostA'));
  t.is(h.server.stats.dropped.unknown_type, 1);
  t.is(h.sent.length, 0);
});

test('option overload: replies too big for a 576-byte client use file/sname; a larger max size avoids it', async (t) => {
  const routes = Array.from({ length: 25 }, (_, i) => ({ destination: `10.${i}.0.0/24`, gateway: '192.168.77.1' }));
  const dns = Array.from({ length: 16 }, (_, i) => `192.168.77.${20 + i}`);
  const h = setup(t, { routes, dns });
  const small = await h.one(clientFrame({ type: 1, mac: simMac(1), xid: 1, style: 'udhcpc' })); // max size 576
  t.is(small!.type, DHCPOFFER);
  t.not(small!.msg.overload, 0, 'options spill into file/sname');
  t.is(decodeClasslessRoutes(small!.msg.options.get(OPT_CLASSLESS_ROUTES)!)!.length, 26);
  t.is(small!.msg.options.get(OPT_DNS)!.length, 64);
  const big = await h.one(clientFrame({ type: 1, mac: simMac(2), xid: 1, style: 'dhcpcd' })); // max size 1472
  t.is(big!.msg.overload, 0);
  t.is(decodeClasslessRoutes(big!.msg.options.get(OPT_CLASSLESS_ROUTES)!)!.length, 26);
});

test('restart: leases survive close/open, renewals keep their address, new clients get others', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hwdhcp-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const h1 = setup(t, {}, dir);
  const clients = Array.from({ length: 5 }, (_, i) => new SimClient(simMac(i + 1)));
  for (const c of clients) await h1.dora(c);
  await h1.exchange(clients[4].release());
  h1.server.close();
  h1.server.close(); // idempotent
  t.false(h1.server.offer(clients[0].renew(), 'hostA'), 'closed: ignores frames');

  const h2 = setup(t, {}, dir);
  t.is(h2.server.stats.leasesActive, 4);
  const ack = await h2.one(clients[0].renew());
  t.is(ack!.msg.yiaddr, clients[0].ip);
  const n = new SimClient(simMac(99));
  await h2.dora(n);
  t.false(clients.slice(0, 4).some((c) => c.ip === n.ip));

  const rows = listLeases(path.join(dir, 'leases.db'), h2.now());
  t.is(rows.length, 6);
  t.deepEqual(
    rows.map((r) => r.ip),
    [...rows.map((r) => r.ip)].sort((a, b) => ip(a) - ip(b)),
  );
  const table = formatLeases(rows, false, h2.now());
  t.regex(table.split('\n')[0], /^MAC\s+IP\s+HOSTNAME\s+EXPIRES\s+SITE$/);
  t.regex(table, /52:54:00:00:00:01\s+192\.168\.77\.\d+\s+-\s+\S+ \(in 60m\)\s+hostA/);
  t.regex(table, /released 0s ago/);
  const json = JSON.parse(formatLeases(rows, true));
  t.is(json.length, 6);
  t.is(json[0].site, 'hostA');
});

test('leases CLI: a missing database is an OperatorError naming the file', (t) => {
  const err = t.throws(() => listLeases('/nonexistent/hw/leases.db'));
  t.regex(err!.message, /\/nonexistent\/hw\/leases\.db/);
  t.is((err as { code?: string }).code, 'EDHCPDB');
});

test('server MAC is locally administered, unicast and stable per server_ip', (t) => {
  const m = serverMac('192.168.77.2');
  t.is(m[0] & 3, 2);
  t.deepEqual(serverMac('192.168.77.2'), m);
  t.notDeepEqual(serverMac('192.168.77.3'), m);
});

// The DHCP server, fed by the switch. Frames flow: offer() classifies a frame (ARP for server_ip, a client
// message to port 67, another server's reply) → the RFC 2131 handler for the message type decides →
// replies are built as whole Ethernet frames and sent to the one port the request came from.
//
// Durability: a lease is written to the store before its ACK leaves. Writes made while handling frames are
// queued and committed in one transaction at the end of the event-loop turn (flush, via setImmediate); the
// ACKs of that turn are sent only after the commit returned. OFFERs, NAKs and ARP replies need no commit
// and go out at once.
//
// Nothing here throws out of offer(): malformed input is a counter, and a bug is caught and counted too.
import { createHash } from 'node:crypto';
import { OperatorError } from '../errors.ts';
import {
  ARP_OP_REQUEST,
  BOOTREPLY,
  BOOTREQUEST,
  DECLINE_QUARANTINE_MS,
  DHCP_CLIENT_PORT,
  DHCP_SERVER_PORT,
  DHCPACK,
  DHCPDECLINE,
  DHCPDISCOVER,
  DHCPINFORM,
  DHCPNAK,
  DHCPOFFER,
  DHCPRELEASE,
  DHCPREQUEST,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  HOSTNAME_MAX_BYTES,
  HTYPE_ETHERNET,
  IP_DATAGRAM_MIN_BYTES,
  IP_PROTO_UDP,
  LOG_REPEAT_INTERVAL_MS,
  MAC_BYTES,
  OFFER_HOLD_MS,
  OPT_BROADCAST,
  OPT_CLASSLESS_ROUTES,
  OPT_CLIENT_ID,
  OPT_DNS,
  OPT_DOMAIN,
  OPT_HOSTNAME,
  OPT_INTERFACE_MTU,
  OPT_REQUESTED_IP,
  OPT_ROUTER,
  OPT_SERVER_ID,
  OPT_SUBNET_MASK,
  RATE_WINDOW_MS,
} from './constants.ts';
import {
  decodeDhcp,
  encodeClasslessRoutes,
  ipList,
  messageType,
  optionIp,
  u16,
  u32,
  type ClasslessRoute,
  type DhcpMessage,
  type OptionList,
} from './codec.ts';
import type { DhcpConfig } from './config.ts';
import { buildArpReply, ethertype, macEquals, parseArp, parseUdp, type UdpView } from './frame.ts';
import { formatMac, macNumber, macString } from '../addr.ts';
import { broadcastOf, formatIPv4, inCidr, parseCidr, parseIPv4, prefixMask, type Cidr } from './ip.ts';
import { SiteBudget } from './ratelimit.ts';
import { buildReply, type ReplyContext } from './reply.ts';
import { LeaseStore, type Lease, type LeaseState } from './store.ts';
import { LeaseTable } from './table.ts';

/** pino-compatible: (fields, message). */
export interface DhcpLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  debug(obj: object, msg?: string): void;
  isLevelEnabled?(level: string): boolean;
}

export interface DhcpServerOptions {
  /** The overlay MTU (sent as option 26, and the cap on reply size). */
  mtu: number;
  /** Send a whole Ethernet frame to exactly this port ('local' or a peer site). OWNERSHIP passes. */
  send: (frame: Buffer, to: string) => void;
  log?: DhcpLogger;
  /** Clock in ms since the epoch (tests pass a fake one). */
  now?: () => number;
  /** The port ('local' or a peer site) the switch places a MAC at now (the site a lease may follow to). */
  macPort?: (mac: string) => string | null;
}

export interface DhcpLeaseInfo {
  mac: string;
  ip: string;
  hostname: string | null;
  clientId: string | null;
  expiresAt: number;
  site: string;
  state: LeaseState;
}

function newStats(table: () => number) {
  return {
    messages: { discover: 0, offer: 0, request: 0, ack: 0, nak: 0, release: 0, decline: 0, inform: 0 },
    dropped: {
      malformed: 0, // undecodable DHCP, bad option lengths, wrong hardware type
      rate_limited: 0, // a site asked for more new leases than its budget
      pool_exhausted: 0,
      not_for_us: 0, // addressed to our MAC/IP but not something we serve; DECLINE/RELEASE of an address not theirs
      other_server: 0, // REQUEST/DECLINE/RELEASE naming another server
      local_not_served: 0, // from this site's LAN while serve_local is false (unicast to us)
      relayed: 0, // giaddr set: relay agents are not supported
      unknown_type: 0, // BOOTP without a DHCP message type, or a type a server does not receive
      reservation_busy: 0, // a reserved address still leased to another client
      reply_too_big: 0,
      store_error: 0, // ACKs not sent because the commit failed
      send_error: 0,
      internal_error: 0,
      chaddr_mismatch: 0, // chaddr is not the frame's source MAC (a guest asking for someone else)
      not_holder: 0, // RELEASE/DECLINE of a lease held by another MAC or site
      wrong_site: 0, // a lease held at another site, asked for from a site the MAC does not live at
      site_cap: 0, // the site already holds dhcp.max_leases_per_site leases
      mac_cap: 0, // the MAC already holds dhcp.max_leases_per_mac leases (client-id games)
    },
    clientIdConflicts: 0, // a client-id held by another MAC's active lease: keyed by MAC instead
    renewals: 0,
    rebinds: 0,
    expired: 0,
    foreignOffers: 0, // OFFERs from another DHCP server seen on the segment
    addressConflicts: 0, // someone else claims server_ip in ARP
    arpReplies: 0,
    commits: 0,
    get leasesActive(): number {
      return table();
    },
  };
}
export type DhcpStats = ReturnType<typeof newStats>;

interface Client {
  key: string;
  mac: string;
  chaddr: Buffer; // 16 bytes, copied
  clientId: string | null;
  clientIdRaw: Buffer | undefined;
  hostname: string | null;
  site: string;
}

const BROADCAST_IP = 0xffffffff;
const CAP_RECOUNT_MS = 1_000;
const HOSTNAME_RE = /^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$/;

export class DhcpServer {
  readonly mac: Buffer;
  readonly stats: DhcpStats;
  private readonly serverIp: number;
  private readonly subnet: Cidr;
  private readonly subnetBroadcast: number;
  private readonly reservedByMac = new Map<string, number>();
  private readonly reservedByIp = new Map<number, string>();
  private readonly leaseMs: number;
  private readonly replyCtx: ReplyContext;
  private readonly table: LeaseTable;
  private readonly budget: SiteBudget;
  private readonly send: (frame: Buffer, to: string) => void;
  private readonly log: DhcpLogger | undefined;
  private readonly debug: boolean;
  private readonly now: () => number;
  private readonly macPort: ((mac: string) => string | null) | undefined;
  private readonly logged = new Map<string, { at: number; suppressed: number }>();
  private pendingAcks: Array<[Buffer, string]> = [];
  private capCache: { atMs: number; site: Map<string, number>; mac: Map<string, number> } | null = null;
  private flushScheduled = false;
  private closed = false;

  private constructor(
    readonly cfg: DhcpConfig,
    private readonly store: LeaseStore,
    opts: DhcpServerOptions,
  ) {
    if (!Number.isInteger(opts.mtu) || opts.mtu < IP_DATAGRAM_MIN_BYTES || opts.mtu > 65535) {
      throw new RangeError(`DhcpServer: mtu ${opts.mtu} must be a whole number of bytes from ${IP_DATAGRAM_MIN_BYTES}`);
    }
    this.send = opts.send;
    this.log = opts.log;
    this.debug = opts.log?.isLevelEnabled?.('debug') ?? false;
    this.now = opts.now ?? Date.now;
    this.macPort = opts.macPort;
    const ip = (s: string) => parseIPv4(s)!;
    this.serverIp = ip(cfg.serverIp);
    const c = parseCidr(cfg.subnet)!;
    this.subnet = { network: c.network, prefix: c.prefix };
    this.subnetBroadcast = broadcastOf(this.subnet);
    this.mac = serverMac(cfg.serverIp);
    this.leaseMs = cfg.leaseSeconds * 1000;
    const notDynamic = new Set<number>([this.serverIp]);
    if (cfg.router) notDynamic.add(ip(cfg.router));
    for (const d of cfg.dns ?? []) notDynamic.add(ip(d));
    for (const r of cfg.reservations) {
      this.reservedByMac.set(r.mac, ip(r.ip));
      this.reservedByIp.set(ip(r.ip), r.mac);
      notDynamic.add(ip(r.ip));
    }
    this.table = new LeaseTable(ip(cfg.pool.start), ip(cfg.pool.end), notDynamic);
    this.budget = new SiteBudget(cfg.newLeasesPerSitePerMinute, RATE_WINDOW_MS);
    this.stats = newStats(() => this.table.activeCount(this.now()));

    const o: OptionList = [
      [OPT_SUBNET_MASK, u32(prefixMask(this.subnet.prefix))],
      [OPT_BROADCAST, u32(this.subnetBroadcast)],
    ];
    if (cfg.router) o.push([OPT_ROUTER, u32(ip(cfg.router))]);
    if (cfg.dns) o.push([OPT_DNS, ipList(cfg.dns.map(ip))]);
    if (cfg.domain) o.push([OPT_DOMAIN, Buffer.from(cfg.domain, 'ascii')]);
    o.push([OPT_INTERFACE_MTU, u16(opts.mtu)]);
    if (cfg.classlessRoutes && cfg.classlessRoutes.length > 0) {
      // Clients that take option 121 ignore option 3 (RFC 3442): repeat the default route inside it.
      const routes: ClasslessRoute[] = [];
      if (cfg.router) routes.push({ network: 0, prefix: 0, gateway: ip(cfg.router) });
      for (const r of cfg.classlessRoutes) {
        const d = parseCidr(r.destination)!;
        routes.push({ network: d.network, prefix: d.prefix, gateway: ip(r.gateway) });
      }
      o.push([OPT_CLASSLESS_ROUTES, encodeClasslessRoutes(routes)]);
    }
    this.replyCtx = {
      serverIp: this.serverIp,
      serverMac: this.mac,
      leaseSeconds: cfg.leaseSeconds,
      commonOptions: o,
      maxIpBytes: opts.mtu,
    };
  }

  /** Open the lease store, load it and start serving. Throws OperatorError if the store cannot be opened. */
  static open(cfg: DhcpConfig, opts: DhcpServerOptions): DhcpServer {
    const store = LeaseStore.open(cfg.leaseDb);
    try {
      const server = new DhcpServer(cfg, store, opts);
      server.loadLeases();
      return server;
    } catch (err) {
      store.close();
      if (err instanceof RangeError) throw err;
      throw new OperatorError(
        'EDHCPDB',
        `cannot load the leases in ${cfg.leaseDb}: ${(err as Error).message}; ` +
          'if the file is damaged, move it away (clients then get new addresses) and restart',
      );
    }
  }

  private loadLeases(): void {
    const now = this.now();
    const { leases, quarantine } = this.store.load();
    const kept: Lease[] = [];
    for (const l of leases) {
      if (inCidr(l.ip, this.subnet)) kept.push(l);
      else this.store.remove(l.key); // the subnet changed: the address is no longer ours to track
    }
    this.table.load(
      kept,
      quarantine.filter((q) => inCidr(q.ip, this.subnet)),
      now,
    );
    if (this.store.pending > 0) this.store.commit();
    this.log?.info(
      {
        leases: kept.length,
        active: this.table.activeCount(now),
        dropped: leases.length - kept.length,
        db: this.cfg.leaseDb,
      },
      'dhcp: lease store loaded',
    );
  }

  // --- Frames in ------------------------------------------------------------------------------------

  /** A frame from port `from` ('local' or a peer site): every broadcast and every frame to `mac`. Returns
   *  true if consumed (the switch then does not forward it). The frame is BORROWED: not kept. */
  offer(frame: Buffer, from: string): boolean {
    if (this.closed) return false;
    try {
      return this.classify(frame, from);
    } catch (err) {
      this.stats.dropped.internal_error++;
      this.warnLimited(
        'internal',
        { err: String((err as Error)?.stack ?? err) },
        'dhcp: internal error handling a frame (dropped)',
      );
      return from !== 'local' && isDhcpToServer(frame);
    }
  }

  private classify(frame: Buffer, from: string): boolean {
    const toUs = frame.length >= 6 && macEquals(frame, this.mac);
    const type = ethertype(frame);
    if (type === ETHERTYPE_ARP) return this.arp(frame, from, toUs);
    if (type !== ETHERTYPE_IPV4) return this.notForUs(toUs);
    const udp = parseUdp(frame);
    if (udp === null) {
      if (isDhcpToServer(frame)) return this.malformed(from, toUs);
      return this.notForUs(toUs);
    }
    if (udp.dstPort === DHCP_SERVER_PORT) return this.fromClient(udp, from, toUs);
    if (udp.srcPort === DHCP_SERVER_PORT && udp.dstPort === DHCP_CLIENT_PORT) {
      this.foreignServer(udp, from);
      return toUs;
    }
    return this.notForUs(toUs);
  }

  private notForUs(toUs: boolean): boolean {
    if (toUs) this.stats.dropped.not_for_us++;
    return toUs;
  }

  private malformed(from: string, toUs: boolean): boolean {
    if (from === 'local' && !this.cfg.serveLocal && !toUs) return false; // the home LAN's business
    this.stats.dropped.malformed++;
    return true;
  }

  private arp(frame: Buffer, from: string, toUs: boolean): boolean {
    const a = parseArp(frame);
    if (a === null) return this.notForUs(toUs);
    if (a.senderIp === this.serverIp && !macEquals(a.senderMac, this.mac)) {
      this.stats.addressConflicts++;
      this.warnLimited(
        'conflict',
        { ip: this.cfg.serverIp, mac: formatMac(a.senderMac), site: from },
        'dhcp: another host claims server_ip on the segment; give the DHCP server an unused address (dhcp.server_ip)',
      );
    }
    if (a.op === ARP_OP_REQUEST && a.targetIp === this.serverIp) {
      this.stats.arpReplies++;
      this.transmit(buildArpReply(a, this.mac, this.serverIp), from);
      return true;
    }
    return this.notForUs(toUs);
  }

  /** UDP to port 67: a client (or relay) talking to a server. */
  private fromClient(udp: UdpView, from: string, toUs: boolean): boolean {
    if (from === 'local' && !this.cfg.serveLocal) {
      // The home LAN has its own server. Broadcasts go on as usual; unicast to us is dropped.
      if (!toUs) return false;
      this.stats.dropped.local_not_served++;
      return true;
    }
    // From here on the frame is consumed: a guest's DHCP never leaks onto the home LAN.
    if (udp.dstIp !== BROADCAST_IP && udp.dstIp !== this.serverIp && udp.dstIp !== this.subnetBroadcast) {
      this.stats.dropped.not_for_us++;
      return true;
    }
    const m = decodeDhcp(udp.payload);
    if (m === null || m.op !== BOOTREQUEST || m.htype !== HTYPE_ETHERNET || m.hlen !== MAC_BYTES) {
      this.stats.dropped.malformed++;
      return true;
    }
    if (m.giaddr !== 0) {
      this.stats.dropped.relayed++;
      return true;
    }
    if (!macEquals(m.chaddr, udp.srcMac)) {
      // Only a client's own MAC may ask (the switch vouches for the source MAC's site, not for chaddr).
      this.stats.dropped.chaddr_mismatch++;
      this.warnLimited(
        `chaddr:${from}`,
        { site: from, chaddr: formatMac(m.chaddr), source: formatMac(udp.srcMac) },
        'dhcp: chaddr is not the frame source MAC; dropped',
      );
      return true;
    }
    const client = this.clientOf(m, from);
    if (client === null) {
      this.stats.dropped.malformed++;
      return true;
    }
    const held = this.table.byKey.get(client.key);
    if (held !== undefined && held.site !== from && this.table.isActive(held, this.now())) {
      // A lease follows its MAC to another site only once the switch has it there (an accepted move).
      const at = this.macPort?.(client.mac);
      if (at !== undefined && at !== from) {
        this.stats.dropped.wrong_site++;
        this.warnLimited(
          `wrong_site:${from}`,
          { site: from, mac: client.mac, leaseSite: held.site },
          'dhcp: a request for a lease held at another site, from a site the MAC does not live at; dropped',
        );
        return true;
      }
    }
    const broadcast = udp.dstIp !== this.serverIp;
    switch (messageType(m)) {
      case DHCPDISCOVER:
        this.discover(m, client);
        break;
      case DHCPREQUEST:
        this.request(m, client, broadcast);
        break;
      case DHCPDECLINE:
        this.decline(m, client);
        break;
      case DHCPRELEASE:
        this.release(m, client);
        break;
      case DHCPINFORM:
        this.inform(m, client, udp);
        break;
      default:
        this.stats.dropped.unknown_type++;
    }
    return true;
  }

  private clientOf(m: DhcpMessage, site: string): Client | null {
    const mac = formatMac(m.chaddr);
    if (m.chaddr[0] & 1) return null; // a multicast chaddr is no client
    const id = m.options.get(OPT_CLIENT_ID);
    // RFC 2132 9.14: at least 2 bytes (type + something). Shorter ones are ignored: key by MAC.
    const clientId = id !== undefined && id.length >= 2 ? id.toString('hex') : null;
    let key = clientId !== null ? `id:${clientId}` : `mac:${mac}`;
    if (clientId !== null) {
      // A client-id is a claim, not a proof: while another MAC holds a lease under it (a cloned image, or a
      // guest copying a neighbour's id to take its address), this MAC is a different client.
      const other = this.table.byKey.get(key);
      if (other !== undefined && other.mac !== mac && this.table.isActive(other, this.now())) {
        this.stats.clientIdConflicts++;
        key = `mac:${mac}`;
      }
    }
    return {
      key,
      mac,
      chaddr: Buffer.from(m.chaddr),
      clientId,
      clientIdRaw: clientId !== null ? Buffer.from(id!) : undefined,
      hostname: hostnameOf(m.options.get(OPT_HOSTNAME)),
      site,
    };
  }

  /** Another server's reply seen on the segment. */
  private foreignServer(udp: UdpView, from: string): void {
    if (macEquals(udp.srcMac, this.mac)) return; // our own, looped back
    const m = decodeDhcp(udp.payload);
    if (m === null || m.op !== BOOTREPLY || messageType(m) !== DHCPOFFER) return;
    this.stats.foreignOffers++;
    this.warnLimited(
      'foreign',
      {
        server: formatIPv4(optionIp(m, OPT_SERVER_ID) ?? udp.srcIp),
        serverMac: formatMac(udp.srcMac),
        site: from,
        offered: formatIPv4(m.yiaddr),
        foreignOffers: this.stats.foreignOffers,
      },
      'dhcp: another DHCP server is offering addresses on the overlay segment; make sure its pool does not overlap dhcp.pool',
    );
  }

  // --- RFC 2131 section 4.3 -------------------------------------------------------------------------

  private discover(m: DhcpMessage, c: Client): void {
    this.stats.messages.discover++;
    const now = this.now();
    const ip = this.chooseAddress(m, c, now);
    if (ip === null) return;
    this.table.setOffer(c.key, ip, now + OFFER_HOLD_MS);
    this.stats.messages.offer++;
    this.reply(DHCPOFFER, m, c, ip, true, false);
  }

  /** The address to offer, or null (counted and logged). */
  private chooseAddress(m: DhcpMessage, c: Client, now: number): number | null {
    const reserved = this.reservedByMac.get(c.mac);
    if (reserved !== undefined) {
      if (this.table.freeFor(reserved, c.key, now)) return reserved;
      this.stats.dropped.reservation_busy++;
      this.warnLimited(
        'reservation_busy',
        { mac: c.mac, ip: formatIPv4(reserved) },
        'dhcp: a reserved address is still leased to another client; it is free again when that lease ends',
      );
      return null;
    }
    const offered = this.table.offerOf(c.key, now);
    if (offered !== null) return offered;
    const lease = this.table.byKey.get(c.key);
    if (lease !== undefined && this.assignable(lease.ip, c) && this.table.freeFor(lease.ip, c.key, now))
      return lease.ip;
    const isNew = lease === undefined;
    if (isNew && !this.budget.available(c.site, now)) return this.rateLimited(c);
    if (isNew && this.capReached(c, now)) return null;
    let ip: number | null = null;
    const requested = optionIp(m, OPT_REQUESTED_IP);
    if (requested !== null && this.assignable(requested, c) && this.table.freeFor(requested, c.key, now))
      ip = requested;
    ip ??= this.table.allocate(c.key, now);
    if (ip === null) {
      ip = this.table.reclaimQuarantined();
      if (ip !== null) {
        this.store.unquarantine(ip);
        this.scheduleFlush();
        this.warnLimited(
          'reclaim',
          { ip: formatIPv4(ip), mac: c.mac, site: c.site },
          'dhcp: pool exhausted; offering a declined (quarantined) address early',
        );
      }
    }
    if (ip === null) {
      this.stats.dropped.pool_exhausted++;
      this.warnLimited(
        'pool_exhausted',
        { pool: `${this.cfg.pool.start}-${this.cfg.pool.end}`, mac: c.mac, site: c.site },
        'dhcp: address pool exhausted, no offer made; enlarge dhcp.pool or shorten dhcp.lease_seconds',
      );
      return null;
    }
    if (isNew) this.budget.take(c.site, now);
    return ip;
  }

  /** Per-site and per-MAC caps on active leases (a new client only). Counted and logged when reached. */
  private capReached(c: Client, now: number): boolean {
    const counts = this.capCounts(now);
    const site = counts.site.get(c.site) ?? 0;
    const mac = counts.mac.get(c.mac) ?? 0;
    if (mac >= this.cfg.maxLeasesPerMac) {
      this.stats.dropped.mac_cap++;
      this.warnLimited(
        `mac_cap:${c.site}`,
        { site: c.site, mac: c.mac, leases: mac },
        'dhcp: a MAC asks for more leases than dhcp.max_leases_per_mac allows; request ignored',
      );
      return true;
    }
    if (c.site !== 'local' && site >= this.cfg.maxLeasesPerSite) {
      this.stats.dropped.site_cap++;
      this.warnLimited(
        `site_cap:${c.site}`,
        { site: c.site, leases: site },
        'dhcp: a site holds dhcp.max_leases_per_site leases already; request ignored',
      );
      return true;
    }
    return false;
  }

  /** Active leases per site and per MAC: counted afresh at most once a second, plus the leases bound since
   *  (ends of leases in between are noticed at the next count: the caps err on the strict side). */
  private capCounts(now: number): { site: Map<string, number>; mac: Map<string, number> } {
    let cc = this.capCache;
    if (cc === null || now - cc.atMs >= CAP_RECOUNT_MS || now < cc.atMs) {
      cc = { atMs: now, site: new Map(), mac: new Map() };
      for (const l of this.table.byKey.values()) {
        if (!this.table.isActive(l, now)) continue;
        cc.site.set(l.site, (cc.site.get(l.site) ?? 0) + 1);
        cc.mac.set(l.mac, (cc.mac.get(l.mac) ?? 0) + 1);
      }
      this.capCache = cc;
    }
    return cc;
  }

  private rateLimited(c: Client): null {
    this.stats.dropped.rate_limited++;
    this.warnLimited(
      `rate:${c.site}`,
      { site: c.site, mac: c.mac, perMinute: this.cfg.newLeasesPerSitePerMinute },
      'dhcp: a site asks for more new leases than dhcp.rate_limit_per_site_per_minute allows; request ignored',
    );
    return null;
  }

  /** Could `ip` ever be this client's? Reserved addresses only for their MAC; reserved MACs only their address. */
  private assignable(ip: number, c: Client): boolean {
    const owner = this.reservedByIp.get(ip);
    if (owner !== undefined) return owner === c.mac;
    if (this.reservedByMac.has(c.mac)) return false;
    return this.table.inPool(ip);
  }

  private request(m: DhcpMessage, c: Client, broadcast: boolean): void {
    this.stats.messages.request++;
    const now = this.now();
    const serverId = optionIp(m, OPT_SERVER_ID);
    if (serverId !== null && serverId !== this.serverIp) {
      // SELECTING, and the client chose another server's offer: release ours.
      this.table.dropOffer(c.key);
      this.stats.dropped.other_server++;
      return;
    }
    const requested = optionIp(m, OPT_REQUESTED_IP);
    let ip: number;
    if (serverId !== null)
      ip = requested ?? m.ciaddr; // SELECTING
    else if (m.ciaddr !== 0)
      ip = m.ciaddr; // RENEWING (unicast) or REBINDING (broadcast)
    else if (requested !== null)
      ip = requested; // INIT-REBOOT
    else {
      this.stats.dropped.malformed++;
      return;
    }
    if (ip === 0) {
      this.stats.dropped.malformed++;
      return;
    }
    if (!inCidr(ip, this.subnet) || !this.assignable(ip, c) || !this.table.freeFor(ip, c.key, now)) {
      this.nak(m, c, `${formatIPv4(ip)} is not available on this segment`);
      return;
    }
    const prev = this.table.byKey.get(c.key);
    if (prev === undefined) {
      // A client new to us asking straight for an address (reboot after our store was lost, or a guest
      // that kept an address from elsewhere): it spends a token like a DISCOVER would.
      if (this.table.offerOf(c.key, now) !== ip) {
        if (!this.budget.available(c.site, now)) {
          this.rateLimited(c);
          return;
        }
        if (this.capReached(c, now)) return;
        this.budget.take(c.site, now);
      }
    }
    if (serverId === null && m.ciaddr !== 0) {
      if (broadcast) this.stats.rebinds++;
      else this.stats.renewals++;
    }
    const lease: Lease = {
      key: c.key,
      ip,
      mac: c.mac,
      clientId: c.clientId,
      hostname: c.hostname ?? prev?.hostname ?? null,
      site: c.site,
      expiresAt: now + this.leaseMs,
      state: 'bound',
    };
    this.table.bind(lease);
    if (prev === undefined && this.capCache !== null) {
      this.capCache.site.set(c.site, (this.capCache.site.get(c.site) ?? 0) + 1);
      this.capCache.mac.set(c.mac, (this.capCache.mac.get(c.mac) ?? 0) + 1);
    }
    this.store.put(lease, now);
    this.stats.messages.ack++;
    this.reply(DHCPACK, m, c, ip, true, true);
    if (this.debug && prev?.ip !== ip)
      this.log?.debug({ mac: c.mac, ip: formatIPv4(ip), site: c.site }, 'dhcp: lease bound');
  }

  private decline(m: DhcpMessage, c: Client): void {
    this.stats.messages.decline++;
    const serverId = optionIp(m, OPT_SERVER_ID);
    if (serverId !== null && serverId !== this.serverIp) {
      this.stats.dropped.other_server++;
      return;
    }
    const ip = optionIp(m, OPT_REQUESTED_IP);
    if (ip === null) {
      this.stats.dropped.malformed++;
      return;
    }
    const now = this.now();
    const lease = this.table.byKey.get(c.key);
    // Only the client that was given the address may decline it (else any guest could empty the pool).
    if (lease?.ip !== ip && this.table.offerOf(c.key, now) !== ip) {
      this.stats.dropped.not_for_us++;
      return;
    }
    if (lease?.ip === ip && !this.holds(lease, c)) return;
    const until = now + DECLINE_QUARANTINE_MS;
    this.table.setQuarantine(ip, until);
    this.store.quarantine(ip, until);
    this.scheduleFlush();
    this.warnLimited(
      'decline',
      { ip: formatIPv4(ip), mac: c.mac, site: c.site, minutes: DECLINE_QUARANTINE_MS / 60_000 },
      'dhcp: a client declined its address (another host answers ARP for it); address quarantined',
    );
  }

  private release(m: DhcpMessage, c: Client): void {
    this.stats.messages.release++;
    const serverId = optionIp(m, OPT_SERVER_ID);
    if (serverId !== null && serverId !== this.serverIp) {
      this.stats.dropped.other_server++;
      return;
    }
    const now = this.now();
    const lease = this.table.byKey.get(c.key);
    if (lease === undefined || lease.ip !== m.ciaddr || !this.table.isActive(lease, now)) {
      this.stats.dropped.not_for_us++;
      return;
    }
    if (!this.holds(lease, c)) return;
    // Keep the record (the client gets the same address back if still free) but free the address.
    lease.state = 'released';
    lease.expiresAt = now;
    this.store.put(lease, now);
    this.scheduleFlush();
  }

  /** RELEASE and DECLINE only from the holder: the lease's MAC, at the lease's site. Counted if not. */
  private holds(lease: Lease, c: Client): boolean {
    if (lease.mac === c.mac && (lease.site === c.site || this.macPort?.(c.mac) === c.site)) return true;
    this.stats.dropped.not_holder++;
    this.warnLimited(
      `not_holder:${c.site}`,
      { site: c.site, mac: c.mac, ip: formatIPv4(lease.ip), holder: lease.mac, holderSite: lease.site },
      'dhcp: RELEASE or DECLINE of a lease held by another MAC or site; dropped',
    );
    return false;
  }

  private inform(m: DhcpMessage, c: Client, udp: UdpView): void {
    this.stats.messages.inform++;
    const ip = m.ciaddr !== 0 ? m.ciaddr : udp.srcIp;
    if (ip === 0 || !inCidr(ip, this.subnet)) {
      this.stats.dropped.not_for_us++;
      return;
    }
    this.stats.messages.ack++;
    this.reply(DHCPACK, m, c, 0, false, false, ip);
  }

  private nak(m: DhcpMessage, c: Client, why: string): void {
    this.stats.messages.nak++;
    this.reply(DHCPNAK, m, c, 0, false, false);
    if (this.debug) this.log?.debug({ mac: c.mac, site: c.site, why }, 'dhcp: NAK');
  }

  // --- Replies (RFC 2131 4.1, 4.3.1 table 3) ---------------------------------------------------------

  /** Build and send (or, for a committed ACK, queue until the commit) a reply to the request's port. */
  private reply(
    type: number,
    m: DhcpMessage,
    c: Client,
    yiaddr: number,
    withLease: boolean,
    afterCommit: boolean,
    informIp = 0,
  ): void {
    const frame = buildReply(this.replyCtx, type, m, c, yiaddr, withLease, informIp);
    if (frame === null) {
      this.stats.dropped.reply_too_big++;
      return;
    }
    if (afterCommit) {
      this.pendingAcks.push([frame, c.site]);
      this.scheduleFlush();
    } else {
      this.transmit(frame, c.site);
    }
  }

  private transmit(frame: Buffer, to: string): void {
    try {
      this.send(frame, to);
    } catch {
      this.stats.dropped.send_error++;
    }
  }

  // --- Commit, time ---------------------------------------------------------------------------------

  private scheduleFlush(): void {
    if (this.flushScheduled || this.closed) return;
    this.flushScheduled = true;
    setImmediate(this.flushNow);
  }

  private readonly flushNow = (): void => {
    this.flushScheduled = false;
    this.flush();
  };

  /** Commit queued lease writes, then send the ACKs that waited for them. Runs by itself at the end of
   *  each event-loop turn that queued something; callable directly (tests, close). Never throws. */
  flush(): void {
    const acks = this.pendingAcks;
    this.pendingAcks = [];
    if (this.store.pending > 0) {
      try {
        this.store.commit();
        this.stats.commits++;
      } catch (err) {
        this.stats.dropped.store_error += acks.length;
        this.warnLimited(
          'store',
          { err: (err as Error).message, db: this.cfg.leaseDb, acksDropped: acks.length },
          'dhcp: cannot write the lease store; ACKs withheld until it works again (check the disk)',
        );
        return;
      }
    }
    for (const [frame, to] of acks) this.transmit(frame, to);
  }

  /** Every TICK_MS from the daemon: lease expiry, offer and quarantine lapses, rate-limit refills. */
  tick(nowMs: number): void {
    if (this.closed) return;
    try {
      const { expired, unquarantined } = this.table.expire(nowMs);
      this.stats.expired += expired.length;
      if (this.debug)
        for (const l of expired)
          this.log?.debug({ mac: l.mac, ip: formatIPv4(l.ip), site: l.site }, 'dhcp: lease expired');
      for (const ip of unquarantined) this.store.unquarantine(ip); // expiries need no write: load() derives them
      this.budget.prune(nowMs);
      if (this.store.pending > 0) this.scheduleFlush();
    } catch (err) {
      this.stats.dropped.internal_error++;
      this.warnLimited('internal', { err: String((err as Error)?.stack ?? err) }, 'dhcp: internal error in tick');
    }
  }

  /**
   * Reservations from elsewhere (the coordinator's VMs), on top of the config's: rebuilds the reservation
   * maps. Entries that are malformed, outside the subnet, or clash with a config reservation are ignored.
   */
  setExtraReservations(list: ReadonlyArray<{ mac: string; ip: string }>): void {
    this.reservedByMac.clear();
    this.reservedByIp.clear();
    for (const r of this.cfg.reservations) {
      const ip = parseIPv4(r.ip)!;
      this.reservedByMac.set(r.mac, ip);
      this.reservedByIp.set(ip, r.mac);
    }
    for (const r of list) {
      const ip = parseIPv4(r.ip);
      const mac = r.mac.toLowerCase();
      if (
        ip === null ||
        !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(mac) ||
        !inCidr(ip, this.subnet) ||
        ip === this.serverIp
      )
        continue;
      if (this.reservedByMac.has(mac) || this.reservedByIp.has(ip)) continue;
      this.reservedByMac.set(mac, ip);
      this.reservedByIp.set(ip, mac);
    }
  }

  /** Whether it answers the serving site's own local side too (dhcp.serve_local). */
  get serveLocal(): boolean {
    return this.cfg.serveLocal;
  }

  /** The MAC (48-bit number) holding `ip` now, or null: authoritative bindings for ARP inspection. */
  macOf(ip: number, now: number): number | null {
    const l = this.table.byIp.get(ip);
    if (l === undefined || !this.table.isActive(l, now)) return null;
    return macNumber(l.mac);
  }

  /** Active leases of a MAC as [ip, expiresAtMs] (the switch tells the MAC's new site when it moves). */
  leasesOf(mac: number, now: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    const text = macString(mac);
    for (const l of this.table.byKey.values())
      if (l.mac === text && this.table.isActive(l, now)) out.push([l.ip, l.expiresAt]);
    return out;
  }

  leases(): DhcpLeaseInfo[] {
    const now = this.now();
    const out: DhcpLeaseInfo[] = [];
    for (const l of this.table.byKey.values()) {
      const state: LeaseState = l.state === 'bound' && l.expiresAt <= now ? 'expired' : l.state;
      out.push({
        mac: l.mac,
        ip: formatIPv4(l.ip),
        hostname: l.hostname,
        clientId: l.clientId,
        expiresAt: l.expiresAt,
        site: l.site,
        state,
      });
    }
    return out.sort((a, b) => parseIPv4(a.ip)! - parseIPv4(b.ip)!);
  }

  /** Commit what is queued, send the ACKs waiting for it, close the store. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    try {
      this.store.close();
    } catch {
      /* closing anyway */
    }
  }

  private warnLimited(key: string, fields: object, msg: string): void {
    if (this.log === undefined) return;
    const now = Date.now();
    const e = this.logged.get(key);
    if (e !== undefined && now - e.at < LOG_REPEAT_INTERVAL_MS) {
      e.suppressed++;
      return;
    }
    this.log.warn(e && e.suppressed > 0 ? { ...fields, suppressed: e.suppressed } : fields, msg);
    this.logged.set(key, { at: now, suppressed: 0 });
  }
}

/** The server's MAC on the segment: locally administered, unicast, stable for a given server_ip. */
export function serverMac(serverIp: string): Buffer {
  const h = createHash('sha256').update(`homewire dhcp ${serverIp}`).digest();
  return Buffer.from([0x02, h[0], h[1], h[2], h[3], h[4]]);
}

/** Cheap look at a frame that failed parseUdp: IPv4/UDP to port 67 at all? (decides malformed vs other). */
function isDhcpToServer(frame: Buffer): boolean {
  if (frame.length < 14 + 20 + 4 || frame.readUInt16BE(12) !== ETHERTYPE_IPV4 || frame[14 + 9] !== IP_PROTO_UDP)
    return false;
  const ihl = (frame[14] & 15) * 4;
  if (ihl < 20 || 14 + ihl + 4 > frame.length) return false;
  return frame.readUInt16BE(14 + ihl + 2) === DHCP_SERVER_PORT;
}

/** Option 12 as a clean host name, or null (NUL-terminated names accepted; anything odd is dropped). */
function hostnameOf(v: Buffer | undefined): string | null {
  if (v === undefined) return null;
  let end = v.length;
  while (end > 0 && v[end - 1] === 0) end--;
  if (end === 0 || end > HOSTNAME_MAX_BYTES) return null;
  const s = v.toString('latin1', 0, end);
  return HOSTNAME_RE.test(s) ? s : null;
}

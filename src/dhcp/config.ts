// The `dhcp:` section of the daemon config: validated here, in one place. Every problem is a ConfigError that
// names the key path (e.g. "dhcp.pool") and says what to do. Addresses are kept as canonical strings; the
// server converts them to numbers once (see server.ts).
import path from 'node:path';
import { ConfigError } from '../errors.ts';
import { encodeDhcp, encodeClasslessRoutes, ipList, u16, u32, u8, type OptionList } from './codec.ts';
import {
  BOOTREPLY,
  CLASSLESS_ROUTES_MAX,
  DEFAULT_LEASE_DB,
  DEFAULT_LEASE_SECONDS,
  DEFAULT_MAX_LEASES_PER_MAC,
  DEFAULT_MAX_LEASES_PER_SITE,
  DEFAULT_NEW_LEASES_PER_SITE_PER_MINUTE,
  DHCPACK,
  DNS_SERVERS_MAX,
  HTYPE_ETHERNET,
  IP_DATAGRAM_MIN_BYTES,
  LEASE_SECONDS_MAX,
  LEASE_SECONDS_MIN,
  OPT_BROADCAST,
  OPT_CLASSLESS_ROUTES,
  OPT_DNS,
  OPT_DOMAIN,
  OPT_INTERFACE_MTU,
  OPT_LEASE_TIME,
  OPT_MESSAGE_TYPE,
  OPT_REBINDING_TIME,
  OPT_RENEWAL_TIME,
  OPT_ROUTER,
  OPT_SERVER_ID,
  OPT_SUBNET_MASK,
  POOL_ADDRESSES_MAX,
} from './constants.ts';
import { formatMac, parseMac } from '../addr.ts';
import { broadcastOf, formatIPv4, inCidr, parseCidr, parseIPv4, type Cidr } from './ip.ts';

export interface DhcpReservation {
  mac: string; // "52:54:00:00:00:10", lower case
  ip: string;
}

export interface DhcpRoute {
  destination: string; // "10.0.0.0/8"
  gateway: string;
}

export interface DhcpConfig {
  subnet: string; // "192.168.77.0/24"
  serverIp: string;
  pool: { start: string; end: string };
  router?: string;
  dns?: string[];
  domain?: string;
  leaseSeconds: number;
  reservations: DhcpReservation[];
  /** Absolute path of the SQLite lease store (":memory:" keeps leases in memory only: tests). */
  leaseDb: string;
  /** Also answer clients on this site's own LAN (port 'local'), not only clients behind the mesh. */
  serveLocal: boolean;
  /** New leases a site may take per minute beyond the ones it holds (key rate_limit_per_site_per_minute). */
  newLeasesPerSitePerMinute: number;
  /** Active leases (and offers) one peer site may hold at once; the serving site's own LAN is exempt. */
  maxLeasesPerSite: number;
  /** Active leases (and offers) one MAC may hold at once, whatever client-ids it sends. */
  maxLeasesPerMac: number;
  /** Option 121 routes (key `routes`). */
  classlessRoutes?: DhcpRoute[];
}

const KEYS = [
  'subnet',
  'server_ip',
  'pool',
  'router',
  'dns',
  'domain',
  'lease_seconds',
  'reservations',
  'lease_db',
  'serve_local',
  'rate_limit_per_site_per_minute',
  'max_leases_per_site',
  'max_leases_per_mac',
  'routes',
];
const DOMAIN_RE = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$/i;

/** Validate a raw `dhcp:` section (as parsed from YAML). Throws ConfigError. */
export function parseDhcpConfig(raw: unknown, file: string, keyPrefix = 'dhcp'): DhcpConfig {
  const k = (name: string) => (keyPrefix ? `${keyPrefix}.${name}` : name);
  const fail = (key: string, problem: string): never => {
    throw new ConfigError(file, key, problem);
  };
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    fail(keyPrefix, 'must be a mapping (subnet: ..., server_ip: ..., pool: ...)');
  }
  const o = raw as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (!KEYS.includes(key)) fail(k(key), `unknown key; allowed here: ${KEYS.join(', ')}`);
  }
  const str = (v: unknown, key: string, what: string): string => {
    if (v === undefined || v === null) fail(key, `missing: give ${what}`);
    if (typeof v !== 'string' || v.trim() === '') fail(key, `must be ${what} (a string)`);
    return (v as string).trim();
  };
  const ip = (v: unknown, key: string): number => {
    const s = str(v, key, 'an IPv4 address like 192.168.77.2');
    const n = parseIPv4(s);
    if (n === null) fail(key, `"${s}" is not an IPv4 address: write four decimal octets like 192.168.77.2`);
    return n!;
  };

  // subnet
  const subnetText = str(o.subnet, k('subnet'), 'the overlay subnet like 192.168.77.0/24');
  const cidr = parseCidr(subnetText);
  if (!cidr) fail(k('subnet'), `"${subnetText}" is not ADDRESS/PREFIX like 192.168.77.0/24`);
  const subnet: Cidr = { network: cidr!.network, prefix: cidr!.prefix };
  if (subnet.prefix < 8 || subnet.prefix > 30)
    fail(k('subnet'), `prefix /${subnet.prefix} is out of range: use /8 to /30`);
  if (!cidr!.hostBitsZero) {
    fail(
      k('subnet'),
      `"${subnetText}" has host bits set: did you mean ${formatIPv4(subnet.network)}/${subnet.prefix}?`,
    );
  }
  const bcast = broadcastOf(subnet);
  const hostIn = (n: number, key: string, what: string) => {
    if (!inCidr(n, subnet))
      fail(key, `${formatIPv4(n)} is outside the subnet ${subnetText}: ${what} must be on the overlay segment`);
    if (n === subnet.network || n === bcast)
      fail(key, `${formatIPv4(n)} is the subnet's network or broadcast address: pick a host address`);
  };

  // pool
  const poolText = str(o.pool, k('pool'), 'an address range like 192.168.77.100-192.168.77.199');
  const pm = /^([^-\s]+)\s*-\s*([^-\s]+)$/.exec(poolText);
  if (!pm) fail(k('pool'), `"${poolText}" is not FIRST-LAST like 192.168.77.100-192.168.77.199`);
  const poolStart = parseIPv4(pm![1]);
  const poolEnd = parseIPv4(pm![2]);
  if (poolStart === null || poolEnd === null)
    fail(k('pool'), `"${poolText}" is not FIRST-LAST with two IPv4 addresses`);
  hostIn(poolStart!, k('pool'), 'the pool');
  hostIn(poolEnd!, k('pool'), 'the pool');
  if (poolEnd! < poolStart!) fail(k('pool'), `"${poolText}" ends before it starts: write the lower address first`);
  if (poolEnd! - poolStart! + 1 > POOL_ADDRESSES_MAX) {
    fail(k('pool'), `"${poolText}" holds ${poolEnd! - poolStart! + 1} addresses: use at most ${POOL_ADDRESSES_MAX}`);
  }
  const inPool = (n: number) => n >= poolStart! && n <= poolEnd!;

  // server_ip
  const serverIp = ip(o.server_ip, k('server_ip'));
  hostIn(serverIp, k('server_ip'), 'server_ip');
  if (inPool(serverIp))
    fail(
      k('server_ip'),
      `${formatIPv4(serverIp)} is inside the pool ${poolText}: give the server an address outside it`,
    );

  // router, dns, domain
  let router: number | undefined;
  if (o.router !== undefined && o.router !== null) {
    router = ip(o.router, k('router'));
    hostIn(router, k('router'), 'the router');
    if (router === serverIp)
      fail(
        k('router'),
        `is the same address as server_ip: homewire's DHCP server does not route; give the home router's address`,
      );
    if (inPool(router))
      fail(
        k('router'),
        `${formatIPv4(router)} is inside the pool ${poolText}: shrink the pool so it excludes the router`,
      );
  }
  let dns: number[] | undefined;
  if (o.dns !== undefined && o.dns !== null) {
    const list = typeof o.dns === 'string' ? [o.dns] : o.dns;
    if (!Array.isArray(list) || list.length === 0)
      fail(k('dns'), 'must be a list of IPv4 addresses like [192.168.77.1]');
    if ((list as unknown[]).length > DNS_SERVERS_MAX)
      fail(k('dns'), `lists ${(list as unknown[]).length} servers: give at most ${DNS_SERVERS_MAX}`);
    dns = (list as unknown[]).map((v, i) => {
      const n = ip(v, `${k('dns')}[${i}]`);
      if (inPool(n))
        fail(
          `${k('dns')}[${i}]`,
          `${formatIPv4(n)} is inside the pool ${poolText}: a DNS server needs a fixed address outside it`,
        );
      return n;
    });
  }
  let domain: string | undefined;
  if (o.domain !== undefined && o.domain !== null) {
    domain = str(o.domain, k('domain'), 'a DNS domain like home.example');
    if (!DOMAIN_RE.test(domain))
      fail(k('domain'), `"${domain}" is not a DNS domain name (letters, digits, '-' and dots, at most 253 characters)`);
  }

  // lease_seconds
  let leaseSeconds = DEFAULT_LEASE_SECONDS;
  if (o.lease_seconds !== undefined) {
    const v = o.lease_seconds;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < LEASE_SECONDS_MIN || v > LEASE_SECONDS_MAX) {
      fail(
        k('lease_seconds'),
        `must be a whole number of seconds from ${LEASE_SECONDS_MIN} to ${LEASE_SECONDS_MAX} (one year); ${DEFAULT_LEASE_SECONDS} is usual`,
      );
    }
    leaseSeconds = v as number;
  }

  // reservations
  const reservations: DhcpReservation[] = [];
  if (o.reservations !== undefined && o.reservations !== null) {
    if (!Array.isArray(o.reservations))
      fail(k('reservations'), 'must be a list like - { mac: "52:54:00:00:00:10", ip: 192.168.77.10 }');
    const macs = new Map<string, number>();
    const ips = new Map<number, number>();
    (o.reservations as unknown[]).forEach((r, i) => {
      const at = `${k('reservations')}[${i}]`;
      if (r === null || typeof r !== 'object' || Array.isArray(r)) fail(at, 'must be a mapping { mac: ..., ip: ... }');
      const ro = r as Record<string, unknown>;
      for (const key of Object.keys(ro))
        if (key !== 'mac' && key !== 'ip') fail(`${at}.${key}`, 'unknown key; allowed here: mac, ip');
      const macText = str(ro.mac, `${at}.mac`, 'a MAC address like "52:54:00:00:00:10" (quoted)');
      const mac = parseMac(macText);
      if (!mac)
        fail(
          `${at}.mac`,
          `"${macText}" is not a MAC address: write six hex pairs like "52:54:00:00:00:10" (quote it in YAML)`,
        );
      if (mac![0] & 1) fail(`${at}.mac`, `"${macText}" is a multicast address: a client's MAC is unicast`);
      const macNorm = formatMac(mac!);
      if (macs.has(macNorm))
        fail(`${at}.mac`, `${macNorm} is already reserved in reservations[${macs.get(macNorm)}]: one address per MAC`);
      const rip = ip(ro.ip, `${at}.ip`);
      hostIn(rip, `${at}.ip`, 'a reserved address');
      if (rip === serverIp) fail(`${at}.ip`, `${formatIPv4(rip)} is server_ip: reserve another address`);
      if (rip === router) fail(`${at}.ip`, `${formatIPv4(rip)} is the router: reserve another address`);
      if (ips.has(rip))
        fail(
          `${at}.ip`,
          `${formatIPv4(rip)} is already reserved in reservations[${ips.get(rip)}]: one MAC per address`,
        );
      macs.set(macNorm, i);
      ips.set(rip, i);
      reservations.push({ mac: macNorm, ip: formatIPv4(rip) });
    });
  }

  // routes (option 121)
  let classlessRoutes: DhcpRoute[] | undefined;
  if (o.routes !== undefined && o.routes !== null) {
    if (!Array.isArray(o.routes))
      fail(k('routes'), 'must be a list like - { destination: 10.0.0.0/8, gateway: 192.168.77.1 }');
    const list = o.routes as unknown[];
    if (list.length > CLASSLESS_ROUTES_MAX)
      fail(k('routes'), `lists ${list.length} routes: give at most ${CLASSLESS_ROUTES_MAX}`);
    const seen = new Set<string>();
    classlessRoutes = list.map((r, i) => {
      const at = `${k('routes')}[${i}]`;
      if (r === null || typeof r !== 'object' || Array.isArray(r))
        fail(at, 'must be a mapping { destination: ..., gateway: ... }');
      const ro = r as Record<string, unknown>;
      for (const key of Object.keys(ro)) {
        if (key !== 'destination' && key !== 'gateway')
          fail(`${at}.${key}`, 'unknown key; allowed here: destination, gateway');
      }
      const destText = str(ro.destination, `${at}.destination`, 'a network like 10.0.0.0/8');
      const d = parseCidr(destText);
      if (!d) fail(`${at}.destination`, `"${destText}" is not ADDRESS/PREFIX like 10.0.0.0/8`);
      if (!d!.hostBitsZero)
        fail(
          `${at}.destination`,
          `"${destText}" has host bits set: did you mean ${formatIPv4(d!.network)}/${d!.prefix}?`,
        );
      const canon = `${formatIPv4(d!.network)}/${d!.prefix}`;
      if (seen.has(canon)) fail(`${at}.destination`, `${canon} is listed twice: give each destination once`);
      seen.add(canon);
      const gw = ip(ro.gateway, `${at}.gateway`);
      hostIn(gw, `${at}.gateway`, 'a route gateway');
      if (gw === serverIp) fail(`${at}.gateway`, 'is server_ip: homewire does not route; give a router on the segment');
      return { destination: canon, gateway: formatIPv4(gw) };
    });
  }

  // lease_db
  let leaseDb = DEFAULT_LEASE_DB;
  if (o.lease_db !== undefined) {
    leaseDb = str(o.lease_db, k('lease_db'), 'a file path like /var/lib/homewire/leases.db');
    if (leaseDb !== ':memory:') leaseDb = path.resolve(path.dirname(path.resolve(file)), leaseDb);
  }

  let serveLocal = false;
  if (o.serve_local !== undefined) {
    if (typeof o.serve_local !== 'boolean') fail(k('serve_local'), 'must be true or false');
    serveLocal = o.serve_local as boolean;
  }
  let newLeasesPerSitePerMinute = DEFAULT_NEW_LEASES_PER_SITE_PER_MINUTE;
  if (o.rate_limit_per_site_per_minute !== undefined) {
    const v = o.rate_limit_per_site_per_minute;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 1_000_000) {
      fail(
        k('rate_limit_per_site_per_minute'),
        `must be a whole number from 1 to 1000000 (new leases per site per minute; default ${DEFAULT_NEW_LEASES_PER_SITE_PER_MINUTE})`,
      );
    }
    newLeasesPerSitePerMinute = v as number;
  }
  const cap = (key: string, fallback: number, max: number): number => {
    const v = o[key];
    if (v === undefined) return fallback;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > max)
      fail(k(key), `must be a whole number from 1 to ${max} (default ${fallback})`);
    return v as number;
  };
  const maxLeasesPerSite = cap('max_leases_per_site', DEFAULT_MAX_LEASES_PER_SITE, POOL_ADDRESSES_MAX);
  const maxLeasesPerMac = cap('max_leases_per_mac', DEFAULT_MAX_LEASES_PER_MAC, 64);

  const cfg: DhcpConfig = {
    subnet: `${formatIPv4(subnet.network)}/${subnet.prefix}`,
    serverIp: formatIPv4(serverIp),
    pool: { start: formatIPv4(poolStart!), end: formatIPv4(poolEnd!) },
    router: router === undefined ? undefined : formatIPv4(router),
    dns: dns?.map(formatIPv4),
    domain,
    leaseSeconds,
    reservations,
    leaseDb,
    serveLocal,
    newLeasesPerSitePerMinute,
    maxLeasesPerSite,
    maxLeasesPerMac,
    classlessRoutes,
  };
  if (!worstCaseReplyFits(cfg)) {
    fail(
      keyPrefix,
      `the options (dns, domain, routes) do not fit a ${IP_DATAGRAM_MIN_BYTES}-byte DHCP reply that every client accepts: list fewer routes or DNS servers, or a shorter domain`,
    );
  }
  return cfg;
}

/** Would an ACK with every configured option fit the smallest reply size? (Echoed host name and client-id
 *  are left out of a reply that would not fit otherwise: see server.ts reply.) */
function worstCaseReplyFits(cfg: DhcpConfig): boolean {
  const ip = (s: string) => parseIPv4(s)!;
  const opts: OptionList = [
    [OPT_MESSAGE_TYPE, u8(DHCPACK)],
    [OPT_SERVER_ID, u32(0)],
    [OPT_LEASE_TIME, u32(0)],
    [OPT_RENEWAL_TIME, u32(0)],
    [OPT_REBINDING_TIME, u32(0)],
    [OPT_SUBNET_MASK, u32(0)],
    [OPT_BROADCAST, u32(0)],
    [OPT_INTERFACE_MTU, u16(0)],
  ];
  if (cfg.router) opts.push([OPT_ROUTER, u32(0)]);
  if (cfg.dns) opts.push([OPT_DNS, ipList(cfg.dns.map(ip))]);
  if (cfg.domain) opts.push([OPT_DOMAIN, Buffer.from(cfg.domain)]);
  if (cfg.classlessRoutes) {
    const routes = cfg.classlessRoutes.map((r) => {
      const c = parseCidr(r.destination)!;
      return { network: c.network, prefix: c.prefix, gateway: ip(r.gateway) };
    });
    routes.push({ network: 0, prefix: 0, gateway: 0 }); // the default route added when a router is set
    opts.push([OPT_CLASSLESS_ROUTES, encodeClasslessRoutes(routes)]);
  }
  const h = {
    op: BOOTREPLY,
    htype: HTYPE_ETHERNET,
    hlen: 6,
    hops: 0,
    xid: 0,
    secs: 0,
    flags: 0,
    ciaddr: 0,
    yiaddr: 0,
    siaddr: 0,
    giaddr: 0,
    chaddr: Buffer.alloc(16),
  };
  return encodeDhcp(h, opts, IP_DATAGRAM_MIN_BYTES - 28) !== null;
}

// Where images may come from: the coordinator's `image_sources` allowlist (plus its image_server). Shared by
// the coordinator, which refuses image definitions outside it, and the host agent, which checks again before
// it connects, after DNS resolution, so a name that resolves to a loopback, link-local or private address
// (DNS rebinding, an internal service) is refused unless that address is listed too.
//
// Entries:  HOST          a DNS name or IP address, any port        images.example.org, 192.0.2.10
//           HOST:PORT     that host on that port only               images.example.org:8443, [2001:db8::1]:80
//           CIDR          IP-address URLs in the range, and names   198.51.100.0/24
//                         that resolve into it (even private ones)
import net from 'node:net';
import ipaddr from 'ipaddr.js';

export type ImageSource =
  | { kind: 'host'; host: string; port: number | null; text: string }
  | { kind: 'cidr'; range: [ipaddr.IPv4 | ipaddr.IPv6, number]; text: string };

const HOST_RE = /^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$/;

/** One allowlist entry; throws an Error that says what a good entry looks like. */
export function parseImageSource(text: string): ImageSource {
  const t = text.trim();
  const bad = (): never => {
    throw new Error(
      `"${text}" is not HOST, HOST:PORT or an address range (images.example.org, 192.0.2.10:8080, 198.51.100.0/24)`,
    );
  };
  if (t.includes('/')) {
    try {
      const range = ipaddr.parseCIDR(t);
      return { kind: 'cidr', range, text: t };
    } catch {
      return bad();
    }
  }
  let host = t;
  let port: number | null = null;
  const v6 = /^\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?$/.exec(t);
  if (v6) {
    host = v6[1];
    if (!net.isIPv6(host)) bad();
    if (v6[2] !== undefined) port = Number(v6[2]);
  } else if (net.isIPv6(t)) {
    host = t;
  } else {
    const m = /^([^:]+)(?::(\d{1,5}))?$/.exec(t);
    if (!m) bad();
    host = m![1];
    if (m![2] !== undefined) port = Number(m![2]);
    if (!net.isIPv4(host) && !HOST_RE.test(host)) bad();
  }
  if (port !== null && (port < 1 || port > 65535)) bad();
  return { kind: 'host', host: normalHost(host), port, text: t };
}

export function parseImageSources(list: readonly string[]): ImageSource[] {
  return list.map(parseImageSource);
}

/** The source entry for an image server base URL (its host and port). */
export function sourceOfUrl(url: string): string {
  const u = new URL(url);
  return `${u.hostname}:${effectivePort(u)}`;
}

function normalHost(h: string): string {
  const bare = h.startsWith('[') && h.endsWith(']') ? h.slice(1, -1) : h;
  return net.isIP(bare) ? ipaddr.parse(bare).toString() : bare.toLowerCase().replace(/\.$/, '');
}

export function effectivePort(u: URL): number {
  return u.port ? Number(u.port) : u.protocol === 'https:' ? 443 : 80;
}

/**
 * Why `location` is not an allowed image URL, or null if it is: http(s) only, the host listed (by name,
 * name:port, or an address range for address URLs), and an address URL in a loopback, link-local or private
 * range only when that address is listed.
 */
export function refuseUrl(location: string, sources: readonly ImageSource[]): string | null {
  let u: URL;
  try {
    u = new URL(location);
  } catch {
    return 'not a valid URL';
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return `only http:// and https:// are allowed`;
  if (u.username || u.password) return 'credentials in image URLs are not allowed';
  const host = normalHost(u.hostname);
  const port = effectivePort(u);
  const isIp = net.isIP(host) !== 0;
  const listed = sources.some((s) =>
    s.kind === 'host' ? s.host === host && (s.port === null || s.port === port) : isIp && inRange(host, s),
  );
  if (!listed) return `${isIp ? host : `host ${host}`}${u.port ? ` port ${port}` : ''} is not in image_sources`;
  if (isIp && !addressAllowed(host, port, sources)) return `${host} is a ${rangeOf(host)} address that is not listed`;
  return null;
}

/**
 * May the agent connect to `ip`:`port` (a URL's address, or what its name resolved to)? A public unicast
 * address, or one listed itself (as an address, with that port if the entry has one, or in a range).
 */
export function addressAllowed(ip: string, port: number, sources: readonly ImageSource[]): boolean {
  if (!net.isIP(ip)) return false;
  const a = ipaddr.process(ip); // ::ffff:a.b.c.d is judged as a.b.c.d
  const text = a.toString();
  if (a.range() === 'unicast') return true;
  return sources.some((s) =>
    s.kind === 'host' ? s.host === text && (s.port === null || s.port === port) : inRange(text, s),
  );
}

export function rangeOf(ip: string): string {
  return ipaddr.process(ip).range();
}

function inRange(ip: string, s: Extract<ImageSource, { kind: 'cidr' }>): boolean {
  const a = ipaddr.process(ip);
  const [net0] = s.range;
  if (a.kind() !== net0.kind()) return false;
  return a.match(s.range as [typeof a, number]);
}

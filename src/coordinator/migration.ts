// Migration addresses and keys, one definition for the coordinator (which builds them) and the host agents
// (which accept nothing else). A migration URI is exactly `tcp:IPV4:PORT` or `tcp:[IPV6]:PORT`: never exec:,
// unix:, fd:, rdma: or a host name, and it must print back to the same text, so nothing can ride along.
// The coordinator builds it from the DESTINATION's registered migration address (its overlay address once it
// has one) and a port from its registered range, never from what a host reports during the migration.
import crypto from 'node:crypto';
import net from 'node:net';
import ipaddr from 'ipaddr.js';
import { formatEndpoint } from '../addr.ts';

export const TLS_PSK_BYTES = 32;
export const TLS_PSK_RE = /^[0-9a-f]{64}$/;
/** The default TCP ports a host takes migrations on (coordinator.migration_ports). */
export const DEFAULT_MIGRATION_PORTS: [number, number] = [49152, 49215];

/** Why `ip` cannot be a migration address, or null. */
export function refuseMigrationAddress(ip: string): string | null {
  if (net.isIP(ip) === 0) return `"${ip}" is not an IP address`;
  const range = ipaddr.process(ip).range();
  if (range === 'unspecified' || range === 'multicast' || range === 'broadcast')
    return `${ip} is ${range}: give the address other hosts reach this one at`;
  return null;
}

export function migrationUri(address: string, port: number): string {
  return `tcp:${formatEndpoint(ipaddr.parse(address).toString(), port)}`;
}

/** The address and port of a migration URI in the one accepted form, or null. */
export function parseMigrationUri(uri: unknown): { address: string; port: number } | null {
  if (typeof uri !== 'string' || uri.length > 64) return null;
  const m = /^tcp:(?:([0-9.]+)|\[([0-9a-fA-F:.]+)\]):([0-9]{1,5})$/.exec(uri);
  if (!m) return null;
  const address = m[1] ?? m[2];
  const port = Number(m[3]);
  if (m[1] !== undefined ? !net.isIPv4(address) : !net.isIPv6(address)) return null;
  if (port < 1 || port > 65535 || refuseMigrationAddress(address) !== null) return null;
  return migrationUri(address, port) === uri ? { address, port } : null;
}

/** A fresh pre-shared key for one migration's TLS (QEMU tls-creds-psk), as hex. */
export function newTlsPsk(): string {
  return crypto.randomBytes(TLS_PSK_BYTES).toString('hex');
}

/** Whether two addresses are the same (2001:db8::1 and 2001:DB8:0::1 are). */
export function sameAddress(a: string, b: string): boolean {
  try {
    return ipaddr.parse(a).toString() === ipaddr.parse(b).toString();
  } catch {
    return false;
  }
}

/** The name of the NBD export a disk migration's destination serves its overlay as (the mirror's target). */
export const NBD_EXPORT = 'disk0';
/** The name of the NBD export a host offers a stopped VM's overlay file as (cold copy). */
export const DISK_COPY_EXPORT = 'overlay';

/** Checks an NBD endpoint from a command: an address that could be a migration address, a port, a known export. */
export function checkNbdEndpoint(
  v: unknown,
  exports: readonly string[],
): { host: string; port: number; export: string } | null {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  if (typeof o.host !== 'string' || refuseMigrationAddress(o.host) !== null) return null;
  if (typeof o.port !== 'number' || !Number.isInteger(o.port) || o.port < 1 || o.port > 65535) return null;
  if (typeof o.export !== 'string' || !exports.includes(o.export)) return null;
  return { host: o.host, port: o.port, export: o.export };
}

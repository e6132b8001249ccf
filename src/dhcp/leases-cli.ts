// `homewire leases --config FILE`: list the leases in the store, read-only (safe while the daemon runs:
// SQLite WAL lets a reader see the last committed state without blocking the writer).
import { OperatorError } from '../errors.ts';
import { parseIPv4 } from './ip.ts';
import { openDatabase } from './sqlite.ts';
import { readLeaseRows, type LeaseState } from './store.ts';

export interface LeaseListRow {
  mac: string;
  ip: string;
  hostname: string | null;
  clientId: string | null;
  expiresAt: number; // ms since the epoch
  site: string;
  state: LeaseState;
}

/** Every lease record in the store at `dbPath`, sorted by address. A bound lease past its expiry is reported
 *  as 'expired' (the daemon does not write expiries). Throws OperatorError if the file cannot be read. */
export function listLeases(dbPath: string, now = Date.now()): LeaseListRow[] {
  let db: ReturnType<typeof openDatabase>;
  try {
    db = openDatabase(dbPath, { readonly: true, fileMustExist: true });
  } catch (err) {
    throw new OperatorError(
      'EDHCPDB',
      `cannot read the lease database ${dbPath}: ${(err as Error).message}; ` +
        'check dhcp.lease_db in the config (the file exists once the DHCP server has run) and that you may read it',
    );
  }
  try {
    return readLeaseRows(db)
      .map((r) => ({
        mac: r.mac,
        ip: r.ip,
        hostname: r.hostname,
        clientId: r.clientId,
        expiresAt: r.expiresAt,
        site: r.site,
        state: r.state === 'bound' && r.expiresAt <= now ? ('expired' as const) : r.state,
      }))
      .sort((a, b) => (parseIPv4(a.ip) ?? 0) - (parseIPv4(b.ip) ?? 0));
  } catch (err) {
    throw new OperatorError(
      'EDHCPDB',
      `${dbPath} is not a homewire lease database (${(err as Error).message}); check dhcp.lease_db`,
    );
  } finally {
    db.close();
  }
}

/** A table (MAC IP HOSTNAME EXPIRES SITE) or, with json, a JSON array. */
export function formatLeases(rows: LeaseListRow[], json: boolean, now = Date.now()): string {
  if (json)
    return `${JSON.stringify(
      rows.map((r) => ({ ...r, expiresAt: new Date(r.expiresAt).toISOString() })),
      null,
      2,
    )}\n`;
  const header = ['MAC', 'IP', 'HOSTNAME', 'EXPIRES', 'SITE'];
  const lines = rows.map((r) => [r.mac, r.ip, r.hostname ?? '-', expiry(r, now), r.site]);
  if (lines.length === 0) return 'no leases\n';
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const fmt = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join('  ');
  return `${[fmt(header), ...lines.map(fmt)].join('\n')}\n`;
}

function expiry(r: LeaseListRow, now: number): string {
  const at = new Date(r.expiresAt).toISOString().replace(/\.\d{3}Z$/, 'Z');
  if (r.state === 'released') return `released ${ago(now - r.expiresAt)} ago`;
  if (r.state === 'expired') return `expired ${ago(now - r.expiresAt)} ago`;
  return `${at} (in ${ago(r.expiresAt - now)})`;
}

function ago(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172_800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86_400)}d`;
}

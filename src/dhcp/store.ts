// Durable lease store: SQLite (better-sqlite3) in WAL mode with synchronous=FULL, so a commit is on disk
// when commit() returns. Writes are queued by the server and committed in one transaction per event-loop
// turn (server.ts flush); the server sends no ACK before the commit that holds its lease has returned.
//
// Invariant kept by the schema as well as by the server: an address belongs to at most one lease row
// (`ip` is UNIQUE), so after any crash no address can be found leased to two clients.
import fs from 'node:fs';
import path from 'node:path';
import { OperatorError } from '../errors.ts';
import { formatIPv4, parseIPv4 } from './ip.ts';
import { openDatabase, type Database, type Statement } from './sqlite.ts';

export type LeaseState = 'bound' | 'released' | 'expired';

export interface Lease {
  /** "id:<hex>" (client identifier, option 61) or "mac:<aa:bb:..>". */
  key: string;
  ip: number;
  mac: string;
  clientId: string | null; // hex
  hostname: string | null;
  /** The port the client is behind: 'local' or a peer site's name. */
  site: string;
  expiresAt: number; // ms since the epoch
  state: LeaseState;
}

export interface Quarantined {
  ip: number;
  until: number; // ms since the epoch
}

const SCHEMA_VERSION = 1;
const SCHEMA = `
CREATE TABLE IF NOT EXISTS leases (
  client_key TEXT PRIMARY KEY,
  ip TEXT NOT NULL UNIQUE,
  mac TEXT NOT NULL,
  client_id TEXT,
  hostname TEXT,
  site TEXT NOT NULL,
  expires_at INTEGER NOT NULL,
  state TEXT NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
  ip TEXT PRIMARY KEY,
  until INTEGER NOT NULL
);
`;

type Op =
  | { kind: 'put'; lease: Lease; at: number }
  | { kind: 'remove'; key: string }
  | { kind: 'quarantine'; ip: number; until: number }
  | { kind: 'unquarantine'; ip: number };

export interface LeaseRowText {
  key: string;
  ip: string;
  mac: string;
  clientId: string | null;
  hostname: string | null;
  site: string;
  expiresAt: number;
  state: LeaseState;
}

export class LeaseStore {
  private ops: Op[] = [];
  private readonly freeIp: Statement;
  private readonly upsert: Statement;
  private readonly del: Statement;
  private readonly quar: Statement;
  private readonly unquar: Statement;
  private readonly run: (ops: Op[]) => void;

  private constructor(
    private readonly db: Database,
    readonly file: string,
  ) {
    this.freeIp = db.prepare('DELETE FROM leases WHERE ip = ? AND client_key <> ?');
    this.upsert =
      db.prepare(`INSERT INTO leases (client_key, ip, mac, client_id, hostname, site, expires_at, state, updated_at)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
      ON CONFLICT (client_key) DO UPDATE SET ip = excluded.ip, mac = excluded.mac, client_id = excluded.client_id,
        hostname = excluded.hostname, site = excluded.site, expires_at = excluded.expires_at, state = excluded.state,
        updated_at = excluded.updated_at`);
    this.del = db.prepare('DELETE FROM leases WHERE client_key = ?');
    this.quar = db.prepare(
      'INSERT INTO quarantine (ip, until) VALUES (?, ?) ON CONFLICT (ip) DO UPDATE SET until = excluded.until',
    );
    this.unquar = db.prepare('DELETE FROM quarantine WHERE ip = ?');
    this.run = db.transaction((ops: Op[]) => {
      for (const op of ops) {
        if (op.kind === 'put') {
          const l = op.lease;
          const ip = formatIPv4(l.ip);
          this.freeIp.run(ip, l.key); // the address's previous (inactive) holder gives it up in the same commit
          this.unquar.run(ip);
          this.upsert.run(l.key, ip, l.mac, l.clientId, l.hostname, l.site, l.expiresAt, l.state, op.at);
        } else if (op.kind === 'remove') {
          this.del.run(op.key);
        } else if (op.kind === 'quarantine') {
          const ip = formatIPv4(op.ip);
          this.del.run(this.keyOfIp(ip) ?? '');
          this.quar.run(ip, op.until);
        } else {
          this.unquar.run(formatIPv4(op.ip));
        }
      }
    });
  }

  private keyOfIpStmt?: Statement;
  private keyOfIp(ip: string): string | undefined {
    this.keyOfIpStmt ??= this.db.prepare('SELECT client_key AS k FROM leases WHERE ip = ?');
    return (this.keyOfIpStmt.get(ip) as { k: string } | undefined)?.k;
  }

  /** Open (creating file, directory and schema as needed). Throws OperatorError saying what to fix. */
  static open(file: string): LeaseStore {
    let db: Database | undefined;
    try {
      if (file !== ':memory:') fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o750 });
      db = openDatabase(file);
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL'); // WAL is fsynced at every commit: a committed lease survives SIGKILL and power loss
      const version = db.pragma('user_version', { simple: true }) as number;
      if (version > SCHEMA_VERSION) {
        db.close();
        throw new OperatorError(
          'EDHCPDB',
          `lease database ${file} was written by a newer homewire (schema ${version}); upgrade homewire or move the file away`,
        );
      }
      db.exec(SCHEMA);
      db.pragma(`user_version = ${SCHEMA_VERSION}`);
      return new LeaseStore(db, file);
    } catch (err) {
      if (err instanceof OperatorError) throw err;
      try {
        db?.close();
      } catch {
        /* already failing */
      }
      throw new OperatorError(
        'EDHCPDB',
        `cannot open the lease database ${file}: ${(err as Error).message}; check that its directory is writable by homewire (dhcp.lease_db)`,
      );
    }
  }

  load(): { leases: Lease[]; quarantine: Quarantined[] } {
    const leases: Lease[] = [];
    for (const r of readLeaseRows(this.db)) {
      const ip = parseIPv4(r.ip);
      if (ip === null) continue;
      leases.push({
        key: r.key,
        ip,
        mac: r.mac,
        clientId: r.clientId,
        hostname: r.hostname,
        site: r.site,
        expiresAt: r.expiresAt,
        state: r.state,
      });
    }
    const quarantine: Quarantined[] = [];
    for (const r of this.db.prepare('SELECT ip, until FROM quarantine').all() as Array<{ ip: string; until: number }>) {
      const ip = parseIPv4(r.ip);
      if (ip !== null) quarantine.push({ ip, until: r.until });
    }
    return { leases, quarantine };
  }

  /** Queue writes; commit() applies them in order in one transaction. The lease is copied now. */
  put(lease: Lease, now: number): void {
    this.ops.push({ kind: 'put', lease: { ...lease }, at: now });
  }

  remove(key: string): void {
    this.ops.push({ kind: 'remove', key });
  }

  quarantine(ip: number, until: number): void {
    this.ops.push({ kind: 'quarantine', ip, until });
  }

  unquarantine(ip: number): void {
    this.ops.push({ kind: 'unquarantine', ip });
  }

  get pending(): number {
    return this.ops.length;
  }

  /** Commit every queued write in one transaction (fsync included). On failure the queued writes are
   *  discarded and the error thrown: the caller must not send the ACKs that depended on them. */
  commit(): void {
    if (this.ops.length === 0) return;
    const ops = this.ops;
    this.ops = [];
    this.run(ops);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}

/** All lease rows, as stored. Used by load() and by the `homewire leases` CLI. */
export function readLeaseRows(db: Database): LeaseRowText[] {
  return db
    .prepare(`SELECT client_key AS key, ip, mac, client_id AS clientId, hostname, site, expires_at AS expiresAt, state
    FROM leases`)
    .all() as LeaseRowText[];
}

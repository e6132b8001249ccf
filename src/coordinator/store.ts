// Where the coordinator keeps hosts, VMs and images: a tiny document store with two backends behind one
// interface. SQLite (default) for one coordinator; etcd (etcd-store.ts) for several, with leader election.
// Values are the API's JSON records. Only the leader writes; writes are fenced by its leadership where the
// backend can do that (etcd), so a deposed leader cannot overwrite its successor's records.
import fs from 'node:fs';
import path from 'node:path';
import { openDatabase, type Database, type Statement } from '../dhcp/sqlite.ts';
import { OperatorError } from '../errors.ts';

export type Kind = 'hosts' | 'vms' | 'images' | 'credentials';

export interface Store {
  readonly backend: 'sqlite' | 'etcd';
  get<T>(kind: Kind, name: string): Promise<T | null>;
  list<T>(kind: Kind): Promise<T[]>;
  /** Writes a new record; false (and no change) if the name exists. */
  create(kind: Kind, name: string, value: unknown): Promise<boolean>;
  put(kind: Kind, name: string, value: unknown): Promise<void>;
  /** True if there was such a record. */
  delete(kind: Kind, name: string): Promise<boolean>;
  close(): Promise<void>;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS records (
  kind TEXT NOT NULL,
  name TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (kind, name)
);`;

/** SQLite in WAL mode, synchronous=FULL: a write is on disk when its promise resolves. */
export class SqliteStore implements Store {
  readonly backend = 'sqlite';
  private readonly q: Record<'get' | 'list' | 'create' | 'put' | 'del', Statement>;

  private constructor(private readonly db: Database) {
    this.q = {
      get: db.prepare('SELECT value FROM records WHERE kind = ? AND name = ?'),
      list: db.prepare('SELECT value FROM records WHERE kind = ? ORDER BY name'),
      create: db.prepare('INSERT OR IGNORE INTO records (kind, name, value) VALUES (?, ?, ?)'),
      put: db.prepare(
        'INSERT INTO records (kind, name, value) VALUES (?, ?, ?) ON CONFLICT (kind, name) DO UPDATE SET value = excluded.value',
      ),
      del: db.prepare('DELETE FROM records WHERE kind = ? AND name = ?'),
    };
  }

  /** Opens (creating) coordinator.db in dataDir; ":memory:" for tests. */
  static open(dataDir: string): SqliteStore {
    let file = ':memory:';
    if (dataDir !== ':memory:') {
      try {
        fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
      } catch (err) {
        throw new OperatorError(
          'EDATADIR',
          `cannot create the data directory ${dataDir} (${(err as NodeJS.ErrnoException).code}): create it or set data_dir`,
        );
      }
      file = path.join(dataDir, 'coordinator.db');
    }
    let db: Database;
    try {
      db = openDatabase(file);
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.exec(SCHEMA);
    } catch (err) {
      throw new OperatorError('ESTORE', `cannot open the coordinator store ${file}: ${(err as Error).message}`);
    }
    return new SqliteStore(db);
  }

  async get<T>(kind: Kind, name: string): Promise<T | null> {
    const row = this.q.get.get(kind, name) as { value: string } | undefined;
    return row ? (JSON.parse(row.value) as T) : null;
  }

  async list<T>(kind: Kind): Promise<T[]> {
    return (this.q.list.all(kind) as { value: string }[]).map((r) => JSON.parse(r.value) as T);
  }

  async create(kind: Kind, name: string, value: unknown): Promise<boolean> {
    return this.q.create.run(kind, name, JSON.stringify(value)).changes === 1;
  }

  async put(kind: Kind, name: string, value: unknown): Promise<void> {
    this.q.put.run(kind, name, JSON.stringify(value));
  }

  async delete(kind: Kind, name: string): Promise<boolean> {
    return this.q.del.run(kind, name).changes === 1;
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}

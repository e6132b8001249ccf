// What the web page and the console splice watch: hosts (with free capacity and guests), VMs, images and the
// operations in progress, re-read every WATCH_INTERVAL_MS while anyone subscribes, and handed to subscribers
// when it changed. Polling the store (not hooking each write) sees every change, whoever made it (operations,
// reconciliation, host liveness), with SQLite and etcd alike; nobody watching costs nothing.
import type { Logger } from '../log.ts';
import { WATCH_INTERVAL_MS } from './constants.ts';
import type { HostView, ImageRecord, VmRecord } from './types.ts';

export interface Snapshot {
  hosts: HostView[];
  vms: VmRecord[];
  images: ImageRecord[];
  /** VMs with an operation in progress on the leader: name → start | stop | migrate. */
  operations: Record<string, string>;
}

export type SnapshotListener = (s: Snapshot) => void;

export class Watch {
  private readonly listeners = new Set<SnapshotListener>();
  private timer: NodeJS.Timeout | null = null;
  private reading = false;
  private lastJson = '';
  private last: Snapshot | null = null;
  readonly stats = { reads: 0, changes: 0, failures: 0 };

  constructor(
    private readonly read: () => Promise<Snapshot>,
    private readonly log: Logger,
    private readonly intervalMs = WATCH_INTERVAL_MS,
  ) {}

  /** Calls fn with every new snapshot (and soon with the current one); returns the unsubscribe. */
  subscribe(fn: SnapshotListener): () => void {
    this.listeners.add(fn);
    if (this.last) {
      const s = this.last;
      setImmediate(() => this.listeners.has(fn) && fn(s));
    }
    if (!this.timer) {
      this.timer = setInterval(() => this.poll(), this.intervalMs);
      this.poll();
    }
    return () => {
      this.listeners.delete(fn);
      if (this.listeners.size === 0) this.idle();
    };
  }

  /** A fresh snapshot now (also tells subscribers if it changed). */
  async now(): Promise<Snapshot> {
    const s = await this.read();
    this.offer(s);
    return s;
  }

  private poll(): void {
    if (this.reading) return;
    this.reading = true;
    this.read()
      .then(
        (s) => this.offer(s),
        (err) => {
          this.stats.failures++;
          this.log.debug({ error: (err as Error).message }, 'watch: reading the store failed');
        },
      )
      .finally(() => {
        this.reading = false;
      });
  }

  private offer(s: Snapshot): void {
    this.stats.reads++;
    const json = JSON.stringify(s);
    if (json === this.lastJson) return;
    this.lastJson = json;
    this.last = s;
    this.stats.changes++;
    for (const fn of [...this.listeners]) {
      try {
        fn(s);
      } catch (err) {
        this.log.error({ error: (err as Error).stack }, 'watch: a listener threw');
      }
    }
  }

  private idle(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.last = null;
    this.lastJson = '';
  }

  stop(): void {
    this.listeners.clear();
    this.idle();
  }
}

// The etcd backend: records under homewire/coordinator/<kind>/<name>, leader election on an etcd lease
// (etcd3's Election, the Go client's algorithm). Writes are fenced: each is a transaction that succeeds only
// while this coordinator's campaign key exists, so a leader whose lease expired cannot write any more.
import { Etcd3, type Campaign, type Election } from 'etcd3';
import type { Logger } from '../log.ts';
import { ELECTION_NAME, ETCD_PREFIX, LEADER_LEASE_TTL_S, LEADER_RECAMPAIGN_MS } from './constants.ts';
import type { Leadership, LeadershipEvents } from './leader.ts';

const LEADER_CACHE_MS = 250;
import type { Kind, Store } from './store.ts';
import { ApiError } from './types.ts';

export function etcdClient(endpoints: string[]): Etcd3 {
  return new Etcd3({ hosts: endpoints, dialTimeout: 3000 });
}

export class EtcdStore implements Store {
  readonly backend = 'etcd';
  /** The key whose existence proves leadership (our campaign key), or null: no writes. */
  fence: string | null = null;

  constructor(
    private readonly client: Etcd3,
    private readonly ownsClient = true,
  ) {}

  private key(kind: Kind, name: string): string {
    return `${ETCD_PREFIX}${kind}/${name}`;
  }

  async get<T>(kind: Kind, name: string): Promise<T | null> {
    const v = await this.client.get(this.key(kind, name)).string();
    return v === null ? null : (JSON.parse(v) as T);
  }

  async list<T>(kind: Kind): Promise<T[]> {
    const all = await this.client.getAll().prefix(`${ETCD_PREFIX}${kind}/`).sort('Key', 'Ascend').strings();
    return Object.values(all).map((v) => JSON.parse(v) as T);
  }

  private fenced() {
    if (!this.fence) throw new ApiError(503, 'not_leader', 'this coordinator is not the leader: it does not write');
    return this.client.if(this.fence, 'Create', '>', 0);
  }

  private deposed(): never {
    throw new ApiError(503, 'not_leader', 'this coordinator lost its leadership (lease expired) while writing; retry');
  }

  async create(kind: Kind, name: string, value: unknown): Promise<boolean> {
    const key = this.key(kind, name);
    const r = await this.fenced()
      .and(key, 'Create', '==', 0)
      .then(this.client.put(key).value(JSON.stringify(value)))
      .else(this.client.get(this.fence!))
      .commit();
    if (r.succeeded) return true;
    if ((r.responses[0]?.response_range?.kvs.length ?? 0) === 0) this.deposed();
    return false;
  }

  async put(kind: Kind, name: string, value: unknown): Promise<void> {
    const r = await this.fenced()
      .then(this.client.put(this.key(kind, name)).value(JSON.stringify(value)))
      .commit();
    if (!r.succeeded) this.deposed();
  }

  async delete(kind: Kind, name: string): Promise<boolean> {
    const key = this.key(kind, name);
    const r = await this.fenced().then(this.client.delete().key(key)).commit();
    if (!r.succeeded) this.deposed();
    return Number(r.responses[0]?.response_delete_range?.deleted ?? 0) > 0;
  }

  async close(): Promise<void> {
    if (this.ownsClient) this.client.close();
  }
}

/** Campaigns with this coordinator's URL as the value; sets the store's fence while elected. */
export class EtcdLeadership implements Leadership {
  leading = false;
  private readonly election: Election;
  private campaign: Campaign | null = null;
  private cached: { url: string | null; atMs: number } | null = null;
  private stopped = false;
  private retry: NodeJS.Timeout | null = null;
  private events: LeadershipEvents | null = null;
  private url = '';

  constructor(
    readonly client: Etcd3,
    private readonly store: EtcdStore,
    private readonly log: Logger,
  ) {
    this.election = client.namespace(ETCD_PREFIX).election(ELECTION_NAME, LEADER_LEASE_TTL_S);
  }

  /**
   * The oldest campaign key's value (etcd's election order), cached for LEADER_CACHE_MS. Not etcd3's
   * ElectionObserver: when candidates campaign at the same moment it can settle on a younger key.
   */
  async leaderUrl(): Promise<string | null> {
    if (this.leading) return this.url;
    const now = Date.now();
    if (this.cached && now - this.cached.atMs < LEADER_CACHE_MS) return this.cached.url;
    let url: string | null = null;
    try {
      url = (await this.election.leader()) ?? null;
    } catch {
      url = null;
    }
    if (url === this.url) url = null; // our own key is first but not yet elected: nobody leads yet
    this.cached = { url, atMs: now };
    return url;
  }

  async start(url: string, events: LeadershipEvents): Promise<void> {
    this.url = url;
    this.events = events;
    this.run();
  }

  private run(): void {
    if (this.stopped) return;
    const c = this.election.campaign(this.url);
    this.campaign = c;
    c.on('elected', () => {
      if (this.campaign !== c || this.stopped) return;
      c.getCampaignKey().then(
        (key) => {
          if (this.campaign !== c || this.stopped) return;
          this.store.fence = key;
          this.leading = true;
          this.log.info({ url: this.url }, 'elected leader');
          this.events!.elected();
        },
        (err) => this.fail(c, err),
      );
    });
    c.on('error', (err: Error) => this.fail(c, err));
  }

  private fail(c: Campaign, err: Error): void {
    if (this.campaign !== c) return;
    this.campaign = null;
    c.resign().catch(() => {});
    this.depose(`campaign failed: ${err.message}`);
    if (!this.stopped) {
      this.log.warn(
        { error: err.message },
        'leader campaign failed (etcd unreachable or lease lost); campaigning again',
      );
      this.retry = setTimeout(() => this.run(), LEADER_RECAMPAIGN_MS);
    }
  }

  private depose(reason: string): void {
    this.store.fence = null;
    this.cached = null;
    if (!this.leading) return;
    this.leading = false;
    this.log.warn({ reason }, 'no longer the leader');
    this.events?.deposed(reason);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.retry) clearTimeout(this.retry);
    this.depose('stopping');
    const c = this.campaign;
    this.campaign = null;
    await c?.resign().catch(() => {});
  }
}

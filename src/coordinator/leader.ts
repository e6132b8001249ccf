// Who may act. With SQLite there is one coordinator and it always leads. With etcd, coordinators campaign on
// an etcd lease (etcd-store.ts): one leads, the others stand by and proxy requests to it; when the leader
// dies its lease expires within LEADER_LEASE_TTL_S and a standby is elected.

export interface LeadershipEvents {
  elected(): void;
  /** Leadership lost (lease expired, etcd unreachable, stop): stop acting at once. */
  deposed(reason: string): void;
}

export interface Leadership {
  readonly leading: boolean;
  /** The current leader's advertised URL, or null while there is none (or it is not known yet). */
  leaderUrl(): Promise<string | null>;
  /** url: this coordinator's advertised URL (the value a standby proxies to). */
  start(url: string, events: LeadershipEvents): Promise<void>;
  stop(): Promise<void>;
}

export class SoloLeadership implements Leadership {
  leading = false;
  private url = '';

  async leaderUrl(): Promise<string | null> {
    return this.leading ? this.url : null;
  }

  async start(url: string, events: LeadershipEvents): Promise<void> {
    this.url = url;
    this.leading = true;
    events.elected();
  }

  async stop(): Promise<void> {
    this.leading = false;
  }
}

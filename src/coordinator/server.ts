// The coordinator: the HTTP API (api.ts) over a store (SQLite, or etcd with leader election), the host
// registry, the command dispatcher and the VM lifecycle. Lifecycle: fromConfig → start → stop (idempotent).
// Only the leader acts: it alone writes, dispatches commands and runs the tick (host liveness, settling
// operations a dead leader left). A standby serves /v1/status and proxies the rest to the leader.
import crypto from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import type { Logger } from '../log.ts';
import { apiHandler } from './api.ts';
import { BlobStore } from './blobs.ts';
import { AuthAudit } from './audit.ts';
import { ConsoleService, tokenPrincipal } from './console.ts';
import type { CoordinatorConfig } from './config.ts';
import { COORDINATOR_TICK_MS } from './constants.ts';
import { Credentials } from './credentials.ts';
import { Dispatcher } from './dispatch.ts';
import { HostRegistry } from './hosts.ts';
import { type Leadership, SoloLeadership } from './leader.ts';
import { SqliteStore, type Store } from './store.ts';
import type { HostRecord, ImageRecord } from './types.ts';
import { Reconciler } from './reconcile.ts';
import { VmRecords } from './vm-records.ts';
import { Lifecycle } from './vms.ts';
import { formatEndpoint } from '../addr.ts';
import { Watch } from './watch.ts';
import { eventStream, snapshotReader, webPage } from './web.ts';

export interface CoordinatorDeps {
  log: Logger;
  now?: () => number;
  /** Tests: a store and leadership of their own (default: from cfg.store). */
  store?: Store;
  leadership?: Leadership;
}

export class Coordinator {
  readonly id = crypto.randomBytes(4).toString('hex');
  readonly dispatch = new Dispatcher();
  readonly hosts: HostRegistry;
  readonly vms: Lifecycle;
  readonly reconciler: Reconciler;
  readonly blobs: BlobStore;
  readonly credentials: Credentials;
  /** Refused requests by reason (metrics). */
  readonly audit: AuthAudit;
  /** Hosts, VMs, images and operations for the web page's live updates and the console splice (watch.ts). */
  readonly watch: Watch;
  /** Serial consoles: viewers' and agents' WebSockets spliced (console.ts). */
  readonly consoles: ConsoleService;
  private server: http.Server | null = null;
  private metricsServer: http.Server | null = null;
  private timer: NodeJS.Timeout | null = null;
  private ticking = false;
  private stopped = false;
  private readonly now: () => number;
  /** Bumped at each election: a tick or reconcile begun under an older term does nothing. */
  private term = 0;

  private constructor(
    readonly config: CoordinatorConfig,
    readonly store: Store,
    readonly leadership: Leadership,
    readonly log: Logger,
    now: () => number,
  ) {
    this.now = now;
    this.credentials = new Credentials(store, now);
    this.audit = new AuthAudit(log.child({ part: 'api' }), now);
    this.hosts = new HostRegistry(store, log.child({ part: 'hosts' }), now, (host, reason) =>
      this.dispatch.failHost(host, reason ?? 'went down'),
    );
    const records = new VmRecords({
      store,
      hosts: this.hosts,
      dispatch: this.dispatch,
      log: log.child({ part: 'vms' }),
      now,
      leading: () => this.leadership.leading,
      imageSources: config.imageSources,
    });
    this.vms = new Lifecycle(records);
    this.reconciler = new Reconciler(records);
    this.blobs = new BlobStore(config.dataDir);
    this.watch = new Watch(
      snapshotReader({ store, hosts: this.hosts, busy: this.vms.busy }),
      log.child({ part: 'watch' }),
    );
    this.consoles = new ConsoleService({
      id: this.id,
      store,
      dispatch: this.dispatch,
      watch: this.watch,
      leadership,
      url: () => this.advertiseUrl,
      principal: tokenPrincipal(config.adminToken, this.credentials, this.audit),
      proxyCa: config.tls?.ca,
      log: log.child({ part: 'console' }),
    });
  }

  static async fromConfig(cfg: CoordinatorConfig, deps: CoordinatorDeps): Promise<Coordinator> {
    const now = deps.now ?? Date.now;
    if (deps.store) {
      return new Coordinator(cfg, deps.store, deps.leadership ?? new SoloLeadership(), deps.log, now);
    }
    if (cfg.store.backend === 'sqlite') {
      return new Coordinator(cfg, SqliteStore.open(cfg.dataDir), new SoloLeadership(), deps.log, now);
    }
    const { etcdClient, EtcdLeadership, EtcdStore } = await import('./etcd-store.ts');
    const client = etcdClient(cfg.store.endpoints);
    const store = new EtcdStore(client);
    return new Coordinator(
      cfg,
      store,
      new EtcdLeadership(client, store, deps.log.child({ part: 'leader' })),
      deps.log,
      now,
    );
  }

  /** The URL the API listens at (port 0 in the config: the one the OS chose). */
  get url(): string {
    const a = this.server?.address();
    if (a && typeof a === 'object')
      return `${this.config.tls ? 'https' : 'http'}://${formatEndpoint(a.address, a.port)}`;
    return this.config.advertiseUrl;
  }

  /** What the other coordinators proxy to: advertise_url, or the listening URL when the port was 0. */
  private advertised = '';
  get advertiseUrl(): string {
    return this.advertised || this.config.advertiseUrl;
  }

  async start(): Promise<void> {
    const { config, log } = this;
    const self = this;
    const handler = apiHandler({
      id: this.id,
      get url() {
        return self.advertiseUrl;
      },
      adminToken: config.adminToken,
      credentials: this.credentials,
      audit: this.audit,
      imageSources: config.imageSources,
      proxyCa: config.tls?.ca,
      store: this.store,
      hosts: this.hosts,
      vms: this.vms,
      dispatch: this.dispatch,
      leadership: this.leadership,
      imageServer: config.imageServer,
      blobs: this.blobs,
      log: log.child({ part: 'api' }),
      now: this.now,
      reconcile: (host, guests, disks) => {
        const term = this.term;
        if (!this.leadership.leading) return;
        this.reconciler.reconcile(host, guests, disks).catch((err) => {
          if (term === this.term) log.warn({ host, error: (err as Error).message }, 'reconcile failed');
        });
      },
      page: webPage(),
      events: eventStream(this.watch),
    });
    // TLS on the same port when configured: agents and the CLI check the certificate (their ca_file).
    const server: http.Server = config.tls
      ? https.createServer({ cert: config.tls.cert, key: config.tls.key }, handler)
      : http.createServer(handler);
    server.on('upgrade', (req, socket, head) => this.consoles.upgrade(req, socket, head));
    server.keepAliveTimeout = 65_000;
    server.requestTimeout = 0; // long polls and migrations outlast the default
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.listen.port, config.listen.address, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    if (config.listen.port === 0 && /:0$/.test(config.advertiseUrl)) this.advertised = this.url;
    if (config.metrics) {
      const { coordinatorRegistry } = await import('./metrics.ts');
      const { serveMetrics } = await import('../metrics.ts');
      this.metricsServer = await serveMetrics(coordinatorRegistry(this), config.metrics.listen);
    }
    await this.leadership.start(this.advertiseUrl, {
      elected: () => {
        this.onElected().catch((err) => log.error({ error: (err as Error).message }, 'taking over failed'));
      },
      deposed: (reason) => this.onDeposed(reason),
    });
    log.info(
      { id: this.id, listen: this.url, store: this.store.backend, leader: this.leadership.leading },
      'coordinator up',
    );
  }

  private async onElected(): Promise<void> {
    const term = ++this.term;
    await this.hosts.takeover();
    for (const img of this.config.images) {
      const old = await this.store.get<ImageRecord>('images', img.name);
      const same =
        old && JSON.stringify({ ...old, created_at: undefined }) === JSON.stringify({ ...img, created_at: undefined });
      if (!same)
        await this.store.put('images', img.name, {
          ...img,
          created_at: old?.created_at ?? new Date(this.now()).toISOString(),
        });
    }
    const [hosts, vms] = await Promise.all([this.store.list<HostRecord>('hosts'), this.vms.list()]);
    this.log.info({ term, hosts: hosts.length, vms: vms.length }, 'leading: acting on the store');
    if (this.timer || term !== this.term) return;
    this.timer = setInterval(() => this.tick(), COORDINATOR_TICK_MS);
  }

  private onDeposed(reason: string): void {
    this.term++;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.dispatch.close(`lost its leadership (${reason})`);
    this.consoles.close(`the coordinator lost its leadership (${reason}): attach again`);
    this.vms.busy.clear();
  }

  /** Host liveness, then operations nobody drives any more. One at a time. */
  private tick(): void {
    if (this.ticking || !this.leadership.leading) return;
    this.ticking = true;
    const term = this.term;
    (async () => {
      await this.hosts.tick();
      if (term !== this.term) return;
      await this.reconciler.settle((host) => {
        const l = this.hosts.live.get(host);
        return !l || l.down ? 'down' : l.guests;
      });
    })()
      .catch((err) => {
        if (term === this.term) this.log.warn({ error: (err as Error).message }, 'tick failed');
      })
      .finally(() => {
        this.ticking = false;
      });
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.dispatch.close('is stopping');
    this.consoles.close('the coordinator is stopping');
    this.watch.stop();
    await this.leadership.stop();
    const close = (s: http.Server | null) =>
      new Promise<void>((r) => {
        if (!s) return r();
        s.close(() => r());
        s.closeAllConnections();
      });
    await Promise.all([close(this.server), close(this.metricsServer)]);
    await this.store.close();
    this.log.info({ id: this.id }, 'coordinator stopped');
  }
}

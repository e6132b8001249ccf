// The coordinator's HTTP JSON API (src/coordinator/README.md). Every request needs a bearer token: the
// admin token for /v1/* and a host's own token (`homewire host add NAME`) for /v1/agent/*; without the right
// one the answer is 401 and nothing changes, and a host token used to act as another host is 403. A standby
// coordinator answers /v1/status itself and proxies everything else to the leader.
//
// Order of a request: auth → (standby: proxy) → route → JSON reply or {"error": {"code", "message"}}.
import crypto from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import type { Logger } from '../log.ts';
import type { BlobStore } from './blobs.ts';
import type { AuthAudit, AuthFailureReason } from './audit.ts';
import { API_BODY_MAX_BYTES, HEARTBEAT_MS, POLL_WAIT_MS } from './constants.ts';
import type { Credentials } from './credentials.ts';
import type { Dispatcher } from './dispatch.ts';
import type { HostQuery, HostRegistry } from './hosts.ts';
import { checkImage, checkName } from './images.ts';
import type { Leadership } from './leader.ts';
import { refuseMigrationAddress } from './migration.ts';
import { holdsCapacity } from './states.ts';
import type { Store } from './store.ts';
import {
  ApiError,
  type CommandResult,
  type GuestMac,
  type Heartbeat,
  type HostInfo,
  type HostRecord,
  type ImageRecord,
  type VmRecord,
} from './types.ts';
import { type Lifecycle, reservations } from './vms.ts';

export interface ApiContext {
  id: string;
  url: string;
  adminToken: string;
  credentials: Credentials;
  audit: AuthAudit;
  store: Store;
  hosts: HostRegistry;
  vms: Lifecycle;
  dispatch: Dispatcher;
  leadership: Leadership;
  imageServer?: string;
  /** Warm images' files (PUT|GET /v1/agent/blobs/SHA256). */
  blobs: BlobStore;
  /** The image allowlist (image_sources, image_server's host included). */
  imageSources: string[];
  /** CA certificates for proxying to a leader over HTTPS (tls.ca_file; default: the system's). */
  proxyCa?: string;
  log: Logger;
  now: () => number;
  /** Reconciles a host's fresh guest report, and the disks it keeps (async, errors logged). */
  reconcile(host: string, guests: Heartbeat['guests'], disks?: string[]): void;
  /** The web page's static files (web.ts; no token: they hold no data). True if it answered. */
  page?(req: http.IncomingMessage, res: http.ServerResponse, url: URL): boolean;
  /** GET /v1/events: server-sent events with hosts, VMs, images and operations (web.ts). */
  events?(req: http.IncomingMessage, res: http.ServerResponse): void;
}

export function apiHandler(ctx: ApiContext): http.RequestListener {
  const admin = digest(ctx.adminToken);
  return (req, res) => {
    const url = new URL(req.url ?? '/', 'http://coordinator');
    if (ctx.page?.(req, res, url)) return;
    const agentPath = url.pathname.startsWith('/v1/agent/');
    const token = bearer(req.headers.authorization);
    const who = { remote: req.socket.remoteAddress, method: req.method, path: url.pathname };
    const deny = (reason: AuthFailureReason) => {
      ctx.audit.refuse(reason, who);
      req.resume();
      reply(
        res,
        401,
        {
          error: {
            code: 'unauthorized',
            message: `missing or wrong bearer token: this endpoint needs ${agentPath ? "this host's own token (coordinator.token_file, from `homewire host add NAME`)" : 'the admin token (--token-file)'}`,
          },
        },
        { 'www-authenticate': 'Bearer' },
      );
    };
    if (token === null) return deny('missing_token');
    const serve = (principal: string | null) => {
      if (url.pathname === '/v1/status' && req.method === 'GET' && principal === null) {
        ctx.leadership.leaderUrl().then(
          (leader) =>
            reply(res, 200, {
              id: ctx.id,
              url: ctx.url,
              leader: ctx.leadership.leading,
              leader_url: leader,
              store: ctx.store.backend,
            }),
          (err) => fail(res, err, ctx.log),
        );
        return;
      }
      if (!ctx.leadership.leading) {
        proxy(ctx, req, res);
        return;
      }
      if (url.pathname === '/v1/events' && req.method === 'GET' && principal === null && ctx.events) {
        ctx.events(req, res);
        return;
      }
      const blob = principal !== null ? /^\/v1\/agent\/blobs\/([^/]+)$/.exec(url.pathname) : null;
      if (blob) {
        // Raw bodies both ways (not JSON, larger than API_BODY_MAX_BYTES), for any registered host.
        const sha = decodeURIComponent(blob[1]);
        (req.method === 'PUT'
          ? ctx.blobs.put(sha, req).then((r) => reply(res, r.existed ? 200 : 201, { sha256: sha, bytes: r.bytes }))
          : req.method === 'GET'
            ? ctx.blobs.get(sha, res)
            : Promise.reject(notFound(req.method ?? 'GET', url.pathname))
        ).catch((err) => fail(res, err, ctx.log));
        return;
      }
      route(ctx, req, res, url, principal).then(
        (r) => reply(res, r.status, r.body),
        (err) => fail(res, err, ctx.log),
      );
    };
    if (!agentPath) {
      // Compare digests in constant time: neither the token nor its length leaks through timing.
      if (!crypto.timingSafeEqual(digest(token), admin)) return deny('wrong_admin_token');
      return serve(null);
    }
    ctx.credentials.authenticate(token).then(
      (r) => (r.ok ? serve(r.host) : deny(r.reason)),
      (err) => {
        req.resume();
        fail(res, err, ctx.log);
      },
    );
  };
}

async function route(
  ctx: ApiContext,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  url: URL,
  principal: string | null,
): Promise<{ status: number; body: unknown }> {
  const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent); // ['v1', 'vms', NAME, 'start']
  const m = req.method ?? 'GET';
  const ok = (body: unknown, status = 200) => ({ status, body });
  if (parts[0] !== 'v1') throw notFound(m, url.pathname);
  const [, what, name, action] = parts;

  if (what === 'agent') return agent(ctx, req, res, name, principal!);
  if (what === 'hosts' && m === 'POST' && name === undefined) {
    // `homewire host add NAME [--rotate]`: a token bound to NAME, shown once.
    const body = (await readJson(req)) as Record<string, unknown>;
    for (const k of Object.keys(body))
      if (k !== 'name' && k !== 'rotate')
        throw new ApiError(400, 'bad_request', `unknown key "${k}"; allowed: name, rotate`);
    if (body.rotate !== undefined && typeof body.rotate !== 'boolean')
      throw new ApiError(400, 'bad_request', 'rotate must be true or false');
    const host = checkName(body.name, 'host');
    const r = await ctx.credentials.add(host, body.rotate === true);
    ctx.log.info({ host, rotated: r.rotated }, r.rotated ? 'host token replaced' : 'host added');
    return ok({ name: host, token: r.token, rotated: r.rotated }, r.rotated ? 200 : 201);
  }
  if (what === 'hosts' && m === 'DELETE' && name !== undefined && action === undefined) {
    // `homewire host remove NAME`: its token stops working now; its registration and commands go too.
    const revoked = await ctx.credentials.remove(name);
    const registered = await ctx.hosts.remove(name);
    const failed = await ctx.vms.hostRemoved(name);
    if (!revoked && !registered) throw new ApiError(404, 'not_found', `no host named ${name} (homewire host list)`);
    ctx.log.warn({ host: name, revoked, registered, failedVms: failed }, 'host removed: its token is revoked');
    return ok({ deleted: name, revoked, failed_vms: failed });
  }
  if (what === 'hosts' && m === 'GET' && name === undefined) {
    const views = ctx.hosts.filter(await hostViews(ctx), hostQuery(url.searchParams));
    return ok({ hosts: views });
  }
  if (what === 'hosts' && m === 'GET' && action === undefined) {
    const view = (await hostViews(ctx)).find((h) => h.name === name);
    if (!view) throw new ApiError(404, 'not_found', `no host named ${name} (homewire host list)`);
    return ok(view);
  }
  if (what === 'vms' && name === undefined) {
    if (m === 'GET') {
      let vms = await ctx.vms.list();
      const state = url.searchParams.get('state');
      const host = url.searchParams.get('host');
      if (state) vms = vms.filter((v) => v.state === state);
      if (host) vms = vms.filter((v) => v.host === host || v.target === host);
      return ok({ vms: ctx.hosts.withLeases(vms) });
    }
    if (m === 'POST') return ok(await ctx.vms.create(await readJson(req)), 201);
  }
  if (what === 'vms' && name !== undefined) {
    if (action === undefined && m === 'GET') return ok(ctx.hosts.withLeases([await ctx.vms.get(name)])[0]);
    if (action === 'console')
      throw new ApiError(
        426,
        'upgrade_required',
        'the console is a WebSocket (console.ts): use `homewire vm console NAME` or the web page',
      );
    if (action === undefined && m === 'DELETE') {
      await ctx.vms.delete(name);
      return ok({ deleted: name });
    }
    if (m === 'POST' && action === 'snapshot') {
      const body = (await readJson(req, true)) as Record<string, unknown>;
      for (const k of Object.keys(body))
        if (k !== 'image') throw new ApiError(400, 'bad_request', `unknown key "${k}" for snapshot; allowed: image`);
      if (typeof body.image !== 'string')
        throw new ApiError(400, 'bad_request', 'snapshot needs { "image": NAME }: the warm image to publish');
      return ok(await ctx.vms.snapshot(name, { image: body.image }), 201);
    }
    if (m === 'POST' && (action === 'start' || action === 'stop' || action === 'migrate')) {
      const body = (await readJson(req, true)) as Record<string, unknown>;
      for (const k of Object.keys(body)) {
        if (!(k === 'wait' || (k === 'host' && action !== 'stop')))
          throw new ApiError(
            400,
            'bad_request',
            `unknown key "${k}" for ${action}; allowed: ${action === 'stop' ? 'wait' : 'host, wait'}`,
          );
      }
      if (body.host !== undefined && typeof body.host !== 'string')
        throw new ApiError(400, 'bad_request', 'host must be a host name');
      if (body.wait !== undefined && typeof body.wait !== 'boolean')
        throw new ApiError(400, 'bad_request', 'wait must be true or false');
      const o = { host: body.host as string | undefined, wait: body.wait as boolean | undefined };
      const vm =
        action === 'start'
          ? await ctx.vms.start(name, o)
          : action === 'stop'
            ? await ctx.vms.stop(name, o)
            : await ctx.vms.migrate(name, o);
      return ok(vm, o.wait === false ? 202 : 200);
    }
  }
  if (what === 'images' && name === undefined) {
    if (m === 'GET') return ok({ images: await ctx.store.list<ImageRecord>('images') });
    if (m === 'POST') {
      const img: ImageRecord = {
        ...checkImage(await readJson(req), ctx.imageServer, ctx.imageSources),
        created_at: new Date(ctx.now()).toISOString(),
      };
      if (!(await ctx.store.create('images', img.name, img)))
        throw new ApiError(
          409,
          'name_taken',
          `an image named ${img.name} exists already: delete it first to redefine it`,
        );
      ctx.log.info({ image: img.name }, 'image added');
      return ok(img, 201);
    }
  }
  if (what === 'images' && name !== undefined && action === undefined) {
    if (m === 'GET') {
      const img = await ctx.store.get<ImageRecord>('images', name);
      if (!img) throw new ApiError(404, 'not_found', `no image named ${name}`);
      return ok(img);
    }
    if (m === 'DELETE') {
      const users = (await ctx.vms.list()).filter((v) => v.image === name).map((v) => v.name);
      if (users.length)
        throw new ApiError(409, 'in_use', `image ${name} is used by vm ${users.join(', ')}: delete those first`);
      if (!(await ctx.store.delete('images', name))) throw new ApiError(404, 'not_found', `no image named ${name}`);
      return ok({ deleted: name });
    }
  }
  if (what === 'reservations' && m === 'GET' && name === undefined)
    return ok({ reservations: reservations(await ctx.vms.list()) });
  throw notFound(m, url.pathname);
}

/** /v1/agent/register|heartbeat|poll|result (the host's own token: it acts only as itself). */
async function agent(
  ctx: ApiContext,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  what: string | undefined,
  principal: string,
): Promise<{ status: number; body: unknown }> {
  if (req.method !== 'POST') throw notFound(req.method ?? 'GET', `/v1/agent/${what}`);
  const body = (await readJson(req)) as Record<string, unknown>;
  const name = checkName(body.name, 'host');
  if (name !== principal) {
    ctx.audit.refuse('wrong_host', {
      remote: req.socket.remoteAddress,
      path: `/v1/agent/${what}`,
      principal,
      claimed: name,
    });
    throw new ApiError(
      403,
      'forbidden',
      `this token belongs to host ${principal}; it cannot act as host ${name} (each host uses its own token from \`homewire host add NAME\`)`,
    );
  }
  switch (what) {
    case 'register': {
      const rec = await ctx.hosts.register(hostInfo(body));
      return { status: 200, body: { host: rec, heartbeat_ms: HEARTBEAT_MS, poll_wait_ms: POLL_WAIT_MS } };
    }
    case 'heartbeat': {
      if (!Array.isArray(body.guests) || typeof body.boot_id !== 'string' || typeof body.guests_version !== 'number') {
        throw new ApiError(400, 'bad_request', 'a heartbeat is { name, boot_id, guests_version, guests: [...] }');
      }
      const hb = body as unknown as Heartbeat;
      const r = await ctx.hosts.heartbeat(hb);
      if (!r.known)
        throw new ApiError(
          404,
          'unknown_host',
          `host ${name} is not registered with this coordinator (or restarted): register again`,
        );
      const disks = Array.isArray(hb.disks) ? hb.disks.filter((d): d is string => typeof d === 'string') : undefined;
      if (r.guests) ctx.reconcile(name, r.guests, disks);
      const [rec, vms] = await Promise.all([ctx.store.get<HostRecord>('hosts', name), ctx.vms.list()]);
      return {
        status: 200,
        body: {
          ok: true,
          guest_macs: guestMacs(vms, name),
          ...(rec?.dhcp ? { reservations: reservations(vms) } : {}),
        },
      };
    }
    case 'poll': {
      if (!ctx.hosts.live.has(name))
        throw new ApiError(404, 'unknown_host', `host ${name} is not registered with this coordinator: register again`);
      const wait = typeof body.wait_ms === 'number' ? Math.max(0, Math.min(body.wait_ms, POLL_WAIT_MS)) : POLL_WAIT_MS;
      let gone = false;
      res.once('close', () => {
        gone = !res.writableFinished;
      });
      const commands = await ctx.dispatch.poll(name, wait);
      if (gone && commands.length) {
        ctx.dispatch.requeue(name, commands); // the agent left (or a proxy died) before hearing them
        return { status: 200, body: { commands: [] } };
      }
      return { status: 200, body: { commands } };
    }
    case 'result': {
      const r = body.result as CommandResult;
      if (!r || typeof r.id !== 'string' || typeof r.ok !== 'boolean')
        throw new ApiError(400, 'bad_request', 'a result is { name, result: { id, ok, ... } }');
      ctx.hosts.noteResult(name, r.boot_id, r.guests_version);
      return { status: 200, body: { accepted: ctx.dispatch.result(name, r) } };
    }
    default:
      throw notFound('POST', `/v1/agent/${what}`);
  }
}

/** The MACs (and reserved addresses) of the VMs the coordinator places on `host`: its daemon's port security. */
export function guestMacs(vms: VmRecord[], host: string): GuestMac[] {
  return vms
    .filter((v) => (v.host === host && holdsCapacity(v.state)) || (v.state === 'migrating' && v.target === host))
    .map((v) => ({ mac: v.mac, ip: v.ip, vm: v.name }));
}

function hostInfo(b: Record<string, unknown>): HostInfo {
  const bad = (m: string): never => {
    throw new ApiError(400, 'bad_request', `registration: ${m}`);
  };
  const str = (k: string) =>
    typeof b[k] === 'string' && b[k] ? (b[k] as string) : bad(`${k} must be a non-empty string`);
  const num = (k: string) =>
    typeof b[k] === 'number' && Number.isInteger(b[k]) && (b[k] as number) >= 0
      ? (b[k] as number)
      : bad(`${k} must be a whole number`);
  const hv = b.hypervisor as HostInfo['hypervisor'];
  if (!hv || typeof hv.kind !== 'string' || typeof hv.available !== 'boolean')
    bad('hypervisor must be { kind, available, accel }');
  const labels = b.labels ?? {};
  if (
    typeof labels !== 'object' ||
    Array.isArray(labels) ||
    Object.values(labels as object).some((v) => typeof v !== 'string')
  )
    bad('labels must map names to strings');
  let address: string | null = null;
  if (b.address !== undefined && b.address !== null) {
    const why = typeof b.address === 'string' ? refuseMigrationAddress(b.address) : 'must be an IP address';
    if (why) bad(`address: ${why}`);
    address = b.address as string;
  }
  const ports = b.migration_ports ?? null;
  if (
    ports !== null &&
    !(
      Array.isArray(ports) &&
      ports.length === 2 &&
      ports.every((p) => Number.isInteger(p) && p >= 1024 && p <= 65535) &&
      ports[0] <= ports[1]
    )
  )
    bad('migration_ports must be [FIRST, LAST], TCP ports from 1024 to 65535');
  let publicKey: string | null = null;
  if (b.public_key !== undefined && b.public_key !== null) {
    if (typeof b.public_key !== 'string' || !/^[A-Za-z0-9+/]{43}=$/.test(b.public_key))
      bad("public_key must be the daemon's base64 Curve25519 public key");
    publicKey = b.public_key as string;
  }
  return {
    name: str('name'),
    site: str('site'),
    cpus: num('cpus'),
    memory_mib: num('memory_mib'),
    labels: labels as Record<string, string>,
    hypervisor: {
      kind: hv.kind,
      available: hv.available,
      accel: hv.accel ?? null,
      ...(hv.reason ? { reason: String(hv.reason) } : {}),
      // What a warm image must match (short strings; anything else is dropped).
      ...Object.fromEntries(
        (['qemu_version', 'machine', 'cpu'] as const)
          .filter((k) => typeof hv[k] === 'string' && (hv[k] as string).length <= 64)
          .map((k) => [k, hv[k]]),
      ),
    },
    address,
    migration_ports: ports as [number, number] | null,
    public_key: publicKey,
    bridge: str('bridge'),
    dhcp: b.dhcp === true,
    boot_id: str('boot_id'),
    version: typeof b.version === 'string' ? b.version : 'unknown',
  };
}

async function hostViews(ctx: ApiContext) {
  const [hosts, vms] = await Promise.all([ctx.store.list<HostRecord>('hosts'), ctx.store.list<VmRecord>('vms')]);
  return ctx.hosts.views(hosts, vms);
}

/** ?site=S&label=k=v&label=k&free_cpus=N&free_memory_mib=M&state=up|down&hypervisor=true */
export function hostQuery(p: URLSearchParams): HostQuery {
  const q: HostQuery = {};
  const num = (k: string) => {
    const v = p.get(k);
    if (v === null) return undefined;
    if (!/^\d+$/.test(v)) throw new ApiError(400, 'bad_request', `${k} must be a whole number`);
    return Number(v);
  };
  for (const k of p.keys()) {
    if (!['site', 'label', 'free_cpus', 'free_memory_mib', 'state', 'hypervisor'].includes(k)) {
      throw new ApiError(
        400,
        'bad_request',
        `unknown filter ${k}; allowed: site, label, free_cpus, free_memory_mib, state, hypervisor`,
      );
    }
  }
  if (p.has('site')) q.site = p.get('site')!;
  const labels = p.getAll('label');
  if (labels.length) {
    q.labels = {};
    for (const l of labels) {
      const i = l.indexOf('=');
      if (i === 0 || l === '') throw new ApiError(400, 'bad_request', `label filter "${l}" must be NAME or NAME=VALUE`);
      if (i < 0) q.labels[l] = null;
      else q.labels[l.slice(0, i)] = l.slice(i + 1);
    }
  }
  q.freeCpus = num('free_cpus');
  q.freeMemoryMib = num('free_memory_mib');
  const state = p.get('state');
  if (state !== null) {
    if (state !== 'up' && state !== 'down') throw new ApiError(400, 'bad_request', 'state must be up or down');
    q.state = state;
  }
  const hv = p.get('hypervisor');
  if (hv !== null) q.hypervisor = hv === 'true' || hv === '1' || hv === 'yes';
  return q;
}

/** A standby passes the request to the leader unchanged (token included) and streams the answer back. */
function proxy(ctx: ApiContext, req: http.IncomingMessage, res: http.ServerResponse): void {
  ctx.leadership.leaderUrl().then(
    (leader) => {
      if (!leader || leader === ctx.url) {
        req.resume();
        return reply(res, 503, {
          error: {
            code: 'no_leader',
            message: 'no coordinator is the leader right now (election in progress): retry in a second',
          },
        });
      }
      const target = new URL(req.url ?? '/', leader);
      const request = target.protocol === 'https:' ? https.request : http.request;
      const up = request(
        target,
        {
          method: req.method,
          headers: { ...req.headers, host: target.host, 'x-forwarded-by': ctx.id },
          ...(ctx.proxyCa ? { ca: ctx.proxyCa } : {}),
        },
        (r) => {
          res.writeHead(r.statusCode ?? 502, r.headers);
          r.pipe(res);
        },
      );
      up.on('error', (err: NodeJS.ErrnoException) => {
        if (res.headersSent) {
          res.destroy();
          return;
        }
        reply(res, 503, {
          error: {
            code: 'no_leader',
            message: `the leader at ${leader} does not answer (${err.code ?? err.message}): retry; a standby takes over within seconds`,
          },
        });
      });
      res.on('close', () => {
        if (!res.writableFinished) up.destroy();
      });
      req.pipe(up);
    },
    (err) => fail(res, err, ctx.log),
  );
}

function readJson(req: http.IncomingMessage, emptyOk = false): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > API_BODY_MAX_BYTES) {
        reject(new ApiError(400, 'bad_request', `body larger than ${API_BODY_MAX_BYTES} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('error', reject);
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8').trim();
      if (text === '')
        return emptyOk ? resolve({}) : reject(new ApiError(400, 'bad_request', 'the body must be a JSON object'));
      try {
        const v = JSON.parse(text);
        if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
        resolve(v);
      } catch {
        reject(new ApiError(400, 'bad_request', 'the body is not a JSON object'));
      }
    });
  });
}

function reply(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(`${JSON.stringify(body)}\n`);
}

function fail(res: http.ServerResponse, err: unknown, log: Logger): void {
  if (err instanceof ApiError) {
    reply(res, err.status, { error: { code: err.code, message: err.message } });
    return;
  }
  log.error({ error: (err as Error)?.stack ?? String(err) }, 'api: internal error');
  reply(res, 500, { error: { code: 'internal', message: `internal error: ${(err as Error)?.message ?? err}` } });
}

function notFound(method: string, path: string): ApiError {
  return new ApiError(404, 'not_found', `no such endpoint: ${method} ${path} (see src/coordinator/README.md)`);
}

function bearer(h: string | undefined): string | null {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(h ?? '');
  return m ? m[1] : null;
}

function digest(s: string): Buffer {
  return crypto.createHash('sha256').update(s).digest();
}

// Serial consoles through the coordinator. VM hosts are behind NAT and take no inbound connections, so a viewer
// never reaches a host: it opens a WebSocket to GET /v1/vms/NAME/console (admin token), and the coordinator
// asks the VM's host (a `console` command on the agent's poll channel) to open a stream to GET
// /v1/agent/console?host=H&session=S (host credentials, and a session id the coordinator gave only that host),
// then splices the two (src/agent/console.ts has the agent's side and the stream's messages).
//
// One Hub per watched VM: its viewers, the agent stream, and a mirror of the scrollback (what the agent
// replayed plus everything since), so a viewer that attaches later gets it at once and the output a VM printed
// on its old host stays visible after a migration. The hub follows the VM record (watch.ts): when the VM runs on
// another host (a migration completed) it drops the old stream and asks the new host; when it stops, viewers
// are told and stay attached until it runs again; when it is deleted they are closed (4404). The stream stays
// open while viewers are attached (and CONSOLE_LINGER_MS after the last one left).
//
// Viewers: binary messages are output; text messages are JSON notices ({"type":"status"|"error", ...}); what a
// viewer sends (binary or text) is typed into the guest. Browsers cannot set an Authorization header on a
// WebSocket: they offer the subprotocols "homewire.console" and "bearer.<base64url of the token>", and the
// coordinator answers "homewire.console". A standby coordinator passes upgrades to the leader unchanged.
import crypto from 'node:crypto';
import type http from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import WebSocket, { WebSocketServer } from 'ws';
import type { Logger } from '../log.ts';
import {
  CONSOLE_AGENT_MESSAGE_MAX_BYTES,
  CONSOLE_LINGER_MS,
  CONSOLE_LINK_TIMEOUT_MS,
  CONSOLE_RETRY_MS,
  CONSOLE_SCROLLBACK_BYTES,
  CONSOLE_SEND_BUFFER_MAX_BYTES,
  CONSOLE_VIEWER_MESSAGE_MAX_BYTES,
  CONSOLE_VIEWER_RESUME_BYTES,
  CONSOLE_VIEWER_STALL_MS,
} from './constants.ts';
import type { Dispatcher } from './dispatch.ts';
import type { Leadership } from './leader.ts';
import { ByteRing } from './ring.ts';
import type { AuthAudit } from './audit.ts';
import type { Credentials } from './credentials.ts';
import type { Store } from './store.ts';
import type { VmRecord } from './types.ts';
import type { Watch } from './watch.ts';

export const CONSOLE_SUBPROTOCOL = 'homewire.console';
const BEARER_PROTOCOL = 'bearer.';
/** Close codes for viewers. */
export const CLOSE_VM_DELETED = 4404;
export const CLOSE_NOT_LEADER = 4503;

export interface ConsoleDeps {
  id: string;
  store: Store;
  dispatch: Dispatcher;
  watch: Watch;
  leadership: Leadership;
  /** This coordinator's own URL (a standby must not proxy to itself). */
  url(): string;
  /** Who the request's bearer token names for this role: 'admin', a host's name, ANY_HOST (a token all hosts
   *  share names none), or null (no or a wrong token). The API's own check (tokenPrincipal). */
  principal(req: http.IncomingMessage, role: 'admin' | 'host'): Promise<string | null>;
  /** CA certificates for proxying to a leader over TLS (tls.ca_file; default: the system's). */
  proxyCa?: string;
  log: Logger;
}

/** The principal of a token all hosts would share (none do since per-host tokens): "a host", not which. */
export const ANY_HOST = '*';

/**
 * principal() for the admin token (constant-time comparison) and each host's own token (credentials.ts): a
 * host token names its host. Refusals are counted and logged like the API's (audit.ts).
 */
export function tokenPrincipal(
  adminToken: string,
  credentials: Credentials,
  audit: AuthAudit,
): (req: http.IncomingMessage, role: 'admin' | 'host') => Promise<string | null> {
  const digest = (s: string) => crypto.createHash('sha256').update(s).digest();
  const admin = digest(adminToken);
  return async (req, role) => {
    const who = { remote: req.socket.remoteAddress, path: req.url?.split('?')[0], console: true };
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    if (!m) {
      audit.refuse('missing_token', who);
      return null;
    }
    if (role === 'admin') {
      if (crypto.timingSafeEqual(digest(m[1]), admin)) return 'admin';
      audit.refuse('wrong_admin_token', who);
      return null;
    }
    const r = await credentials.authenticate(m[1]);
    if (r.ok) return r.host;
    audit.refuse(r.reason, who);
    return null;
  };
}

/** Why upgrades were refused and what else went wrong: plain counters, read by metrics. */
export interface ConsoleStats {
  viewersAttached: number;
  streamsOpened: number;
  streamRequestsFailed: number;
  rejected: Record<'unauthorized' | 'not_found' | 'bad_session' | 'wrong_host' | 'no_leader' | 'bad_stream', number>;
  slowViewersClosed: number;
  /** Times a viewer's backlog held an agent's stream (output waits at the agent until the viewer catches up). */
  streamsHeld: number;
  inputDroppedBytes: number;
  proxied: number;
}

export class ConsoleService {
  readonly stats: ConsoleStats = {
    viewersAttached: 0,
    streamsOpened: 0,
    streamRequestsFailed: 0,
    rejected: { unauthorized: 0, not_found: 0, bad_session: 0, wrong_host: 0, no_leader: 0, bad_stream: 0 },
    slowViewersClosed: 0,
    streamsHeld: 0,
    inputDroppedBytes: 0,
    proxied: 0,
  };
  readonly hubs = new Map<string, Hub>();
  /** Session id → the hub that asked a host for a stream, and the host. */
  readonly sessions = new Map<string, { hub: Hub; host: string }>();
  private readonly viewerWss = new WebSocketServer({
    noServer: true,
    maxPayload: CONSOLE_VIEWER_MESSAGE_MAX_BYTES,
    perMessageDeflate: false,
    handleProtocols: (protocols) => (protocols.has(CONSOLE_SUBPROTOCOL) ? CONSOLE_SUBPROTOCOL : false),
  });
  private readonly agentWss = new WebSocketServer({
    noServer: true,
    maxPayload: CONSOLE_AGENT_MESSAGE_MAX_BYTES,
    perMessageDeflate: false,
  });

  constructor(readonly d: ConsoleDeps) {}

  get viewers(): number {
    let n = 0;
    for (const h of this.hubs.values()) n += h.viewers.size;
    return n;
  }

  /** The HTTP server's 'upgrade' event. */
  upgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => {});
    const url = new URL(req.url ?? '/', 'http://coordinator');
    const agent = url.pathname === '/v1/agent/console';
    const m = /^\/v1\/vms\/([^/]+)\/console$/.exec(url.pathname);
    if (!agent && !m) {
      this.stats.rejected.not_found++;
      refuse(socket, 404, 'not_found', `no WebSocket endpoint at ${url.pathname}`);
      return;
    }
    if (!agent) bearerFromProtocol(req);
    this.d.principal(req, agent ? 'host' : 'admin').then(
      (principal) => {
        if (principal === null) {
          this.stats.rejected.unauthorized++;
          refuse(
            socket,
            401,
            'unauthorized',
            `missing or wrong bearer token: this endpoint needs the ${agent ? "host's" : 'admin'} token`,
          );
          return;
        }
        if (!this.d.leadership.leading) this.proxy(req, socket, head);
        else if (agent) this.agentStream(req, socket, head, url, principal);
        else this.viewer(req, socket, head, m![1]);
      },
      (err) => refuse(socket, 500, 'internal', `checking the token: ${(err as Error).message}`),
    );
  }

  private viewer(req: http.IncomingMessage, socket: Duplex, head: Buffer, encoded: string): void {
    let name: string;
    try {
      name = decodeURIComponent(encoded);
    } catch {
      this.stats.rejected.not_found++;
      refuse(socket, 404, 'not_found', 'bad vm name');
      return;
    }
    this.d.store.get<VmRecord>('vms', name).then(
      (vm) => {
        if (!vm) {
          this.stats.rejected.not_found++;
          refuse(socket, 404, 'not_found', `no vm named ${name} (homewire vm list)`);
          return;
        }
        this.viewerWss.handleUpgrade(req, socket, head, (ws) => {
          // Who watches (and may type into) which console: worth a line.
          this.d.log.info({ vm: name, remote: req.socket.remoteAddress }, 'console viewer attached');
          this.hub(name, vm).addViewer(ws);
        });
      },
      (err) => refuse(socket, 500, 'internal', `reading vm ${name}: ${(err as Error).message}`),
    );
  }

  private hub(name: string, vm: VmRecord): Hub {
    let h = this.hubs.get(name);
    if (!h) {
      h = new Hub(this, name, vm);
      this.hubs.set(name, h);
    }
    return h;
  }

  /** An agent's stream: only for a session this coordinator gave that host, and only once. */
  private agentStream(req: http.IncomingMessage, socket: Duplex, head: Buffer, url: URL, principal: string): void {
    const session = url.searchParams.get('session') ?? '';
    const host = url.searchParams.get('host') ?? '';
    const s = this.sessions.get(session);
    if (!s || s.host !== host) {
      this.stats.rejected.bad_session++;
      this.d.log.warn({ host, remote: req.socket.remoteAddress }, 'console: stream for an unknown session refused');
      refuse(socket, 404, 'bad_session', 'no console session with this id for this host');
      return;
    }
    // With per-host credentials the token names the host: only the VM's host may answer its console.
    if (principal !== ANY_HOST && principal !== s.host) {
      this.stats.rejected.wrong_host++;
      this.d.log.warn({ host, principal, remote: req.socket.remoteAddress }, 'console: stream from another host');
      refuse(socket, 403, 'forbidden', `this console session belongs to host ${s.host}`);
      return;
    }
    this.sessions.delete(session);
    this.agentWss.handleUpgrade(req, socket, head, (ws) => s.hub.streamArrived(ws, host, session));
  }

  /** A standby: the leader has the hubs. Pass the upgrade request on unchanged and splice the bytes. */
  private proxy(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    this.d.leadership.leaderUrl().then(
      (leader) => {
        if (!leader || leader === this.d.url()) {
          this.stats.rejected.no_leader++;
          refuse(socket, 503, 'no_leader', 'no coordinator is the leader right now: retry in a second');
          return;
        }
        const t = new URL(leader);
        const port = Number(t.port || (t.protocol === 'https:' ? 443 : 80));
        const host = t.hostname.replace(/^\[|\]$/g, '');
        const up =
          t.protocol === 'https:'
            ? tls.connect({
                host,
                port,
                servername: net.isIP(host) ? undefined : host,
                ...(this.d.proxyCa ? { ca: this.d.proxyCa } : {}),
              })
            : net.connect(port, host);
        up.once(t.protocol === 'https:' ? 'secureConnect' : 'connect', () => {
          this.stats.proxied++;
          const lines = [`${req.method} ${req.url} HTTP/1.1`];
          for (let i = 0; i < req.rawHeaders.length; i += 2) {
            if (req.rawHeaders[i].toLowerCase() !== 'host')
              lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
          }
          lines.push(`Host: ${t.host}`, `X-Forwarded-By: ${this.d.id}`);
          up.write(`${lines.join('\r\n')}\r\n\r\n`);
          if (head.length) up.write(head);
          socket.pipe(up).pipe(socket);
        });
        up.on('error', () => {
          if (up.bytesRead === 0)
            refuse(socket, 503, 'no_leader', `the leader at ${leader} does not answer: retry; a standby takes over`);
          else socket.destroy();
        });
        socket.on('close', () => up.destroy());
      },
      () => refuse(socket, 503, 'no_leader', 'cannot tell who leads: retry'),
    );
  }

  /** Leadership lost or shutting down: every viewer and stream closes (viewers reconnect, to the new leader). */
  close(reason: string): void {
    for (const h of [...this.hubs.values()]) h.dispose(CLOSE_NOT_LEADER, reason);
    this.sessions.clear();
  }
}

/** One watched VM: its viewers, its stream from the host that runs it, the scrollback mirror. */
export class Hub {
  readonly viewers = new Set<WebSocket>();
  private readonly mirror = new ByteRing(CONSOLE_SCROLLBACK_BYTES);
  private stream: WebSocket | null = null;
  private streamHost: string | null = null;
  /** The agent's console stream id and how far this hub has read it (to resume without repeats). */
  private streamId: string | undefined;
  private streamPos = 0;
  private wantedHost: string | null = null;
  private pendingSession: string | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private lingerTimer: NodeJS.Timeout | null = null;
  private unwatch: (() => void) | null = null;
  private lastNotice = '';
  private disposed = false;
  /** The stream is paused because a viewer is CONSOLE_SEND_BUFFER_MAX_BYTES behind; the stall timer runs. */
  private held: NodeJS.Timeout | null = null;
  private readonly sent = (): void => {
    if (this.held) this.releaseIfCaughtUp();
  };

  constructor(
    private readonly svc: ConsoleService,
    readonly name: string,
    private vm: VmRecord,
  ) {
    this.unwatch = svc.d.watch.subscribe((s) => this.follow(s.vms.find((v) => v.name === name) ?? null));
    this.follow(vm);
  }

  addViewer(ws: WebSocket): void {
    if (this.disposed) {
      ws.close(1011, 'console closed; attach again');
      return;
    }
    this.svc.stats.viewersAttached++;
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.lingerTimer = null;
    this.viewers.add(ws);
    ws.on('error', () => {});
    const back = this.mirror.read();
    if (back.data.length) ws.send(back.data);
    ws.send(JSON.stringify(this.status()));
    ws.on('message', (data: Buffer) => this.input(data));
    ws.on('close', () => {
      this.viewers.delete(ws);
      if (this.held) this.releaseIfCaughtUp();
      if (this.viewers.size === 0 && !this.disposed)
        this.lingerTimer = setTimeout(() => this.dispose(1000, 'no viewers'), CONSOLE_LINGER_MS);
    });
  }

  private input(data: Buffer): void {
    const s = this.stream;
    if (s?.readyState === WebSocket.OPEN) s.send(data, { binary: true });
    else this.svc.stats.inputDroppedBytes += data.length;
  }

  private status(): Record<string, unknown> {
    const vm = this.vm;
    const connected = this.stream?.readyState === WebSocket.OPEN;
    return {
      type: 'status',
      vm: vm.name,
      state: vm.state,
      host: vm.host,
      target: vm.target,
      connected,
      message: connected
        ? `connected to ${vm.name} on ${this.streamHost}`
        : this.wantedHost
          ? `waiting for ${this.wantedHost} to open the console of ${vm.name}`
          : `vm ${vm.name} is ${vm.state}: the console connects when it runs`,
    };
  }

  private notify(msg: Record<string, unknown>): void {
    const text = JSON.stringify(msg);
    if (text === this.lastNotice) return;
    this.lastNotice = text;
    for (const v of this.viewers) if (v.readyState === WebSocket.OPEN) v.send(text);
  }

  /** The VM record changed (or is gone): connect to where it runs now. */
  private follow(vm: VmRecord | null): void {
    if (this.disposed) return;
    if (!vm) {
      this.dispose(CLOSE_VM_DELETED, `vm ${this.name} was deleted`);
      return;
    }
    this.vm = vm;
    const host = vm.state === 'running' || vm.state === 'migrating' ? vm.host : null;
    if (host !== this.wantedHost) {
      this.wantedHost = host;
      this.pendingSession = null;
      if (this.retryTimer) clearTimeout(this.retryTimer);
      this.retryTimer = null;
      if (this.stream && this.streamHost !== host) {
        this.release();
        this.stream.close(1000, host ? `vm moved to ${host}` : `vm is ${vm.state}`);
        this.stream = null;
        this.streamHost = null;
      }
      if (host) this.request(host);
    }
    this.notify(this.status());
  }

  private request(host: string): void {
    if (this.disposed || this.wantedHost !== host || this.stream) return;
    const session = crypto.randomBytes(16).toString('base64url');
    this.pendingSession = session;
    this.svc.sessions.set(session, { hub: this, host });
    const forget = () => {
      if (this.svc.sessions.get(session)?.hub === this) this.svc.sessions.delete(session);
    };
    this.svc.d.dispatch
      .send(
        host,
        { type: 'console', name: this.name, session, stream: this.streamId, from: this.streamPos },
        CONSOLE_LINK_TIMEOUT_MS,
      )
      .then((r) => {
        if (!r.ok) throw new Error(r.error ?? 'failed');
      })
      .catch((err) => {
        forget();
        if (this.pendingSession !== session) return;
        this.pendingSession = null;
        this.svc.stats.streamRequestsFailed++;
        this.notify({
          type: 'error',
          vm: this.name,
          message: `${host} could not open the console: ${(err as Error).message}; retrying`,
        });
        this.retryLater(host);
      });
    // A session the host never uses is forgotten after the timeout (the dispatcher also times the command out).
    setTimeout(forget, CONSOLE_LINK_TIMEOUT_MS + 1000).unref();
  }

  private retryLater(host: string): void {
    if (this.disposed || this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.request(host);
    }, CONSOLE_RETRY_MS);
  }

  /** The agent's stream for a session this hub asked for. */
  streamArrived(ws: WebSocket, host: string, session: string): void {
    ws.on('error', () => {});
    if (this.disposed || session !== this.pendingSession || host !== this.wantedHost || this.stream) {
      ws.close(1000, 'not wanted any more');
      return;
    }
    this.pendingSession = null;
    this.stream = ws;
    this.streamHost = host;
    this.svc.stats.streamsOpened++;
    let hello = false;
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) {
        const h = parseHello(data);
        if (!h || hello) {
          this.svc.stats.rejected.bad_stream++;
          ws.close(1002, 'expected one hello');
          return;
        }
        hello = true;
        if (h.stream !== this.streamId) {
          this.streamId = h.stream; // a new console (a new host, or the guest restarted): its replay is all new
          this.streamPos = h.from;
        } else if (h.from > this.streamPos) {
          this.output(Buffer.from(`\r\n[homewire: ${h.from - this.streamPos} bytes of output were lost]\r\n`));
          this.streamPos = h.from;
        } else {
          this.streamPos = h.from;
        }
        this.notify(this.status());
        return;
      }
      if (!hello) {
        this.svc.stats.rejected.bad_stream++;
        ws.close(1002, 'output before hello');
        return;
      }
      this.streamPos += data.length;
      this.output(data);
    });
    ws.on('close', () => {
      if (this.stream !== ws) return;
      this.release();
      this.stream = null;
      this.streamHost = null;
      if (this.disposed) return;
      this.notify(this.status());
      if (this.wantedHost === host) this.retryLater(host);
    });
  }

  /**
   * Output to every viewer. Flow control: a viewer with CONSOLE_SEND_BUFFER_MAX_BYTES unsent holds the agent's
   * stream (ws pause: no more is read, TCP pushes back, the agent buffers and closes its stream if that grows
   * too; its guest never waits) until every viewer is down to CONSOLE_VIEWER_RESUME_BYTES. A burst larger than
   * the buffers therefore reaches every viewer that reads, at the pace of the slowest; a viewer still behind
   * after CONSOLE_VIEWER_STALL_MS is closed and the others go on.
   */
  private output(data: Buffer): void {
    this.mirror.write(data);
    let behind = false;
    for (const v of this.viewers) {
      if (v.readyState !== WebSocket.OPEN) continue;
      v.send(data, this.sent);
      if (v.bufferedAmount > CONSOLE_SEND_BUFFER_MAX_BYTES) behind = true;
    }
    if (behind && !this.held && this.stream) {
      this.svc.stats.streamsHeld++;
      this.stream.pause();
      this.held = setTimeout(() => this.closeStalled(), CONSOLE_VIEWER_STALL_MS);
    }
  }

  private releaseIfCaughtUp(): void {
    for (const v of this.viewers)
      if (v.readyState === WebSocket.OPEN && v.bufferedAmount > CONSOLE_VIEWER_RESUME_BYTES) return;
    this.release();
  }

  private release(): void {
    if (!this.held) return;
    clearTimeout(this.held);
    this.held = null;
    this.stream?.resume();
  }

  /** The stall timer: viewers that did not catch up are closed (cut off a second later if they do not read the
   *  close either); the stream flows again. */
  private closeStalled(): void {
    for (const v of this.viewers) {
      if (v.readyState !== WebSocket.OPEN || v.bufferedAmount <= CONSOLE_VIEWER_RESUME_BYTES) continue;
      this.svc.stats.slowViewersClosed++;
      v.close(1013, 'viewer too slow: attach again');
      setTimeout(() => v.terminate(), 1000).unref();
    }
    this.release();
  }

  dispose(code: number, reason: string): void {
    if (this.disposed) return;
    this.disposed = true;
    this.release();
    this.unwatch?.();
    for (const t of [this.retryTimer, this.lingerTimer]) if (t) clearTimeout(t);
    const sockets = [...this.viewers];
    for (const v of sockets) v.close(code, reason.slice(0, 120));
    if (this.stream) {
      this.stream.close(1000, reason.slice(0, 120));
      sockets.push(this.stream);
    }
    this.stream = null;
    this.viewers.clear();
    // A peer that does not answer the close handshake is cut off (ws would wait 30 s).
    setTimeout(() => {
      for (const ws of sockets) ws.terminate();
    }, 1000).unref();
    if (this.svc.hubs.get(this.name) === this) this.svc.hubs.delete(this.name);
  }
}

function parseHello(data: Buffer): { stream: string; from: number } | null {
  try {
    const h = JSON.parse(data.toString('utf8')) as { type?: unknown; stream?: unknown; from?: unknown };
    if (h.type !== 'hello' || typeof h.stream !== 'string' || h.stream.length > 64) return null;
    if (typeof h.from !== 'number' || !Number.isSafeInteger(h.from) || h.from < 0) return null;
    return { stream: h.stream, from: h.from };
  } catch {
    return null;
  }
}

/** Browsers: "bearer.<base64url token>" among the subprotocols stands for an Authorization header. */
function bearerFromProtocol(req: http.IncomingMessage): void {
  if (req.headers.authorization) return;
  const offered = (req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim());
  const b = offered.find((p) => p.startsWith(BEARER_PROTOCOL));
  if (!b) return;
  const token = Buffer.from(b.slice(BEARER_PROTOCOL.length), 'base64url').toString('utf8');
  if (token) req.headers.authorization = `Bearer ${token}`;
}

const REASONS: Record<number, string> = {
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

/** An HTTP answer instead of the upgrade, in the API's error shape. */
function refuse(socket: Duplex, status: number, code: string, message: string): void {
  if (socket.destroyed) return;
  const body = `${JSON.stringify({ error: { code, message } })}\n`;
  socket.end(
    `HTTP/1.1 ${status} ${REASONS[status] ?? 'Error'}\r\ncontent-type: application/json\r\n` +
      `${status === 401 ? 'www-authenticate: Bearer\r\n' : ''}content-length: ${Buffer.byteLength(body)}\r\n` +
      `connection: close\r\n\r\n${body}`,
  );
}

// The daemon's local control interface: HTTP over a unix socket (mode 0600, so only root or the daemon's
// user can use it). Used by `homewire status|reload|expect|leases` and by the coordinator's host agent.
//
//   GET  /v1/status            peers, local MACs, leases (JSON)
//   POST /v1/reload            re-read the config file (as SIGHUP)
//   POST /v1/expect?mac=M      MAC M is about to arrive here (live migration): peers send its frames here too
//   POST /v1/guests            {"guests": ["aa:..", {"mac": "aa:..", "ip": "198.51.100.20"}]}: the coordinator's
//                              VM records for this host (port security, ARP inspection bindings)
//   POST /v1/authorize-move    {"mac": "aa:..", "to": "host-b" | "<base64 key>", "seconds": 60} (or "until_ms"):
//                              a coordinator-announced migration; MAC may move to that site until then
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { OperatorError } from './errors.ts';
import type { StatusReport } from './status.ts';

export interface ControlHandlers {
  status(): StatusReport;
  reload(): Promise<ControlResult>;
  expect(mac: string): { ok: boolean; error?: string };
  guests(list: ReadonlyArray<string | { mac: string; ip?: string | null }>): { ok: boolean; error?: string };
  authorizeMove(mac: string, to: string, untilMs: number): { ok: boolean; error?: string };
}

const BODY_MAX_BYTES = 1 << 20;

/** A JSON request body (at most 1 MiB), or an error text. */
// biome-ignore lint/suspicious/noExplicitAny: a request body is checked field by field by its handler
function readJson(req: http.IncomingMessage): Promise<{ value?: any; error?: string }> {
  return new Promise((resolve) => {
    let size = 0;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= BODY_MAX_BYTES) chunks.push(c);
    });
    req.on('end', () => {
      if (size > BODY_MAX_BYTES) return resolve({ error: 'request body larger than 1 MiB' });
      try {
        resolve({ value: JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') });
      } catch {
        resolve({ error: 'request body is not JSON' });
      }
    });
    req.on('error', () => resolve({ error: 'request aborted' }));
  });
}

export function defaultControlSocket(name: string): string {
  return `/run/homewire/${name}.sock`;
}

/** Listens on the socket path; refuses if a live daemon already answers there, removes a stale socket. */
export async function serveControl(socketPath: string, h: ControlHandlers): Promise<http.Server> {
  fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o755 });
  if (fs.existsSync(socketPath)) {
    if (await answers(socketPath)) {
      throw new OperatorError(
        'EADDRINUSE',
        `control socket ${socketPath} belongs to a running homewire daemon with the same name: stop it, or set control.socket`,
      );
    }
    fs.unlinkSync(socketPath);
  }
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://local');
    const reply = (code: number, body: unknown) => {
      res.writeHead(code, { 'content-type': 'application/json' }).end(`${JSON.stringify(body)}\n`);
    };
    if (req.method === 'GET' && url.pathname === '/v1/status') return reply(200, h.status());
    if (req.method === 'POST' && url.pathname === '/v1/reload') {
      h.reload().then(
        (r) => reply(r.ok ? 200 : 400, r),
        (err) => reply(500, { ok: false, error: String(err) }),
      );
      return;
    }
    if (req.method === 'POST' && url.pathname === '/v1/expect') {
      const r = h.expect(url.searchParams.get('mac') ?? '');
      return reply(r.ok ? 200 : 400, r);
    }
    if (req.method === 'POST' && url.pathname === '/v1/guests') {
      readJson(req).then(({ value, error }) => {
        const list = Array.isArray(value) ? value : value?.guests;
        if (error || !Array.isArray(list))
          return reply(400, { ok: false, error: error ?? 'body must be {"guests": [MAC or {mac, ip}, ...]}' });
        const r = h.guests(list);
        reply(r.ok ? 200 : 400, r);
      });
      return;
    }
    if (req.method === 'POST' && url.pathname === '/v1/authorize-move') {
      readJson(req).then(({ value, error }) => {
        const q = (k: string) => value?.[k] ?? url.searchParams.get(k) ?? undefined;
        const seconds = q('seconds');
        const untilMs = q('until_ms') !== undefined ? Number(q('until_ms')) : Date.now() + Number(seconds) * 1000;
        if (error || typeof q('mac') !== 'string' || typeof q('to') !== 'string' || !Number.isFinite(untilMs))
          return reply(400, {
            ok: false,
            error: error ?? 'give mac, to (peer name or base64 key) and seconds or until_ms',
          });
        const r = h.authorizeMove(q('mac'), q('to'), untilMs);
        reply(r.ok ? 200 : 400, r);
      });
      return;
    }
    reply(404, { ok: false, error: `no such endpoint: ${req.method} ${url.pathname}` });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  fs.chmodSync(socketPath, 0o600);
  return server;
}

function answers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** What reload and expect answer. */
export interface ControlResult {
  ok: boolean;
  error?: string;
  changes?: string[];
}

/** A request to a daemon's control socket; throws OperatorError with what to do if nobody answers. */
export function controlRequest<T = ControlResult>(
  socketPath: string,
  method: 'GET' | 'POST',
  urlPath: string,
  json?: unknown,
): Promise<{ status: number; body: T }> {
  const payload = json === undefined ? undefined : JSON.stringify(json);
  const headers =
    payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) };
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, method, path: urlPath, timeout: 5000, headers }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (data += c));
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(data) });
        } catch {
          reject(new Error(`bad reply from ${socketPath}`));
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (err: NodeJS.ErrnoException) => {
      reject(
        new OperatorError(
          err.code ?? 'ECONTROL',
          `cannot reach the daemon at ${socketPath} (${err.code ?? err.message}): is \`homewire up\` running with this config, and are you root?`,
        ),
      );
    });
    req.end(payload);
  });
}

// HTTP client of the coordinator API, for the CLI and the host agent. Several URLs (every coordinator) may
// be given: a request goes to the current one and moves on when that one cannot be reached or has no
// leader. Only requests that surely did not arrive are retried (connection refused, 503), so a POST is
// never applied twice. https:// URLs are verified against `ca` (a PEM bundle: the CLI's --ca-file, the
// agent's coordinator.ca_file) or else the system's CAs; a certificate that does not verify is an error,
// never retried and never ignored.
import http from 'node:http';
import https from 'node:https';
import { ApiError } from './types.ts';

export interface RequestOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Keep trying other coordinators (and the same again) this long on refused connections and 503. */
  retryForMs?: number;
}

const SAFE_TO_RETRY = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN']);

export class CoordinatorClient {
  private current = 0;

  private readonly agent: https.Agent | undefined;
  private readonly ca: string | undefined;

  constructor(
    readonly urls: string[],
    private readonly token: string,
    o: { ca?: string } = {},
  ) {
    if (urls.length === 0) throw new Error('no coordinator URL');
    this.ca = o.ca;
    this.agent = o.ca ? new https.Agent({ ca: o.ca, keepAlive: true }) : undefined;
  }

  get url(): string {
    return this.urls[this.current];
  }

  /** The credentials every request carries. */
  headers(): Record<string, string> {
    return { authorization: `Bearer ${this.token}` };
  }

  /** What a WebSocket to the coordinator (agents' console streams, `vm console`) needs to be trusted and
   *  authenticated exactly as this client's requests are: the same credentials (and, with TLS, the same CA). */
  wsOptions(): { headers: Record<string, string>; ca?: string } {
    return { headers: this.headers(), ...(this.ca ? { ca: this.ca } : {}) };
  }

  async request<T = unknown>(method: string, path: string, body?: unknown, o: RequestOptions = {}): Promise<T> {
    const deadline = Date.now() + (o.retryForMs ?? 0);
    let tries = 0;
    for (;;) {
      const base = this.urls[this.current];
      try {
        return await this.once<T>(base, method, path, body, o);
      } catch (err) {
        const retryable = err instanceof ApiError && (err.code === 'no_leader' || err.code === 'unreachable_safe');
        if (!retryable || o.signal?.aborted)
          throw err instanceof ApiError && err.code === 'unreachable_safe'
            ? new ApiError(0, 'unreachable', err.message)
            : err;
        this.current = (this.current + 1) % this.urls.length;
        tries++;
        if (Date.now() >= deadline)
          throw err.code === 'unreachable_safe' ? new ApiError(0, 'unreachable', err.message) : err;
        if (tries % this.urls.length === 0) await new Promise((r) => setTimeout(r, 250));
      }
    }
  }

  /**
   * A request with a raw body or answer (the blob store: warm images' state and disk files). Tries each
   * coordinator once when the connection is refused; the answer's body is the caller's to read.
   */
  async raw(
    method: 'GET' | 'PUT',
    path: string,
    o: { body?: () => ReadableStream<Uint8Array>; bytes?: number; timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<Response> {
    let last: unknown = null;
    for (let i = 0; i < this.urls.length; i++) {
      const base = this.urls[(this.current + i) % this.urls.length];
      const signals = [AbortSignal.timeout(o.timeoutMs ?? 600_000)];
      if (o.signal) signals.push(o.signal);
      try {
        const res = await fetch(base + path, {
          method,
          headers: {
            authorization: `Bearer ${this.token}`,
            ...(o.body ? { 'content-type': 'application/octet-stream' } : {}),
            ...(o.bytes !== undefined ? { 'content-length': String(o.bytes) } : {}),
          },
          body: o.body?.(),
          signal: AbortSignal.any(signals),
          ...(o.body ? { duplex: 'half' } : {}),
        } as RequestInit);
        if (!res.ok) {
          const text = await res.text().catch(() => '');
          let e: { code?: string; message?: string } | undefined;
          try {
            e = JSON.parse(text)?.error;
          } catch {
            /* not JSON */
          }
          throw new ApiError(
            res.status,
            e?.code ?? `http_${res.status}`,
            e?.message ?? `HTTP ${res.status} from ${base}${path}`,
          );
        }
        return res;
      } catch (err) {
        last = err;
        const code = (err as { cause?: { code?: string } }).cause?.code ?? '';
        if (err instanceof ApiError && err.status !== 503) throw err;
        if (!(err instanceof ApiError) && !SAFE_TO_RETRY.has(code)) throw err;
      }
    }
    throw last;
  }

  private async once<T>(base: string, method: string, path: string, body: unknown, o: RequestOptions): Promise<T> {
    const signals = [AbortSignal.timeout(o.timeoutMs ?? 30_000)];
    if (o.signal) signals.push(o.signal);
    const signal = AbortSignal.any(signals);
    const payload = body === undefined ? undefined : JSON.stringify(body);
    let res: { status: number; text: string };
    try {
      res = await this.send(base + path, method, payload, signal);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const code = signal.aborted ? 'TimeoutError' : (e.code ?? e.name);
      const safe = SAFE_TO_RETRY.has(code);
      const tls = TLS_ERRORS.has(code) || /certificate|self.signed|SSL|TLS/i.test(e.message);
      throw new ApiError(
        0,
        safe ? 'unreachable_safe' : tls ? 'tls_error' : 'unreachable',
        tls
          ? `cannot verify the coordinator at ${base} (${code}: ${e.message}): give the CA that signed its certificate (--ca-file, or coordinator.ca_file)`
          : `cannot reach the coordinator at ${base} (${code === 'TimeoutError' ? 'timed out' : code}): is \`homewire coordinator\` running there?`,
      );
    }
    let json: unknown = null;
    try {
      json = res.text ? JSON.parse(res.text) : null;
    } catch {
      /* not JSON */
    }
    if (res.status < 200 || res.status > 299) {
      const e = (json as { error?: { code?: string; message?: string } } | null)?.error;
      throw new ApiError(
        res.status,
        e?.code ?? `http_${res.status}`,
        e?.message ?? `HTTP ${res.status} from ${base}${path}`,
      );
    }
    return json as T;
  }

  private send(
    url: string,
    method: string,
    payload: string | undefined,
    signal: AbortSignal,
  ): Promise<{ status: number; text: string }> {
    const u = new URL(url);
    const headers: Record<string, string> = this.headers();
    if (payload !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(Buffer.byteLength(payload));
    }
    return new Promise((resolve, reject) => {
      const done = (res: http.IncomingMessage) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      };
      const req =
        u.protocol === 'https:'
          ? https.request(u, { method, headers, signal, ...(this.agent ? { agent: this.agent } : {}) }, done)
          : http.request(u, { method, headers, signal }, done);
      req.on('error', reject);
      req.end(payload);
    });
  }
}

const TLS_ERRORS = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'ERR_SSL_WRONG_VERSION_NUMBER',
  'EPROTO',
]);

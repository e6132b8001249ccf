// HTTP client of the coordinator API, for the CLI and the host agent. Several URLs (every coordinator) may
// be given: a request goes to the current one and moves on when that one cannot be reached or has no
// leader. Only requests that surely did not arrive are retried (connection refused, 503), so a POST is
// never applied twice.
import { ApiError } from './types.ts';

export interface RequestOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Keep trying other coordinators (and the same again) this long on refused connections and 503. */
  retryForMs?: number;
}

const SAFE_TO_RETRY = new Set([
  'ECONNREFUSED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'UND_ERR_CONNECT_TIMEOUT',
]);

export class CoordinatorClient {
  private current = 0;

  constructor(
    readonly urls: string[],
    private readonly token: string,
  ) {
    if (urls.length === 0) throw new Error('no coordinator URL');
  }

  get url(): string {
    return this.urls[this.current];
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

  private async once<T>(base: string, method: string, path: string, body: unknown, o: RequestOptions): Promise<T> {
    const signals = [AbortSignal.timeout(o.timeoutMs ?? 30_000)];
    if (o.signal) signals.push(o.signal);
    let res: Response;
    try {
      res = await fetch(base + path, {
        method,
        headers: {
          authorization: `Bearer ${this.token}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.any(signals),
      });
    } catch (err) {
      const code = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).name;
      const safe = SAFE_TO_RETRY.has(code);
      throw new ApiError(
        0,
        safe ? 'unreachable_safe' : 'unreachable',
        `cannot reach the coordinator at ${base} (${code === 'TimeoutError' ? 'timed out' : code}): is \`homewire coordinator\` running there?`,
      );
    }
    const text = await res.text();
    let json: unknown = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      /* not JSON */
    }
    if (!res.ok) {
      const e = (json as { error?: { code?: string; message?: string } } | null)?.error;
      throw new ApiError(
        res.status,
        e?.code ?? `http_${res.status}`,
        e?.message ?? `HTTP ${res.status} from ${base}${path}`,
      );
    }
    return json as T;
  }
}

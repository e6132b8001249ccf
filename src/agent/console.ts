// Serial consoles on a VM host. QEMU puts each guest's serial port on a unix socket (-chardev socket,
// server=on,wait=off, with a logfile) that takes one client: the agent, through a SerialConsole, which keeps the
// last CONSOLE_SCROLLBACK_BYTES in a ring (also what the guest printed while nobody watched) and fans output
// out to any number of listeners. A listener is a console stream to the coordinator (ConsoleLinks): VM hosts
// are behind NAT and take no inbound connections, so when a viewer attaches, the coordinator asks the agent
// (a `console` command on its poll channel) to open a WebSocket to GET /v1/agent/console?session=..., with the
// same credentials as the agent's other requests, and splices it with the viewers' WebSockets.
//
// Stream protocol (agent → coordinator): one text message {"type":"hello","vm","stream","from"} (`stream` names
// this SerialConsole, `from` is the absolute position the replay starts at), then binary messages of output:
// the scrollback from `from`, then everything the guest prints. Coordinator → agent: binary messages of input,
// written to the guest's serial port. The agent closes the stream (1000) when the guest stops.
import crypto from 'node:crypto';
import net from 'node:net';
import WebSocket from 'ws';
import {
  CONSOLE_AGENT_MESSAGE_MAX_BYTES,
  CONSOLE_LINK_TIMEOUT_MS,
  CONSOLE_SCROLLBACK_BYTES,
  CONSOLE_SEND_BUFFER_MAX_BYTES,
  CONSOLE_VIEWER_MESSAGE_MAX_BYTES,
} from '../coordinator/constants.ts';
import { ByteRing } from '../coordinator/ring.ts';
import type { Logger } from '../log.ts';

export interface ConsoleListener {
  data(chunk: Buffer): void;
  end(reason: string): void;
}

/** What a console stream needs of a guest's console (SerialConsole, or a test's twin). */
export interface GuestConsole {
  /** Names this console's byte stream: positions are only comparable within one stream. */
  readonly stream: string;
  read(from?: number): { from: number; data: Buffer };
  subscribe(l: ConsoleListener): () => void;
  /** Input for the guest; false if it was dropped (not connected). */
  write(data: Buffer): boolean;
}

const RECONNECT_MS = [50, 100, 250, 500, 1000, 2000];

/** The agent's end of one guest's serial socket: scrollback ring and fan-out. */
export class SerialConsole implements GuestConsole {
  readonly stream = crypto.randomBytes(8).toString('hex');
  /** Plain counters, read by status and tests. */
  readonly stats = { outputBytes: 0, inputBytes: 0, inputDropped: 0, reconnects: 0 };
  private readonly ring = new ByteRing(CONSOLE_SCROLLBACK_BYTES);
  private readonly listeners = new Set<ConsoleListener>();
  private sock: net.Socket | null = null;
  private closed = false;
  private retry: NodeJS.Timeout | null = null;

  constructor(
    readonly path: string,
    private readonly log: Logger,
  ) {}

  /** Connects to QEMU's socket, retrying while QEMU creates it; rejects after timeoutMs. */
  connect(timeoutMs = CONSOLE_LINK_TIMEOUT_MS): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    return new Promise((resolve, reject) => {
      let tries = 0;
      const attempt = () => {
        if (this.closed) return reject(new Error(`console ${this.path} closed`));
        const s = net.connect(this.path);
        s.once('connect', () => {
          s.removeAllListeners('error');
          this.adopt(s);
          resolve();
        });
        s.once('error', (err: NodeJS.ErrnoException) => {
          s.destroy();
          if (Date.now() > deadline)
            return reject(new Error(`cannot connect to the serial console ${this.path}: ${err.code ?? err.message}`));
          this.retry = setTimeout(attempt, RECONNECT_MS[Math.min(tries++, RECONNECT_MS.length - 1)]);
        });
      };
      attempt();
    });
  }

  private adopt(s: net.Socket): void {
    this.sock = s;
    s.setNoDelay(true);
    s.on('data', (chunk: Buffer) => {
      this.stats.outputBytes += chunk.length;
      this.ring.write(chunk);
      for (const l of this.listeners) l.data(chunk);
    });
    s.on('error', () => {}); // 'close' follows
    s.on('close', () => {
      if (this.sock === s) this.sock = null;
      if (this.closed) return;
      // QEMU still runs (or is about to exit; then the hypervisor closes us): take the socket again.
      this.stats.reconnects++;
      this.connect(60_000).catch((err) => {
        if (!this.closed) this.log.warn({ console: this.path, error: (err as Error).message }, 'serial console lost');
      });
    });
  }

  get end(): number {
    return this.ring.end;
  }

  read(from = 0): { from: number; data: Buffer } {
    return this.ring.read(from);
  }

  subscribe(l: ConsoleListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  write(data: Buffer): boolean {
    const s = this.sock;
    if (!s || s.destroyed || this.closed) {
      this.stats.inputDropped += data.length;
      return false;
    }
    this.stats.inputBytes += data.length;
    s.write(data);
    return true;
  }

  /** The guest stopped: every listener ends. Idempotent. */
  close(reason = 'the guest stopped'): void {
    if (this.closed) return;
    this.closed = true;
    if (this.retry) clearTimeout(this.retry);
    this.sock?.destroy();
    this.sock = null;
    for (const l of this.listeners) l.end(reason);
    this.listeners.clear();
  }
}

export interface ConsoleLinkRequest {
  name: string;
  session: string;
  stream?: string;
  from?: number;
}

export interface ConsoleLinksOptions {
  host: string;
  /** The coordinator the agent talks to now (its client's current URL). */
  url(): string;
  /** The agent's credentials and TLS trust, exactly as its other requests use them (CoordinatorClient.wsOptions). */
  wsOptions(): { headers: Record<string, string>; ca?: string };
  log: Logger;
}

/** Console streams from this host to the coordinator: opened on request, closed by either side. */
export class ConsoleLinks {
  readonly stats = { opened: 0, failed: 0, slowClosed: 0 };
  private readonly open = new Set<WebSocket>();

  constructor(private readonly o: ConsoleLinksOptions) {}

  get count(): number {
    return this.open.size;
  }

  /** Opens a stream for `con`; resolves once it is open and the scrollback is on its way. */
  link(con: GuestConsole, req: ConsoleLinkRequest): Promise<void> {
    const base = this.o.url().replace(/^http/, 'ws');
    const q = new URLSearchParams({ host: this.o.host, session: req.session });
    const ws = new WebSocket(`${base}/v1/agent/console?${q}`, {
      ...this.o.wsOptions(),
      maxPayload: CONSOLE_VIEWER_MESSAGE_MAX_BYTES,
      handshakeTimeout: CONSOLE_LINK_TIMEOUT_MS,
      perMessageDeflate: false,
    });
    return new Promise((resolve, reject) => {
      const fail = (err: Error) => {
        this.stats.failed++;
        ws.terminate();
        reject(err);
      };
      ws.once('unexpected-response', (_req, res) =>
        fail(new Error(`the coordinator refused the console stream: HTTP ${res.statusCode}`)),
      );
      ws.once('error', fail);
      ws.once('open', () => {
        ws.off('error', fail);
        ws.on('error', () => {}); // 'close' follows
        this.stats.opened++;
        this.open.add(ws);
        this.o.log.debug({ vm: req.name, coordinator: base }, 'console stream open');
        // Replay and subscribe in one turn: no output can fall between them.
        const replay = con.read(req.stream === con.stream ? (req.from ?? 0) : 0);
        ws.send(JSON.stringify({ type: 'hello', vm: req.name, stream: con.stream, from: replay.from }));
        for (let i = 0; i < replay.data.length; i += CONSOLE_AGENT_MESSAGE_MAX_BYTES)
          ws.send(replay.data.subarray(i, i + CONSOLE_AGENT_MESSAGE_MAX_BYTES));
        const unsubscribe = con.subscribe({
          data: (chunk) => {
            if (ws.readyState !== WebSocket.OPEN) return;
            if (ws.bufferedAmount > CONSOLE_SEND_BUFFER_MAX_BYTES) {
              this.stats.slowClosed++;
              ws.close(1013, 'console stream too slow');
              return;
            }
            for (let i = 0; i < chunk.length; i += CONSOLE_AGENT_MESSAGE_MAX_BYTES)
              ws.send(chunk.subarray(i, i + CONSOLE_AGENT_MESSAGE_MAX_BYTES));
          },
          end: (reason) => ws.close(1000, reason.slice(0, 120)),
        });
        ws.on('message', (data: Buffer, isBinary: boolean) => {
          if (isBinary) con.write(data);
        });
        ws.on('close', (code: number) => {
          unsubscribe();
          this.open.delete(ws);
          this.o.log.debug({ vm: req.name, code }, 'console stream closed');
        });
        resolve();
      });
    });
  }

  closeAll(reason = 'the host agent stops'): void {
    for (const ws of this.open) ws.close(1001, reason);
    this.open.clear();
  }
}

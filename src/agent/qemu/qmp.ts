// A QEMU Machine Protocol client over a unix socket: newline-delimited JSON, one command in flight at a time
// per id, asynchronous events kept in a list with the time they arrived (tests read RESUME/STOP from it) and
// handed to listeners as they arrive (the agent reacts to MIGRATION and BLOCK_JOB_* events at once: the steps
// while a guest is paused must not wait for a poll).
//
//   const qmp = await Qmp.connect('/run/vm.qmp');   // greeting, then qmp_capabilities
//   await qmp.execute('query-status');              // → { status: 'running', running: true }
//   const off = qmp.onEvent((e) => ...); off();
//   qmp.close();
import net from 'node:net';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  /** QEMU's own timestamp, in ms since the epoch. */
  atMs: number;
}

/** One line from QEMU: the greeting, an event, or a command's answer. */
interface QmpMessage {
  QMP?: unknown;
  event?: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
  id?: string | number;
  return?: unknown;
  error?: { class: string; desc: string };
}

export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly qmpClass: string,
    desc: string,
  ) {
    super(`QMP ${command}: ${qmpClass}: ${desc}`);
  }
}

/** Events kept for waitEvent() and tests; older ones are dropped (a guest may run for months). */
const EVENTS_KEPT = 10_000;

export class Qmp {
  readonly events: QmpEvent[] = [];
  private readonly listeners = new Set<(e: QmpEvent) => void>();
  private readonly closeListeners = new Set<() => void>();
  private nextId = 1;
  private buffer = '';
  private readonly pending = new Map<
    string,
    { command: string; resolve: (v: unknown) => void; reject: (e: Error) => void }
  >();
  private closed = false;
  private greeting: ((v: unknown) => void) | null = null;

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => this.onData(d));
    const fail = (err?: Error) => {
      const was = this.closed;
      this.closed = true;
      for (const p of this.pending.values()) p.reject(err ?? new Error(`QMP connection closed during ${p.command}`));
      this.pending.clear();
      if (!was) for (const l of this.closeListeners) l();
    };
    socket.on('error', fail);
    socket.on('close', () => fail());
  }

  /** Connects (retrying until QEMU has made the socket, up to timeoutMs) and negotiates capabilities. */
  static async connect(socketPath: string, timeoutMs = 10_000): Promise<Qmp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(socketPath);
          s.once('connect', () => {
            s.off('error', reject);
            resolve(s);
          });
          s.once('error', reject);
        });
        const qmp = new Qmp(socket);
        await new Promise((resolve, reject) => {
          qmp.greeting = resolve;
          setTimeout(
            () => reject(new Error(`no QMP greeting on ${socketPath}`)),
            Math.max(1000, deadline - Date.now()),
          );
        });
        await qmp.execute('qmp_capabilities');
        return qmp;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`cannot connect to QMP at ${socketPath}: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Runs a command; resolves with its "return" value (of the shape the caller names), rejects with QmpError. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) return Promise.reject(new Error(`QMP connection closed (${command})`));
    const id = String(this.nextId++);
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject });
      this.socket.write(
        `${JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id })}\n`,
      );
    });
  }

  /** Calls fn with every event from now on; returns the function that stops it. */
  onEvent(fn: (e: QmpEvent) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Calls fn once when the connection closes (QEMU exited, or close()). */
  onClose(fn: () => void): () => void {
    if (this.closed) {
      fn();
      return () => {};
    }
    this.closeListeners.add(fn);
    return () => this.closeListeners.delete(fn);
  }

  /** Resolves with the first event named name that arrives after this call (or is already at index from). */
  waitEvent(name: string, timeoutMs = 10_000, from = this.events.length): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const started = Date.now();
      const poll = () => {
        const e = this.events.slice(from).find((x) => x.event === name);
        if (e) return resolve(e);
        if (this.closed) return reject(new Error(`QMP closed while waiting for ${name}`));
        if (Date.now() - started > timeoutMs) return reject(new Error(`no ${name} event within ${timeoutMs} ms`));
        setTimeout(poll, 10);
      };
      poll();
    });
  }

  close(): void {
    const was = this.closed;
    this.closed = true;
    this.socket.destroy();
    if (!was) for (const l of this.closeListeners) l();
  }

  private onData(d: string): void {
    this.buffer += d;
    for (let nl = this.buffer.indexOf('\n'); nl >= 0; nl = this.buffer.indexOf('\n')) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (!line) continue;
      let msg: QmpMessage;
      try {
        msg = JSON.parse(line);
      } catch {
        continue;
      }
      if (msg.QMP) {
        this.greeting?.(msg);
        this.greeting = null;
        continue;
      }
      if (msg.event) {
        const ts = msg.timestamp;
        const e: QmpEvent = {
          event: msg.event,
          data: msg.data,
          atMs: ts ? ts.seconds * 1000 + ts.microseconds / 1000 : Date.now(),
        };
        this.events.push(e);
        if (this.events.length > EVENTS_KEPT) this.events.splice(0, this.events.length - EVENTS_KEPT / 2);
        for (const l of this.listeners) l(e);
        continue;
      }
      const p = msg.id !== undefined ? this.pending.get(String(msg.id)) : undefined;
      if (!p) continue;
      this.pending.delete(String(msg.id));
      if (msg.error) p.reject(new QmpError(p.command, msg.error.class, msg.error.desc));
      else p.resolve(msg.return);
    }
  }
}

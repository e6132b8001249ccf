// The underlay socket: node:dgram binds it, owns it and closes it; the addon does the per-datagram work on its
// fd when it is built. Receiving: native/udp_rx.cc drains the socket with recvmmsg and UDP GRO (a sender's
// GSO run arrives as one message, cut here into its datagrams) and hands each wake-up's datagrams to JS in one
// call; each goes to the handler as a Buffer view the handler owns (a batch's Buffer of its own, never reused), then
// batchEnd runs once. Without the addon, dgram's own 'message' events (one per datagram) feed the same handler
// and batchEnd runs once per event-loop turn. Sending: runs of equal-size datagrams leave as one UDP GSO send,
// the rest with sendmmsg (native/udp.cc); what that cannot take goes through dgram, which queues.
import dgram from 'node:dgram';
import os from 'node:os';
import {
  UDP_RX_BUFFER_BYTES,
  UDP_RX_DATAGRAMS_MAX,
  UDP_RX_SLAB_BYTES,
  UDP_RECV_BUFFER_BYTES,
  UDP_SEND_BUFFER_BYTES,
  UDP_TX_QUEUE_BYTES,
  UDP_TX_QUEUE_MAX,
} from '../constants.ts';
import { OperatorError } from '../errors.ts';
import { scavengePacer } from '../heap.ts';
import { cpuNow, latency, now, TRACE_LATENCY } from '../trace.ts';
import type { UdpBatchEnd, UdpHandler, UdpSocket, UdpStats } from './socket.ts';
import { formatEndpoint } from '../addr.ts';

type BatchSender = (
  fd: number,
  address: string,
  port: number,
  packets: readonly Buffer[],
  count: number,
  gso: boolean,
) => number;

/** The addon's UdpReceiver (see native/udp_rx.cc). */
export interface UdpReceiverHandle {
  /** UDP_GRO is on: messages may be coalesced runs. */
  readonly gro: boolean;
  /** The receiver's own dup() of the socket's fd. */
  readonly fd: number;
  /** A lone datagram is offered to native/express.cc first, which sends on this receiver's fd (null: no longer). */
  setExpress(express: object | null): void;
  start(onBatch: (count: number, batch: Buffer, sources: (string | number)[]) => void): void;
  stop(): void;
  close(): void;
}

export interface UdpReceiverOptions {
  counters: Float64Array;
  meta: Uint32Array;
  maxDatagrams: number;
  bufferBytes: number;
  slabBytes: number;
  gro: boolean;
  /** Debug (src/trace.ts): wake-up latency buckets, recorded natively. */
  wakeHistogram?: Float64Array;
}

/** The addon's UdpSender (see native/udp.cc): batched sends on a dup of the socket, on a thread of its own. */
export interface UdpSenderHandle {
  /** Datagrams accepted (sent or queued); the rest were dropped and counted, or (no thread, EAGAIN) are the caller's. */
  send(address: string, port: number, packets: readonly Buffer[], count: number): number;
  syncCounters(): void;
  close(): void;
}

interface UdpAddon {
  udpSendBatch: BatchSender;
  UdpSender?: new (
    fd: number,
    opts: { counters: Float64Array; queueMax: number; queueBytes: number; thread: boolean },
  ) => UdpSenderHandle;
  UDP_TX_COUNTER_NAMES?: readonly string[];
  UdpReceiver: new (fd: number, opts: UdpReceiverOptions) => UdpReceiverHandle;
  UDP_RX_COUNTER_NAMES: readonly string[];
}

// Counter layout shared with native/udp_rx.cc (checked against UDP_RX_COUNTER_NAMES at load).
const RX = {
  rxDatagrams: 0,
  rxBytes: 1,
  rxWakeups: 2,
  rxCalls: 3,
  rxMessages: 4,
  rxCoalesced: 5,
  rxTruncated: 6,
  rxErrors: 7,
  lastErrno: 8,
  rxBatches: 9,
} as const;
const RX_COUNTERS = Object.keys(RX).length;

// Counter layout shared with native/udp.cc's UdpSender (checked against UDP_TX_COUNTER_NAMES at load).
const TX = {
  txDatagrams: 0,
  txBytes: 1,
  txCalls: 2,
  txInline: 3,
  txEagain: 4,
  txDroppedQueue: 5,
  txDroppedError: 6,
  txQueued: 7,
  lastErrno: 8,
  gsoOff: 9,
} as const;
const TX_COUNTERS = Object.keys(TX).length;

/** The addon (batched sends and receives) if it is built; the daemon runs without it on plain dgram. */
async function loadUdpAddon(): Promise<UdpAddon | null> {
  try {
    const { loadTapAddon } = await import('../tap/native.ts');
    const a = loadTapAddon() as unknown as Partial<UdpAddon>;
    if (typeof a.udpSendBatch !== 'function') return null;
    return a as UdpAddon;
  } catch {
    return null;
  }
}

export interface DgramOptions {
  /** Receive through the addon (recvmmsg, UDP GRO) when it is built. Default true; false: dgram's events. */
  nativeReceive?: boolean;
  /** Ask for UDP GRO on the native receive path. Default true (kernels without it: plain recvmmsg). */
  gro?: boolean;
  /** Test hook: bytes per received message (default UDP_RX_BUFFER_BYTES); longer ones are truncated, counted. */
  rxBufferBytes?: number;
  /** Test hook: the socket's receive and send buffers (default UDP_RECV_BUFFER_BYTES, UDP_SEND_BUFFER_BYTES). */
  socketBufferBytes?: number;
  /** Send batches from a thread of the socket's own (default off; HOMEWIRE_UDP_SEND_THREAD=1 turns it on; see
   *  README, Benchmarks, for why it is off). */
  sendThread?: boolean;
}

const SEND_THREAD_DEFAULT = process.env.HOMEWIRE_UDP_SEND_THREAD === '1';
/** Each native receive batch is a Buffer outside V8's heap: batches pace scavenges (src/heap.ts). */
const pacer = scavengePacer();

const EAGAIN = os.constants.errno.EAGAIN;

interface UdpWrapHandle {
  fd?: unknown;
  recvStop?: () => number;
}

/** dgram's UDP handle (its internal state: the public _handle is deprecated). */
function dgramHandle(sock: dgram.Socket): UdpWrapHandle | undefined {
  const state = Object.getOwnPropertySymbols(sock).find((s) => s.description === 'state symbol');
  const internal = sock as unknown as Record<symbol, { handle?: UdpWrapHandle } | undefined>;
  return state ? internal[state]?.handle : undefined;
}

/** The fd under a bound dgram socket (Linux). */
function socketFd(sock: dgram.Socket): number {
  const fd = dgramHandle(sock)?.fd;
  return typeof fd === 'number' ? fd : -1;
}

export class DgramSocket implements UdpSocket {
  private batchSender: BatchSender | null = null;
  private fd = -1;
  private gso = true;
  /** Datagrams that went out through the batched path, and how many fell back to dgram. */
  readonly batchStats = { batched: 0, fallback: 0, gsoDisabled: false };
  private receiver: UdpReceiverHandle | null = null;
  private sender: UdpSenderHandle | null = null;
  private sendThreaded = false;
  private readonly rx = new Float64Array(RX_COUNTERS);
  private readonly tx = new Float64Array(TX_COUNTERS);
  private readonly meta = new Uint32Array(UDP_RX_DATAGRAMS_MAX * 4);
  private handler: UdpHandler | null = null;
  private batchEnd: UdpBatchEnd | null = null;
  /** dgram's events when the addon does not receive: datagrams counted here, batchEnd once per turn. */
  private dgramDatagrams = 0;
  private dgramBytes = 0;
  private batchEndScheduled = false;
  private readonly batchEndBound = (): void => {
    this.batchEndScheduled = false;
    this.batchEnd?.();
  };
  /** Single sends (handshakes) that failed locally: a firewall refusing UDP shows here at once. */
  sendErrors = 0;
  private readonly onSent = (err: Error | null) => {
    if (err) this.sendErrors++;
  };

  private constructor(
    private readonly sock: dgram.Socket,
    readonly address: string,
    readonly port: number,
    readonly family: 4 | 6,
  ) {}

  static bind(address: string, port: number, opts: DgramOptions = {}): Promise<DgramSocket> {
    const family = address.includes(':') ? 6 : 4;
    const sock = dgram.createSocket({
      type: family === 6 ? 'udp6' : 'udp4',
      ipv6Only: family === 6 && address !== '::',
    });
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => {
        sock.close();
        const where = formatEndpoint(address, port);
        if (err.code === 'EADDRINUSE') {
          reject(
            new OperatorError(
              err.code,
              `UDP ${where} is already in use (another homewire, WireGuard or service?): stop it or set another port in 'listen'`,
            ),
          );
        } else if (err.code === 'EADDRNOTAVAIL') {
          reject(
            new OperatorError(
              err.code,
              `UDP ${where}: this host has no such address; set 'listen' to one of its addresses or 0.0.0.0 / [::]`,
            ),
          );
        } else if (err.code === 'EACCES') {
          reject(
            new OperatorError(
              err.code,
              `UDP ${where}: permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE`,
            ),
          );
        } else {
          reject(new OperatorError(err.code ?? 'EUDP', `UDP ${where}: ${err.message}`));
        }
      };
      sock.once('error', onError);
      sock.bind(port, address, () => {
        sock.off('error', onError);
        try {
          // Room for a burst while JS is busy, not much more: a deep buffer in front of a busy daemon is a
          // standing queue, latency for every packet behind it (a ping beside a bulk stream).
          sock.setRecvBufferSize(opts.socketBufferBytes ?? UDP_RECV_BUFFER_BYTES);
          sock.setSendBufferSize(opts.socketBufferBytes ?? UDP_SEND_BUFFER_BYTES);
        } catch {
          /* best effort: capped by sysctl */
        }
        const bound = sock.address();
        const socket = new DgramSocket(sock, bound.address, bound.port, family);
        // dgram's own fd (Linux): sends and receives in batches through the addon.
        const fd = socketFd(sock);
        loadUdpAddon().then((addon) => {
          if (addon && fd >= 0) {
            socket.batchSender = addon.udpSendBatch;
            socket.fd = fd;
            socket.sendThreaded = opts.sendThread ?? SEND_THREAD_DEFAULT;
            socket.sender = socket.openSender(addon, fd, socket.sendThreaded);
            if (opts.nativeReceive !== false) {
              socket.receiver = socket.openReceiver(addon, fd, opts.gro !== false, opts.rxBufferBytes);
            }
          }
          resolve(socket);
        });
      });
    });
  }

  /** The addon's receiver on a dup of fd, with dgram's own receiving stopped; null if either is not possible. */
  private openReceiver(
    addon: UdpAddon,
    fd: number,
    gro: boolean,
    bufferBytes = UDP_RX_BUFFER_BYTES,
  ): UdpReceiverHandle | null {
    const names = addon.UDP_RX_COUNTER_NAMES;
    const want = Object.keys(RX);
    if (!names || names.length !== want.length || names.some((n, i) => n !== want[i])) return null;
    const handle = dgramHandle(this.sock);
    if (!handle || typeof handle.recvStop !== 'function') return null;
    let receiver: UdpReceiverHandle;
    try {
      receiver = new addon.UdpReceiver(fd, {
        counters: this.rx,
        meta: this.meta,
        maxDatagrams: UDP_RX_DATAGRAMS_MAX,
        bufferBytes,
        slabBytes: UDP_RX_SLAB_BYTES,
        gro,
        wakeHistogram: TRACE_LATENCY ? latency.udpWake.buckets : undefined,
      });
    } catch {
      return null;
    }
    // One reader per socket: dgram stops reading (its fd stays registered for queued sends).
    if (handle.recvStop() !== 0) {
      receiver.close();
      return null;
    }
    return receiver;
  }

  /** The addon's sender on a dup of fd (with its thread if asked), or null if the addon has none. */
  private openSender(addon: UdpAddon, fd: number, thread: boolean): UdpSenderHandle | null {
    const names = addon.UDP_TX_COUNTER_NAMES;
    const want = Object.keys(TX);
    if (!addon.UdpSender || !names || names.length !== want.length || names.some((n, i) => n !== want[i])) return null;
    try {
      return new addon.UdpSender(fd, {
        counters: this.tx,
        queueMax: UDP_TX_QUEUE_MAX,
        queueBytes: UDP_TX_QUEUE_BYTES,
        thread,
      });
    } catch {
      return null;
    }
  }

  /** The express path (src/express.ts) receives lone datagrams and sends on this socket; false if it cannot
   *  here (no native receiver, or sends go through the sender's thread, which express could overtake). */
  attachExpress(native: object): boolean {
    if (this.receiver === null || this.sendThreaded) return false;
    this.receiver.setExpress(native);
    return true;
  }

  get stats(): UdpStats {
    this.sender?.syncCounters();
    const t = this.tx;
    const c = this.rx;
    const native = this.receiver !== null;
    return {
      receivePath: native ? 'native' : 'dgram',
      gro: this.receiver?.gro ?? false,
      rxDatagrams: native ? c[RX.rxDatagrams] : this.dgramDatagrams,
      rxBytes: native ? c[RX.rxBytes] : this.dgramBytes,
      rxCalls: native ? c[RX.rxCalls] : this.dgramDatagrams,
      rxCoalesced: c[RX.rxCoalesced],
      rxTruncated: c[RX.rxTruncated],
      rxErrors: c[RX.rxErrors],
      rxBatches: native ? c[RX.rxBatches] : this.dgramDatagrams,
      pacedScavenges: pacer.scavenges,
      txBatched: this.sender ? t[TX.txDatagrams] : this.batchStats.batched,
      txFallback: this.batchStats.fallback,
      txCalls: t[TX.txCalls],
      txInline: t[TX.txInline],
      txQueued: t[TX.txQueued],
      txDropped: t[TX.txDroppedQueue] + t[TX.txDroppedError],
      sendThread: this.sender !== null && this.sendThreaded,
      gsoOff: this.sender ? t[TX.gsoOff] === 1 : this.batchStats.gsoDisabled,
    };
  }

  start(handler: UdpHandler, batchEnd?: UdpBatchEnd): void {
    this.handler = handler;
    this.batchEnd = batchEnd ?? null;
    // Send errors (unreachable peer, buffer full) are per-datagram and never fatal.
    this.sock.on('error', () => {});
    if (this.receiver) {
      this.receiver.start(this.onBatch);
      return;
    }
    this.sock.on('message', (msg, rinfo) => {
      this.dgramDatagrams++;
      this.dgramBytes += msg.length;
      handler(msg, rinfo.address, rinfo.port);
      if (this.batchEnd !== null && !this.batchEndScheduled) {
        this.batchEndScheduled = true;
        setImmediate(this.batchEndBound);
      }
    });
  }

  // One call per wake-up: count datagrams in batch, described by meta (offset, length, source, flags).
  private readonly onBatch = (count: number, batch: Buffer, sources: (string | number)[]): void => {
    const h = this.handler;
    if (h === null) return;
    const started = TRACE_LATENCY ? now() : 0;
    const startedCpu = TRACE_LATENCY ? cpuNow() : 0;
    const meta = this.meta;
    for (let i = 0, m = 0; i < count; i++, m += 4) {
      const off = meta[m];
      const s = meta[m + 2] * 2;
      h(batch.subarray(off, off + meta[m + 1]), sources[s] as string, sources[s + 1] as number);
    }
    this.batchEnd?.();
    pacer.note(batch.length); // the batch's Buffer is garbage now: see src/heap.ts
    if (TRACE_LATENCY) {
      latency.udpBatch.record(now() - started);
      latency.udpBatchCpu.record(cpuNow() - startedCpu);
    }
  };

  send(msg: Buffer, port: number, address: string): void {
    this.sock.send(msg, port, address, this.onSent);
  }

  /** Runs of equal-size datagrams leave as one UDP GSO send; the rest in one sendmmsg. */
  sendBatch(msgs: Buffer[], count: number, port: number, address: string): void {
    let sent = 0;
    if (this.sender !== null) {
      sent = this.sender.send(address, port, msgs, count);
    } else if (this.batchSender !== null) {
      let r = this.batchSender(this.fd, address, port, msgs, count, this.gso);
      if (r < 0 && this.gso && r !== -EAGAIN) {
        // A kernel or path without UDP GSO: plain sendmmsg from now on.
        this.gso = false;
        this.batchStats.gsoDisabled = true;
        r = this.batchSender(this.fd, address, port, msgs, count, false);
      }
      sent = Math.max(r, 0);
      this.batchStats.batched += sent;
    }
    // What the batch did not take (no addon, EAGAIN, an error) goes through dgram, which queues.
    for (let i = sent; i < count; i++) {
      this.batchStats.fallback++;
      this.sock.send(msgs[i], port, address);
    }
  }

  close(): Promise<void> {
    this.handler = null;
    this.receiver?.close(); // our dup of the fd; dgram closes the socket
    this.receiver = null;
    this.sender?.close(); // joins its thread; its dup of the fd
    this.sender = null;
    return new Promise((resolve) => {
      try {
        this.sock.close(() => resolve());
      } catch {
        resolve();
      }
    });
  }
}

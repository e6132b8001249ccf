// The real TAP device: a thin wrapper over the native addon (native/tap.cc, build/Release/homewire_tap.node).
//
// Reading: the addon drains up to TAP_FRAMES_PER_WAKEUP frames per wake-up into one slab shared with
// JS and makes ONE call with the count; we hand out borrowed views and call batchEnd() once.
// Writing: write() queues the owned buffer in a JS array and one setImmediate per loop turn hands the
// whole turn's frames to the addon in one writeBatch() call (the UDP side delivers many datagrams
// per turn; setImmediate runs after the poll phase, so they all land in one batch).

import { readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { addonFile, loadAddon } from '../addon.ts';
import {
  TAP_FRAMES_PER_WAKEUP,
  TAP_FRAME_STRIDE_BYTES,
  TAP_TX_QUEUE_LEN,
  TAP_WRITE_QUEUE_BYTES,
  TAP_WRITE_QUEUE_MAX,
  TAP_WRITE_YIELD_FRAMES,
} from '../constants.ts';
import { OperatorError } from '../errors.ts';
import { EXPRESS_TX_BYTES, EXPRESS_TX_FRAMES, type Express } from '../express.ts';
import { cpuNow, latency, now, TRACE_LATENCY } from '../trace.ts';
import type { TapDevice, TapHandler, TapStats } from './device.ts';

/** The addon's Tap object (see native/tap.cc). */
export interface NativeTapHandle {
  readonly name: string;
  readonly ifindex: number;
  readonly mac: Buffer;
  readonly mtu: number;
  readonly persistent: boolean;
  readonly fd: number;
  startReading(
    slab: Uint8Array,
    lengths: Uint32Array,
    stride: number,
    maxFrames: number,
    onRead: (count: number) => void,
  ): void;
  stopReading(): void;
  /** Writes frames[0..count); returns how many were written or queued (the rest were dropped and counted). */
  writeBatch(frames: readonly (Uint8Array | undefined)[], count: number, readBetween?: boolean): number;
  /** A read wake-up now (onRead synchronously if anything is queued); nothing inside onRead. */
  readNow(): void;
  /** Lone frames are offered to native/express.cc first (null: no longer). */
  setExpress(express: object | null): void;
  /** With a writer thread: its counters into the shared array (writeBatch does it too). */
  syncCounters(): void;
  close(): void;
}

interface NativeCommonOptions {
  counters: Float64Array;
  writeQueueMax: number;
  /** Writes go to a thread of the TAP's own (native/worker.h); small batches inline when it is idle. */
  writerThread?: boolean;
  /** Writer thread: bytes waiting at most (frames beyond are dropped and counted). */
  writeQueueBytes?: number;
  /** Coalesce runs of UDP datagrams on writes too (TCP always). */
  coalesceUdp?: boolean;
  /** sched_yield() after this many writes of one batch (0 or absent: never). */
  writeYieldFrames?: number;
}

export interface TapAddon {
  readonly COUNTER_NAMES: readonly string[];
  open(
    opts: { name: string; mtu: number; bridge?: string; txQueueLen?: number } & NativeCommonOptions,
  ): NativeTapHandle;
  /** Test hook: wrap any non-blocking datagram fd (see socketPair) as a Tap. */
  wrapFd(fd: number, opts: NativeCommonOptions): NativeTapHandle;
  /** native/udp.cc: batched sends on a UDP socket's fd (UDP GSO for runs of equal-size datagrams). */
  udpSendBatch(
    fd: number,
    address: string,
    port: number,
    packets: readonly Buffer[],
    count: number,
    gso: boolean,
  ): number;
  /** Test hook: an AF_UNIX datagram socket pair, non-blocking, with the given send buffer. */
  socketPair(sndbufBytes?: number): [number, number];
}

// Counter layout shared with native/tap.cc (checked against COUNTER_NAMES at load).
const C = {
  txFrames: 0,
  txBytes: 1,
  txDroppedQueue: 2,
  txDroppedError: 3,
  rxErrors: 4,
  txQueued: 5,
  txEagain: 6,
  lastErrno: 7,
  txCoalesced: 8,
  txWrites: 9,
  rxSegmented: 10,
  txYields: 11,
  txSparseFirst: 12,
  rxWakeupsFull: 13,
  rxAhead: 14,
} as const;
const COUNTERS = Object.keys(C).length;

let addon: TapAddon | undefined;

/** Loads build/Release/homewire_tap.node (relative to the repository root) once. */
export function loadTapAddon(): TapAddon {
  if (addon) return addon;
  const file = addonFile();
  const loaded = loadAddon() as unknown as TapAddon;
  const names = Object.keys(C);
  if (loaded.COUNTER_NAMES.length !== names.length || loaded.COUNTER_NAMES.some((n, i) => n !== names[i])) {
    throw new OperatorError(
      'EADDON',
      `native TAP addon ${file} is stale (counter layout differs): run \`npm run build\` (node-gyp) again`,
    );
  }
  addon = loaded;
  return addon;
}

export interface NativeTapOptions {
  /** Interface name (up to 15 characters); "hw%d" lets the kernel pick a number. */
  name: string;
  mtu: number;
  /** Bridge to enslave the TAP to; created (and brought up) if missing, never deleted. */
  bridge?: string;
  /** Write on a thread of the TAP's own (default off; HOMEWIRE_TAP_WRITER_THREAD=1 turns it on). Measured on a
   *  busy 2-core host: the thread's wake-ups cost more than the second core gave (README, Benchmarks). */
  writerThread?: boolean;
  /** Coalesce runs of equal-size UDP datagrams of one flow on writes (default off; HOMEWIRE_TAP_COALESCE_UDP=1
   *  turns it on): the receiving stack hands such a run to a socket that did not ask for UDP_GRO as one burst,
   *  which overflows a default-size socket buffer (native/tap.cc, groOff_). TCP runs are always coalesced. */
  coalesceUdp?: boolean;
  /** Yield the CPU after this many frames of one write batch (default TAP_WRITE_YIELD_FRAMES; 0 or
   *  HOMEWIRE_TAP_WRITE_YIELD=0: never), so an application behind the TAP drains its socket (native/tap.cc). */
  writeYieldFrames?: number;
}

const WRITER_THREAD_DEFAULT = process.env.HOMEWIRE_TAP_WRITER_THREAD === '1';
const COALESCE_UDP_DEFAULT = process.env.HOMEWIRE_TAP_COALESCE_UDP === '1';
const WRITE_YIELD_DEFAULT = process.env.HOMEWIRE_TAP_WRITE_YIELD === '0' ? 0 : TAP_WRITE_YIELD_FRAMES;

export class NativeTap implements TapDevice {
  /** The name the kernel gave (differs from the requested one when it had "%d"). */
  readonly name: string;
  readonly mtu: number;
  /** Interface hardware address (6 bytes). */
  readonly mac: Buffer;
  readonly ifindex: number;
  /** The TAP existed as a persistent device: close() then leaves it in place. */
  readonly persistent: boolean;
  /** Called when reading stopped for good (the interface was deleted under us...). Default: a process warning. */
  onerror: ((err: Error) => void) | null = null;

  private readonly native: NativeTapHandle;
  private readonly counters: Float64Array;
  private readonly slab: Buffer;
  private readonly lengths: Uint32Array;
  private handler: TapHandler | null = null;
  private closed = false;
  private rxFrames = 0;
  private rxBytes = 0;
  private jsDropped = 0;
  // Frames waiting for this turn's flush: a reused array, cleared after each batch.
  private pending: (Buffer | undefined)[] = [];
  /** The other pending array: flush() writes one while write() fills the other (see flush). */
  private spare: (Buffer | undefined)[] | null = [];
  /** Read the TAP between a batch's sparse frames and its bulk (the daemon turns it on with read-after-write):
   *  the kernel's answer to a ping written first leaves before the stack takes the bulk (native/sparse.h). */
  readBetween = false;
  private pendingCount = 0;
  private flushScheduled = false;
  private readonly flushBound = (): void => this.flush();
  private held = false; // holdFlush(): the caller flushes at its batch end, write() schedules nothing
  private readonly ringDroppedAtOpen: number;
  private express: Express | null = null;

  /** The kernel's count of frames the TAP dropped because its queue towards us (TAP_TX_QUEUE_LEN) was full: the
   *  interface's tx_dropped (read at status and scrape time only). 0 where sysfs does not show it. */
  private kernelRingDropped(): number {
    if (this.name.startsWith('fd')) return 0; // a test hook's socket pair, not an interface
    try {
      return Number(readFileSync(`/sys/class/net/${this.name}/statistics/tx_dropped`, 'utf8')) || 0;
    } catch {
      return 0;
    }
  }

  /** Creates (or attaches to) the TAP, sets its MTU, enslaves it to `bridge` if given and brings it up.
   *  Throws OperatorError with an errno code (EPERM, EBUSY, ENOENT...) and a message that says what to do. */
  static open(opts: NativeTapOptions): NativeTap {
    if (!Number.isInteger(opts.mtu) || opts.mtu < 68 || opts.mtu > TAP_FRAME_STRIDE_BYTES - 18) {
      throw new OperatorError('EINVAL', `TAP MTU ${opts.mtu} is out of range: use 68..${TAP_FRAME_STRIDE_BYTES - 18}`);
    }
    const a = loadTapAddon();
    const counters = new Float64Array(COUNTERS);
    let handle: NativeTapHandle;
    try {
      handle = a.open({
        name: opts.name,
        mtu: opts.mtu,
        bridge: opts.bridge,
        counters,
        writeQueueMax: TAP_WRITE_QUEUE_MAX,
        txQueueLen: TAP_TX_QUEUE_LEN,
        writerThread: opts.writerThread ?? WRITER_THREAD_DEFAULT,
        writeQueueBytes: TAP_WRITE_QUEUE_BYTES,
        coalesceUdp: opts.coalesceUdp ?? COALESCE_UDP_DEFAULT,
        writeYieldFrames: opts.writeYieldFrames ?? WRITE_YIELD_DEFAULT,
      });
    } catch (e) {
      throw toOperatorError(e);
    }
    return new NativeTap(handle, counters);
  }

  /** Test hook: a NativeTap over one end of an addon socketPair() (datagrams behave like frames). */
  static _fromFd(
    fd: number,
    opts: { writeQueueMax?: number; writerThread?: boolean; writeYieldFrames?: number } = {},
  ): NativeTap {
    const counters = new Float64Array(COUNTERS);
    return new NativeTap(
      loadTapAddon().wrapFd(fd, {
        counters,
        writeQueueMax: opts.writeQueueMax ?? TAP_WRITE_QUEUE_MAX,
        writerThread: opts.writerThread ?? false,
        writeYieldFrames: opts.writeYieldFrames ?? 0,
      }),
      counters,
    );
  }

  private constructor(native: NativeTapHandle, counters: Float64Array) {
    this.native = native;
    this.counters = counters;
    this.name = native.name;
    this.mtu = native.mtu;
    this.mac = native.mac;
    this.ifindex = native.ifindex;
    this.persistent = native.persistent;
    this.slab = Buffer.allocUnsafeSlow(TAP_FRAMES_PER_WAKEUP * TAP_FRAME_STRIDE_BYTES);
    this.lengths = new Uint32Array(TAP_FRAMES_PER_WAKEUP);
    this.ringDroppedAtOpen = this.kernelRingDropped();
  }

  /** Lone frames go to the express path first (src/express.ts); what it carried counts as read here too. */
  attachExpress(express: Express): void {
    if (this.closed || express.native === null) return;
    this.native.setExpress(express.native);
    this.express = express;
  }

  get stats(): TapStats {
    if (!this.closed) this.native.syncCounters();
    const c = this.counters;
    const x = this.express?.counters;
    return {
      rxFrames: this.rxFrames + (x ? x[EXPRESS_TX_FRAMES] : 0),
      rxBytes: this.rxBytes + (x ? x[EXPRESS_TX_BYTES] : 0),
      txFrames: c[C.txFrames],
      txBytes: c[C.txBytes],
      txDropped: c[C.txDroppedQueue] + c[C.txDroppedError] + this.jsDropped,
      rxErrors: c[C.rxErrors],
      txCoalesced: c[C.txCoalesced],
      txWrites: c[C.txWrites],
      rxSegmented: c[C.rxSegmented],
      txSparseFirst: c[C.txSparseFirst],
      rxWakeupsFull: c[C.rxWakeupsFull],
      rxAhead: c[C.rxAhead],
      rxRingDropped: this.kernelRingDropped() - this.ringDroppedAtOpen,
    };
  }

  /** Native detail beyond TapStats: queue depth now, EAGAIN count, drops by cause, last errno. */
  get detail(): {
    txQueued: number;
    txEagain: number;
    txDroppedQueue: number;
    txDroppedError: number;
    txRefused: number;
    txYields: number;
    lastErrno: number;
  } {
    if (!this.closed) this.native.syncCounters();
    const c = this.counters;
    return {
      txQueued: c[C.txQueued],
      txEagain: c[C.txEagain],
      txDroppedQueue: c[C.txDroppedQueue],
      txDroppedError: c[C.txDroppedError],
      txRefused: this.jsDropped, // write() said false: closed, or the native queue was full
      txYields: c[C.txYields],
      lastErrno: c[C.lastErrno],
    };
  }

  start(handler: TapHandler): void {
    if (this.closed) throw new Error(`TAP ${this.name} is closed`);
    if (this.handler) throw new Error(`TAP ${this.name} is already started`);
    this.handler = handler;
    this.native.startReading(this.slab, this.lengths, TAP_FRAME_STRIDE_BYTES, TAP_FRAMES_PER_WAKEUP, this.onRead);
  }

  // One call per wake-up with the number of frames in the slab (negative: -errno, reading stopped).
  private readonly onRead = (count: number): void => {
    if (count < 0) {
      this.readFailed(-count);
      return;
    }
    const h = this.handler;
    if (!h) return;
    const started = TRACE_LATENCY ? now() : 0;
    const startedCpu = TRACE_LATENCY ? cpuNow() : 0;
    const slab = this.slab;
    const lengths = this.lengths;
    let bytes = 0;
    for (let i = 0, off = 0; i < count; i++, off += TAP_FRAME_STRIDE_BYTES) {
      const len = lengths[i];
      bytes += len;
      h.frame(slab.subarray(off, off + len));
    }
    this.rxFrames += count;
    this.rxBytes += bytes;
    h.batchEnd();
    if (TRACE_LATENCY) {
      latency.tapBatch.record(now() - started);
      latency.tapBatchCpu.record(cpuNow() - startedCpu);
    }
  };

  private readFailed(errno: number): void {
    const code = Object.entries(osConstants.errno).find(([, v]) => v === errno)?.[0] ?? `errno ${errno}`;
    const err = Object.assign(
      new Error(`reading TAP ${this.name} stopped (${code}): was the interface deleted? Close and reopen it`),
      {
        code,
        errno: -errno,
      },
    );
    this.handler = null;
    if (this.onerror) this.onerror(err);
    else process.emitWarning(err.message, { code: 'HOMEWIRE_TAP_READ' });
  }

  write(frame: Buffer): boolean {
    if (this.closed || (this.counters[C.txQueued] >= TAP_WRITE_QUEUE_MAX && this.queueStillFull())) {
      this.jsDropped++;
      return false;
    }
    this.pending[this.pendingCount++] = frame;
    if (!this.flushScheduled && !this.held) {
      this.flushScheduled = true;
      setImmediate(this.flushBound);
    }
    return true;
  }

  // The queue looked full: with a writer thread the figure is only as fresh as the last batch, so ask again.
  private queueStillFull(): boolean {
    this.native.syncCounters();
    return this.counters[C.txQueued] >= TAP_WRITE_QUEUE_MAX;
  }

  /** Hands this turn's frames to the kernel now (normally done by the setImmediate write() scheduled). */
  holdFlush(): void {
    this.held = true;
  }

  flush(): void {
    this.flushScheduled = false;
    this.held = false;
    const n = this.pendingCount;
    if (n === 0 || this.closed) return;
    // The batch's array is swapped out first: with readBetween the native side calls onRead in the middle of
    // the batch, and what that writes to this TAP (even a nested flush) goes to the other array.
    const p = this.pending;
    this.pending = this.spare ?? [];
    this.spare = null;
    this.pendingCount = 0;
    this.native.writeBatch(p, n, this.readBetween);
    for (let i = 0; i < n; i++) p[i] = undefined; // let the buffers go, keep the array's capacity
    if (this.spare === null) this.spare = p; // (a nested flush already left one)
  }

  readNow(): void {
    if (!this.closed && this.handler) this.native.readNow();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.jsDropped += this.pendingCount; // no point writing into an interface being removed
    this.pending = [];
    this.pendingCount = 0;
    this.handler = null;
    this.native.close();
  }
}

function toOperatorError(e: unknown): Error {
  if (e instanceof Error && typeof (e as NodeJS.ErrnoException).code === 'string') {
    const x = e as NodeJS.ErrnoException;
    return Object.assign(new OperatorError(x.code!, x.message), { errno: x.errno, syscall: x.syscall });
  }
  return e as Error;
}

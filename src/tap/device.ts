// The TAP seam: the daemon's side of a layer-2 interface. Two implementations: the native addon
// (tap/native.ts, a real kernel TAP) and an in-memory twin (lab/twins/tap.ts) for in-process tests.

export interface TapHandler {
  /** One frame read from the interface. The buffer is BORROWED from a slab: valid only during this call. */
  frame(frame: Buffer): void;
  /** Called once after a batch of frames (one wake-up); a place to flush batched sends. */
  batchEnd(): void;
}

export interface TapStats {
  rxFrames: number;
  rxBytes: number;
  txFrames: number;
  txBytes: number;
  txDropped: number; // write queue full (kernel not draining) or interface gone
  rxErrors: number;
  txCoalesced?: number; // frames written as part of coalesced TCP (GSO) frames
  txWrites?: number; // writes to the kernel (coalesced frames count once)
  rxSegmented?: number; // frames cut out of large (TSO) reads
  txSparseFirst?: number; // frames of sparse flows written ahead of a bulk flow's in their batch (native/sparse.h)
  rxWakeupsFull?: number; // read turns that left frames (read ahead and held, or in the ring) for the next loop turn
  rxAhead?: number; // frames delivered ahead of other flows' held (read-ahead) TSO frames
  rxRingDropped?: number; // frames the kernel dropped before we read them: the TAP's queue towards us was full
}

export interface TapDevice {
  readonly name: string;
  readonly mtu: number;
  readonly stats: TapStats;
  /** The caller will call flush() at the end of its batch (a UDP wake-up): writes until then need no scheduled
   *  flush of their own. */
  holdFlush?(): void;
  /** Implementation detail beyond TapStats (queue depth, drops by cause), for the status report. */
  readonly detail?: Record<string, number>;
  /** Start delivering frames to the handler. */
  start(handler: TapHandler): void;
  /** Hand a frame to the kernel. OWNERSHIP passes: the caller must not touch the buffer afterwards.
   *  Frames are batched and written once per event-loop turn; returns false if it was dropped. */
  write(frame: Buffer): boolean;
  /** Hand the frames written so far to the kernel now (the end of a receive batch); else once per turn. */
  flush?(): void;
  /** Read what the interface holds now, as a wake-up would (the handler runs synchronously if there is
   *  anything): after flush(), the kernel's answers to what was written (an echo reply, TCP ACKs) leave in the
   *  same turn instead of on a later wake-up. */
  readNow?(): void;
  /** Stop and remove the interface. Idempotent; never blocks the process from exiting. */
  close(): void;
}

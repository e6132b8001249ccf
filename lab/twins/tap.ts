// In-memory twin of a TAP: inject() plays the kernel sending a frame to the daemon; frames the daemon
// writes land in `written` (and in onWrite, if set).
import type { TapDevice, TapHandler, TapStats } from '../../src/tap/device.ts';

export class MemoryTap implements TapDevice {
  readonly stats: TapStats = { rxFrames: 0, rxBytes: 0, txFrames: 0, txBytes: 0, txDropped: 0, rxErrors: 0 };
  readonly written: Buffer[] = [];
  onWrite: ((frame: Buffer) => void) | null = null;
  private handler: TapHandler | null = null;
  closed = false;

  constructor(
    readonly name = 'mem0',
    readonly mtu = 1406,
  ) {}

  start(handler: TapHandler): void {
    this.handler = handler;
  }

  /** The kernel hands frames to the daemon, as one batch (one wake-up). */
  inject(...frames: Buffer[]): void {
    if (!this.handler) return;
    for (const frame of frames) {
      this.stats.rxFrames++;
      this.stats.rxBytes += frame.length;
      // Borrowed, as from the native slab: hand a copy that is scribbled over afterwards to catch retention.
      const borrowed = Buffer.from(frame);
      this.handler.frame(borrowed);
      borrowed.fill(0xee);
    }
    this.handler.batchEnd();
  }

  write(frame: Buffer): boolean {
    if (this.closed) {
      this.stats.txDropped++;
      return false;
    }
    this.stats.txFrames++;
    this.stats.txBytes += frame.length;
    this.written.push(frame);
    this.onWrite?.(frame);
    return true;
  }

  close(): void {
    this.closed = true;
    this.handler = null;
  }
}

// Where a packet's time goes inside the daemon, behind a debug flag (HOMEWIRE_TRACE_LATENCY=1): log2
// histograms in microseconds, per stage, shown by `homewire status --json` under "latency".
//   udp.wake   the kernel queued a datagram on the socket → the addon's recvmmsg returned it (a wake-up,
//              from SO_TIMESTAMPNS; recorded natively for the first datagram of each batch)
//   udp.batch  JS work of one receive batch: decrypt, switch, TAP write, sends (through batchEnd)
//   tap.batch  JS work of one TAP read batch: switch, encrypt, UDP send (through batchEnd)
//   *.cpu      the same batches in CPU time of the process (wall time minus being preempted on a busy host)
// The flag is read once at start; with it off the data path pays one predictable branch per batch.
import { performance } from 'node:perf_hooks';

export const TRACE_LATENCY = process.env.HOMEWIRE_TRACE_LATENCY === '1';

/** Buckets: [0] < 1 µs, [i] in [2^(i-1), 2^i) µs, the last one open-ended. */
export const HISTOGRAM_BUCKETS = 24;

export class Histogram {
  readonly buckets: Float64Array;
  count = 0;
  sumUs = 0;
  maxUs = 0;
  constructor(buckets?: Float64Array) {
    this.buckets = buckets ?? new Float64Array(HISTOGRAM_BUCKETS);
  }

  record(us: number): void {
    this.count++;
    this.sumUs += us;
    if (us > this.maxUs) this.maxUs = us;
    this.buckets[bucketOf(us)]++;
  }

  /** p50/p90/p99 as bucket upper bounds (µs), count, mean and max. */
  summary(): HistogramSummary {
    const b = this.buckets;
    let total = 0;
    for (let i = 0; i < b.length; i++) total += b[i];
    const at = (q: number): number => {
      let seen = 0;
      for (let i = 0; i < b.length; i++) {
        seen += b[i];
        if (seen >= q * total && total > 0) return 2 ** i;
      }
      return 0;
    };
    return {
      count: total,
      p50Us: at(0.5),
      p90Us: at(0.9),
      p99Us: at(0.99),
      meanUs: this.count > 0 ? Math.round((this.sumUs / this.count) * 10) / 10 : null,
      maxUs: this.count > 0 ? Math.round(this.maxUs) : null,
    };
  }
}

export interface HistogramSummary {
  count: number;
  /** Upper bound of the bucket holding the quantile (a power of two). */
  p50Us: number;
  p90Us: number;
  p99Us: number;
  /** Only for JS-recorded stages (the native one keeps buckets only). */
  meanUs: number | null;
  maxUs: number | null;
}

function bucketOf(us: number): number {
  if (us < 1) return 0;
  const i = Math.floor(Math.log2(us)) + 1;
  return i < HISTOGRAM_BUCKETS ? i : HISTOGRAM_BUCKETS - 1;
}

/** The daemon's stage histograms (one set per process). */
export const latency = {
  udpWake: new Histogram(),
  udpBatch: new Histogram(),
  tapBatch: new Histogram(),
  udpBatchCpu: new Histogram(),
  tapBatchCpu: new Histogram(),
};

export const now = (): number => performance.now() * 1000; // µs

/** CPU time of the process so far (µs). */
export const cpuNow = (): number => {
  const u = process.cpuUsage();
  return u.user + u.system;
};

export function latencyReport(): Record<string, HistogramSummary> | null {
  if (!TRACE_LATENCY) return null;
  return {
    'udp.wake': latency.udpWake.summary(),
    'udp.batch': latency.udpBatch.summary(),
    'tap.batch': latency.tapBatch.summary(),
    'udp.batch.cpu': latency.udpBatchCpu.summary(),
    'tap.batch.cpu': latency.tapBatchCpu.summary(),
  };
}

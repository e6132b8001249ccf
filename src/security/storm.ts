// Storm control: a token bucket per port (the local side, each peer) and kind of flooded frame (broadcast,
// multicast, unknown unicast), refilled at flood_pps with a burst of one second. Time is the switch's coarse
// clock (refreshed every tick), so the check is two reads and a compare per flooded frame.
export const STORM_BROADCAST = 0;
export const STORM_MULTICAST = 1;
export const STORM_UNKNOWN_UNICAST = 2;
export const STORM_KINDS = ['broadcast', 'multicast', 'unknown_unicast'] as const;

export class StormControl {
  /** Drops by kind (homewire_storm_drops_total{kind}). */
  readonly drops = { broadcast: 0, multicast: 0, unknown_unicast: 0 };
  private readonly buckets = new Map<object, Float64Array>(); // port -> [tokens, atMs] x 3 kinds

  constructor(private pps: number) {}

  setRate(pps: number): void {
    this.pps = pps;
    this.buckets.clear();
  }

  /** May `port` flood one more frame of `kind` now? Spends a token if so. */
  allow(port: object, kind: number, nowMs: number): boolean {
    const pps = this.pps;
    if (pps === 0) return true;
    let b = this.buckets.get(port);
    if (b === undefined) {
      b = new Float64Array([pps, nowMs, pps, nowMs, pps, nowMs]);
      this.buckets.set(port, b);
    }
    const i = kind * 2;
    const elapsed = nowMs - b[i + 1];
    if (elapsed > 0) {
      b[i] = Math.min(pps, b[i] + (elapsed * pps) / 1000);
      b[i + 1] = nowMs;
    }
    if (b[i] >= 1) {
      b[i] -= 1;
      return true;
    }
    this.drops[STORM_KINDS[kind]]++;
    return false;
  }

  /** Forgets ports that are gone (removed peers). */
  retain(alive: (port: object) => boolean): void {
    for (const port of this.buckets.keys()) if (!alive(port)) this.buckets.delete(port);
  }
}

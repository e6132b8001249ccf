// New-lease budget per site: a token bucket per port ('local' or a peer site) holding at most `perWindow`
// tokens and refilling `perWindow` per RATE_WINDOW_MS. A client that already has a lease record needs no
// token (renewals, reboots, migrations); only a client new to the server does.

interface Bucket {
  tokens: number;
  at: number; // ms of the last refill
}

export class SiteBudget {
  private readonly buckets = new Map<string, Bucket>();

  constructor(
    private readonly perWindow: number,
    private readonly windowMs: number,
  ) {}

  private refill(site: string, now: number): Bucket {
    let b = this.buckets.get(site);
    if (b === undefined) {
      b = { tokens: this.perWindow, at: now };
      this.buckets.set(site, b);
    } else if (now > b.at) {
      b.tokens = Math.min(this.perWindow, b.tokens + ((now - b.at) * this.perWindow) / this.windowMs);
      b.at = now;
    }
    return b;
  }

  /** Whether `site` may take a new lease now (does not spend). */
  available(site: string, now: number): boolean {
    return this.refill(site, now).tokens >= 1;
  }

  /** Spend one token (call after available() said yes and the lease or offer was made). */
  take(site: string, now: number): void {
    const b = this.refill(site, now);
    b.tokens = Math.max(0, b.tokens - 1);
  }

  /** Forget full buckets (a full bucket and no bucket behave the same), so the map stays small. */
  prune(now: number): void {
    for (const [site, b] of this.buckets) {
      if (b.tokens + ((now - b.at) * this.perWindow) / this.windowMs >= this.perWindow) this.buckets.delete(site);
    }
  }
}

// The in-memory lease table: who holds which address right now. Authoritative while the server runs; the
// store (store.ts) is its durable copy. Every record holds exactly one address and every address is held by
// at most one record (byKey and byIp are kept in step), so no address can be bound to two clients.
//
// An address in the pool is, for a given client: held (active lease or live offer of another client,
// quarantined after a DECLINE) or free. Free addresses never leased are handed out first, in a rotating
// order; only when none is left is an address remembered for an expired or released client reused (the
// one that expired first).
import type { Lease, Quarantined } from './store.ts';

interface Offer {
  ip: number;
  until: number; // ms
}

export class LeaseTable {
  readonly byKey = new Map<string, Lease>();
  readonly byIp = new Map<number, Lease>();
  readonly quarantine = new Map<number, number>(); // ip -> until (ms)
  private readonly offers = new Map<string, Offer>();
  private readonly offeredIps = new Map<number, string>();
  private cursor: number;
  private nextExpiry = Infinity; // earliest expiry among bound leases (ms): expire() scans only past it

  /** `notDynamic`: addresses inside the pool never handed out dynamically (reservations, server, router...). */
  constructor(
    private readonly poolStart: number,
    private readonly poolEnd: number,
    private readonly notDynamic: ReadonlySet<number>,
  ) {
    this.cursor = poolStart;
  }

  isActive(l: Lease, now: number): boolean {
    return l.state === 'bound' && l.expiresAt > now;
  }

  /** Load stored state (at open). Bound leases past their expiry become 'expired'. */
  load(leases: Lease[], quarantine: Quarantined[], now: number): void {
    for (const l of leases) {
      if (l.state === 'bound' && l.expiresAt <= now) l.state = 'expired';
      this.byKey.set(l.key, l);
      this.byIp.set(l.ip, l);
      if (l.state === 'bound') this.nextExpiry = Math.min(this.nextExpiry, l.expiresAt);
    }
    for (const q of quarantine) if (q.until > now) this.quarantine.set(q.ip, q.until);
  }

  /** May `key` have `ip` now? No active lease or live offer of another client, not quarantined. */
  freeFor(ip: number, key: string, now: number): boolean {
    const q = this.quarantine.get(ip);
    if (q !== undefined && q > now) return false;
    const l = this.byIp.get(ip);
    if (l !== undefined && l.key !== key && this.isActive(l, now)) return false;
    const ok = this.offeredIps.get(ip);
    if (ok !== undefined && ok !== key && this.offers.get(ok)!.until > now) return false;
    return true;
  }

  inPool(ip: number): boolean {
    return ip >= this.poolStart && ip <= this.poolEnd && !this.notDynamic.has(ip);
  }

  /** A free pool address for `key`, or null if the pool is exhausted. */
  allocate(key: string, now: number): number | null {
    const size = this.poolEnd - this.poolStart + 1;
    // Pass 1: never-leased addresses, rotating from the cursor.
    for (let n = 0; n < size; n++) {
      const ip = this.cursor;
      this.cursor = ip === this.poolEnd ? this.poolStart : ip + 1;
      if (this.notDynamic.has(ip) || this.byIp.has(ip)) continue;
      if (this.freeFor(ip, key, now)) return ip;
    }
    // Pass 2: addresses remembered for inactive clients; the one that ended first.
    let best: number | null = null;
    let bestAt = Infinity;
    for (const [ip, l] of this.byIp) {
      if (l.key === key || this.isActive(l, now) || !this.inPool(ip)) continue;
      if (l.expiresAt < bestAt && this.freeFor(ip, key, now)) {
        best = ip;
        bestAt = l.expiresAt;
      }
    }
    return best;
  }

  /** Last resort when allocate() found nothing: end the quarantine that ends first and return that address
   *  (ISC dhcpd does the same with abandoned leases), so DECLINEs cannot drain the pool for good. */
  reclaimQuarantined(): number | null {
    let best: number | null = null;
    let bestUntil = Infinity;
    for (const [ip, until] of this.quarantine) {
      if (until < bestUntil && this.inPool(ip) && !this.byIp.has(ip) && !this.offeredIps.has(ip)) {
        best = ip;
        bestUntil = until;
      }
    }
    if (best !== null) this.quarantine.delete(best);
    return best;
  }

  offerOf(key: string, now: number): number | null {
    const o = this.offers.get(key);
    return o !== undefined && o.until > now ? o.ip : null;
  }

  setOffer(key: string, ip: number, until: number): void {
    this.dropOffer(key);
    this.offers.set(key, { ip, until });
    this.offeredIps.set(ip, key);
  }

  dropOffer(key: string): void {
    const o = this.offers.get(key);
    if (o === undefined) return;
    this.offers.delete(key);
    if (this.offeredIps.get(o.ip) === key) this.offeredIps.delete(o.ip);
  }

  get offerCount(): number {
    return this.offers.size;
  }

  /** Make `l` the record of its key and its address (the caller checked freeFor). Returns the displaced
   *  record of another client that held the address while inactive, if any (it is forgotten). */
  bind(l: Lease): Lease | undefined {
    const prev = this.byKey.get(l.key);
    if (prev !== undefined && prev.ip !== l.ip && this.byIp.get(prev.ip) === prev) this.byIp.delete(prev.ip);
    const other = this.byIp.get(l.ip);
    let displaced: Lease | undefined;
    if (other !== undefined && other.key !== l.key) {
      this.byKey.delete(other.key);
      displaced = other;
    }
    this.byKey.set(l.key, l);
    this.byIp.set(l.ip, l);
    this.dropOffer(l.key);
    this.quarantine.delete(l.ip);
    if (l.state === 'bound') this.nextExpiry = Math.min(this.nextExpiry, l.expiresAt);
    return displaced;
  }

  /** Forget a client's record entirely. */
  remove(key: string): void {
    const l = this.byKey.get(key);
    if (l === undefined) return;
    this.byKey.delete(key);
    if (this.byIp.get(l.ip) === l) this.byIp.delete(l.ip);
  }

  /** Take `ip` out of service until `until` (DECLINE): its record, if any, is forgotten. */
  setQuarantine(ip: number, until: number): void {
    const l = this.byIp.get(ip);
    if (l !== undefined) this.remove(l.key);
    const ok = this.offeredIps.get(ip);
    if (ok !== undefined) this.dropOffer(ok);
    this.quarantine.set(ip, until);
  }

  /** Time passes: bound leases past expiry become 'expired' (returned), offers and quarantines lapse
   *  (lapsed quarantined addresses are returned in `unquarantined`). */
  expire(now: number): { expired: Lease[]; unquarantined: number[] } {
    const expired: Lease[] = [];
    if (now >= this.nextExpiry) {
      let next = Infinity;
      for (const l of this.byKey.values()) {
        if (l.state !== 'bound') continue;
        if (l.expiresAt <= now) {
          l.state = 'expired';
          expired.push(l);
        } else if (l.expiresAt < next) {
          next = l.expiresAt;
        }
      }
      this.nextExpiry = next;
    }
    for (const [key, o] of this.offers) if (o.until <= now) this.dropOffer(key);
    const unquarantined: number[] = [];
    for (const [ip, until] of this.quarantine) {
      if (until <= now) {
        this.quarantine.delete(ip);
        unquarantined.push(ip);
      }
    }
    return { expired, unquarantined };
  }

  activeCount(now: number): number {
    let n = 0;
    for (const l of this.byKey.values()) if (this.isActive(l, now)) n++;
    return n;
  }
}

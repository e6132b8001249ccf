// IP-MAC bindings a site knows, for ARP/ND inspection and ARP suppression. Authoritative bindings come from
// DHCP (the site's own server's ACKs, ACKs its guests receive from the trusted server, or that server's
// BINDING signal when a guest moves here) and from the coordinator's reservations; learned bindings are
// first claims (arp_inspection: learn) and what peers' ARP says (remote), used to refuse a guest that claims
// an address somebody else holds. Bounded: learned entries are refused when the table is full.
import { BINDINGS_MAX, LEARNED_BINDING_MS } from '../constants.ts';

export const B_DHCP = 1;
export const B_RESERVED = 2;
export const B_LEARNED = 3; // a local first claim
export const B_REMOTE = 4; // seen in ARP from a peer

export interface Binding {
  mac: number;
  source: number; // B_*
  untilMs: number;
}

export class Bindings {
  readonly v4 = new Map<number, Binding>();
  readonly v6 = new Map<string, Binding>();

  /** The live binding of an IPv4 address, or undefined. */
  get4(ip: number, now: number): Binding | undefined {
    const b = this.v4.get(ip);
    return b !== undefined && b.untilMs > now ? b : undefined;
  }

  get6(ip: string, now: number): Binding | undefined {
    const b = this.v6.get(ip);
    return b !== undefined && b.untilMs > now ? b : undefined;
  }

  /** An authoritative binding (DHCP, reservation) replaces whatever was there. */
  setAuthoritative(ip: number, mac: number, source: number, untilMs: number, now: number): void {
    if (this.v4.size >= BINDINGS_MAX && !this.v4.has(ip)) this.prune(now);
    this.v4.set(ip, { mac, source, untilMs });
  }

  /** Removes an authoritative binding of `mac` (a DHCP RELEASE seen, a reservation withdrawn). */
  remove4(ip: number, mac: number): void {
    const b = this.v4.get(ip);
    if (b !== undefined && b.mac === mac) this.v4.delete(ip);
  }

  /** Learns (or refreshes) a non-authoritative binding; never replaces a live authoritative one. */
  learn4(ip: number, mac: number, source: number, now: number): boolean {
    const b = this.v4.get(ip);
    if (b !== undefined && b.untilMs > now && (b.source === B_DHCP || b.source === B_RESERVED)) return b.mac === mac;
    if (b === undefined && this.v4.size >= BINDINGS_MAX) {
      this.prune(now);
      if (this.v4.size >= BINDINGS_MAX) return false;
    }
    if (b !== undefined) {
      b.mac = mac;
      b.source = source;
      b.untilMs = now + LEARNED_BINDING_MS;
    } else this.v4.set(ip, { mac, source, untilMs: now + LEARNED_BINDING_MS });
    return true;
  }

  learn6(ip: string, mac: number, source: number, now: number): boolean {
    const b = this.v6.get(ip);
    if (b === undefined && this.v6.size >= BINDINGS_MAX) {
      this.prune(now);
      if (this.v6.size >= BINDINGS_MAX) return false;
    }
    if (b !== undefined) {
      b.mac = mac;
      b.source = source;
      b.untilMs = now + LEARNED_BINDING_MS;
    } else this.v6.set(ip, { mac, source, untilMs: now + LEARNED_BINDING_MS });
    return true;
  }

  /** Reservations from the coordinator replace the previous set. */
  setReservations(list: ReadonlyArray<{ ip: number; mac: number }>): void {
    for (const [ip, b] of this.v4) if (b.source === B_RESERVED) this.v4.delete(ip);
    for (const r of list) this.v4.set(r.ip, { mac: r.mac, source: B_RESERVED, untilMs: Number.POSITIVE_INFINITY });
  }

  prune(now: number): void {
    for (const [ip, b] of this.v4) if (b.untilMs <= now) this.v4.delete(ip);
    for (const [ip, b] of this.v6) if (b.untilMs <= now) this.v6.delete(ip);
  }

  get size(): number {
    return this.v4.size + this.v6.size;
  }
}

export function isAuthoritative(b: Binding): boolean {
  return b.source === B_DHCP || b.source === B_RESERVED;
}

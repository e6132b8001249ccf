// A site's segment defences (README "Security model"), consulted by the switch:
//
//   sending side   port security: which source MACs may leave the local side into the mesh (the coordinator's
//                  guest list, else learned up to max_macs_per_site; never a MAC another site holds unless a
//                  move here is authorized); DHCP snooping, ARP/ND inspection, RA guard on a guests side;
//                  ARP suppression; storm control.
//   receiving side MAC ownership: MACs seen on this site's local side are pinned here; a MAC another peer holds
//                  moves only by an authorized move (authorizeMove, from the coordinator) unless mac_moves is
//                  open; EXPECT only for authorized moves or the peer's own MACs; a quota of MACs per peer;
//                  DHCP server replies only from trusted peers; peers' ARP may not claim addresses bound here.
//
// The switch calls the cheap per-frame checks (inspect.ts: checkLocal/checkPeer look at a few header bytes)
// and the ownership checks here only on its slow paths (a new MAC, a MAC changing port). Every refusal is a named counter
// and a rate-limited warning. Frames relayed by another site arrive as from their ORIGIN peer (the mesh hands
// the switch that peer), so ownership is always checked against the site a frame came from.
import {
  AUTHORIZATIONS_MAX,
  AUTHORIZE_MOVE_MAX_MS,
  GUEST_MACS_MAX,
  LOCAL_PIN_MS,
  OWNER_RECORDS_MAX,
} from '../constants.ts';
import { macString } from '../addr.ts';
import type { Peer } from '../mesh/peer.ts';
import { Bindings } from './bindings.ts';
import type { SecurityConfig } from './config.ts';
import { InspectionDrops, OwnershipDrops, PortSecurityDrops, SnoopingDrops } from './counters.ts';
import { Inspector } from './inspect.ts';
import { LimitedLog, type WarnLogger } from '../limited-log.ts';
import { StormControl } from './storm.ts';

/** Lease lookups from this site's own DHCP server (authoritative bindings without snooping). */
export interface LeaseSource {
  macOf(ip: number, nowMs: number): number | null;
  /** Active leases of a MAC: [ip, expiresAtMs] pairs. */
  leasesOf(mac: number, nowMs: number): Array<[number, number]>;
}

export interface SiteContext {
  /** The switch's MAC table (read only here). */
  table: ReadonlyMap<number, { port: Peer | null; seenMs: number }>;
  /** This site's public key (hex). */
  localKeyHex: string;
  /** Writes a frame this site made to the local side (ARP suppression replies). Ownership passes. */
  writeLocal(frame: Buffer): void;
  /** This site's DHCP server, if it serves one (null otherwise). */
  dhcp: ({ serveLocal: boolean } & LeaseSource) | null;
  /** Whether a configured peer is marked `introducer: true` (then only introducers are trusted for DHCP). */
  hasIntroducer(): boolean;
  log: WarnLogger;
}

interface Authorization {
  keyHex: string;
  untilMs: number;
}

const LOCAL_PORT = { name: 'local' }; // the local side's key in per-port maps

export class SiteSecurity {
  cfg: SecurityConfig;
  readonly portSecurity = new PortSecurityDrops();
  readonly ownership = new OwnershipDrops();
  readonly snooping = new SnoopingDrops();
  readonly inspection = new InspectionDrops();
  readonly storm: StormControl;
  readonly bindings = new Bindings();
  readonly stats = { arpSuppressed: 0, bindingsSnooped: 0, bindingSignals: 0, authorizedMoves: 0 };
  /** The coordinator's guest MACs for this host (setGuestMacs), or null until it gives some. */
  guestMacs: Set<number> | null = null;
  /** The site's own MACs on the local side (its bridge): allowed in strict mode beside the guests. */
  infraMacs = new Set<number>();
  private readonly authorizations = new Map<number, Authorization>();
  private readonly expectedHere = new Map<number, number>(); // mac -> until (a local `expect`)
  private readonly pins = new Map<number, number>(); // local MACs whose table entry aged out -> pinned until
  private readonly counts = new Map<object, number>(); // MAC table entries per port (LOCAL_PORT or a Peer)
  private readonly limited: LimitedLog;
  private readonly inspector: Inspector;
  nowMs = Date.now();

  constructor(
    cfg: SecurityConfig,
    private readonly ctx: SiteContext,
  ) {
    this.cfg = cfg;
    this.storm = new StormControl(cfg.floodPps);
    this.limited = new LimitedLog(ctx.log, () => this.nowMs);
    this.inspector = new Inspector(this, ctx);
  }

  reconfigure(cfg: SecurityConfig): void {
    if (cfg.floodPps !== this.cfg.floodPps) this.storm.setRate(cfg.floodPps);
    this.cfg = cfg;
  }

  get guestsSide(): boolean {
    return this.cfg.localSide === 'guests';
  }

  // ---- authority: the coordinator (through the agent or the control socket) and local operators -----

  /** The coordinator's VM records for this host: their MACs (and reserved addresses, for ARP inspection). */
  setGuestMacs(list: ReadonlyArray<{ mac: number; ip: number | null }>): void {
    const macs = new Set<number>();
    const reservations: Array<{ ip: number; mac: number }> = [];
    for (const g of list.slice(0, GUEST_MACS_MAX)) {
      macs.add(g.mac);
      if (g.ip !== null) reservations.push({ ip: g.ip, mac: g.mac });
    }
    // Guests that left this host (stopped, deleted): their local pins go too. (A LAN side's pins are its
    // devices': the coordinator's list, empty at home, says nothing about them.)
    if (this.guestsSide) for (const mac of this.pins.keys()) if (!macs.has(mac)) this.pins.delete(mac);
    this.guestMacs = macs;
    this.bindings.setReservations(reservations);
  }

  /** A coordinator-announced migration: `mac` may move to the site with key `keyHex` until `untilMs`. */
  authorizeMove(mac: number, keyHex: string, untilMs: number): void {
    const until = Math.min(untilMs, this.nowMs + AUTHORIZE_MOVE_MAX_MS);
    if (this.authorizations.size >= AUTHORIZATIONS_MAX && !this.authorizations.has(mac)) this.prune();
    if (this.authorizations.size >= AUTHORIZATIONS_MAX && !this.authorizations.has(mac)) return;
    this.authorizations.set(mac, { keyHex, untilMs: until });
    this.stats.authorizedMoves++;
  }

  /** The local operator (or agent) says `mac` is about to arrive here. */
  expectHere(mac: number, untilMs: number): void {
    if (this.expectedHere.size >= AUTHORIZATIONS_MAX) this.prune();
    if (this.expectedHere.size < AUTHORIZATIONS_MAX) this.expectedHere.set(mac, untilMs);
  }

  /** May `mac` move to `peer`? (An authorized move to that peer's key.) */
  authorized(mac: number, peer: Peer): boolean {
    const a = this.authorizations.get(mac);
    return a !== undefined && a.untilMs > this.nowMs && a.keyHex === peer.keyHex;
  }

  /** May `mac` appear on this site's local side while another site holds it? */
  authorizedHere(mac: number): boolean {
    const a = this.authorizations.get(mac);
    if (a !== undefined && a.untilMs > this.nowMs && a.keyHex === this.ctx.localKeyHex) return true;
    const e = this.expectedHere.get(mac);
    if (e !== undefined && e > this.nowMs) return true;
    return this.cfg.portSecurity === 'strict' && this.guestMacs !== null && this.guestMacs.has(mac);
  }

  // ---- sending side: port security (slow path: a MAC new on the local side, or moving here) ---------

  /** A MAC not in the table appears on the local side: may it enter the table (and the mesh)? */
  mayLearnLocal(mac: number): boolean {
    const cfg = this.cfg;
    if (cfg.portSecurity === 'off') return true;
    if (cfg.portSecurity === 'strict' && this.guestsSide && this.guestMacs !== null) {
      if (this.guestMacs.has(mac) || this.infraMacs.has(mac)) return true;
      this.portSecurity.unknown_mac++;
      this.warn(
        'unknown_mac',
        mac,
        LOCAL_PORT,
        'port security: a frame from a MAC that is not one of this host guests',
      );
      return false;
    }
    const cap = this.guestsSide ? cfg.maxMacsPerSite : cfg.maxMacsPerPeer;
    if (this.count(LOCAL_PORT) >= cap && !this.infraMacs.has(mac)) {
      this.portSecurity.too_many_macs++;
      this.warn('too_many_macs', mac, LOCAL_PORT, `port security: more than ${cap} MACs on the local side`);
      return false;
    }
    return true;
  }

  /** A MAC the table places behind a peer appears on the local side. */
  mayMoveHere(mac: number, holder: Peer): boolean {
    if (this.cfg.portSecurity === 'off' || this.authorizedHere(mac)) return true;
    this.portSecurity.remote_mac++;
    this.warn(
      'remote_mac',
      mac,
      LOCAL_PORT,
      `port security: a local frame claims a MAC that lives behind ${holder.name}; no move here was authorized`,
    );
    return false;
  }

  badLocalSource(): boolean {
    if (this.cfg.portSecurity === 'off') return false;
    this.portSecurity.bad_source++;
    return true;
  }

  // ---- receiving side: ownership (slow path) ----------------------------------------------------------

  /** A peer's frame or announcement claims `mac`, which the table does not hold. */
  mayClaimNew(mac: number, peer: Peer, announced: boolean): boolean {
    const pin = this.pins.get(mac);
    if (pin !== undefined) {
      if (pin > this.nowMs && !this.authorized(mac, peer)) return this.refuse(mac, peer, announced, true);
      this.pins.delete(mac);
    }
    return this.quotaOk(mac, peer);
  }

  /** A peer claims `mac`, which the table places at `holder` (null: this site's local side). */
  mayClaimHeld(mac: number, peer: Peer, holder: Peer | null, announced: boolean): boolean {
    if (!this.authorized(mac, peer)) {
      if (holder === null || this.cfg.macMoves === 'authorized')
        return this.refuse(mac, peer, announced, holder === null);
    }
    return this.quotaOk(mac, peer);
  }

  /** May `peer` ask for `mac`'s frames to be sent to it too (EXPECT)? */
  mayExpect(mac: number, peer: Peer, holder: Peer | null | undefined): boolean {
    if (holder === peer || this.authorized(mac, peer)) return true;
    this.ownership.expect_refused++;
    this.warn('expect_refused', mac, peer, 'ownership: EXPECT for a MAC that is not authorized to move to this peer');
    return false;
  }

  badPeerSource(peer: Peer): void {
    this.ownership.bad_source++;
    this.warn('bad_source', -1, peer, 'ownership: a frame from a peer with a group source MAC');
  }

  private refuse(mac: number, peer: Peer, announced: boolean, local: boolean): false {
    if (announced) {
      this.ownership.move_refused++;
      this.warn('move_refused', mac, peer, 'ownership: refused a move announcement for a MAC the peer may not claim');
    } else if (local) {
      this.ownership.local_mac++;
      this.warn('local_mac', mac, peer, "ownership: a peer's frame claims a MAC pinned on this site's local side");
    } else {
      this.ownership.owned_elsewhere++;
      this.warn('owned_elsewhere', mac, peer, "ownership: a peer's frame claims a MAC another site holds");
    }
    return false;
  }

  private quotaOk(mac: number, peer: Peer): boolean {
    if (this.count(peer) < this.cfg.maxMacsPerPeer) return true;
    this.ownership.peer_quota++;
    this.warn('peer_quota', mac, peer, `ownership: the peer already holds ${this.cfg.maxMacsPerPeer} MACs here`);
    return false;
  }

  // ---- table bookkeeping (the switch calls these whenever an entry is created, moved or deleted) ----

  private count(port: object): number {
    return this.counts.get(port) ?? 0;
  }

  entryAdded(port: Peer | null): void {
    const k = port ?? LOCAL_PORT;
    this.counts.set(k, this.count(k) + 1);
  }

  entryRemoved(mac: number, port: Peer | null, seenMs: number): void {
    const k = port ?? LOCAL_PORT;
    const n = this.count(k) - 1;
    if (n > 0) this.counts.set(k, n);
    else this.counts.delete(k);
    if (port === null) {
      // The MAC stays pinned here after its entry ages out (a quiet LAN device is still the LAN's).
      if (this.pins.size >= OWNER_RECORDS_MAX) this.prune();
      if (this.pins.size < OWNER_RECORDS_MAX) this.pins.set(mac, seenMs + LOCAL_PIN_MS);
    }
  }

  entryMoved(mac: number, from: Peer | null, to: Peer | null): void {
    const f = from ?? LOCAL_PORT;
    const n = this.count(f) - 1;
    if (n > 0) this.counts.set(f, n);
    else this.counts.delete(f);
    this.entryAdded(to);
    if (from === null) this.pins.delete(mac); // an authorized move away: no longer pinned here
  }

  macCount(port: Peer | null): number {
    return this.count(port ?? LOCAL_PORT);
  }

  // ---- per-frame checks (inspect.ts) ------------------------------------------------------------------

  /** A frame from the local side (src: its source MAC). PASS, DROP (counted) or KEEP_LOCAL. */
  checkLocal(frame: Buffer, src: number): number {
    return this.inspector.checkLocal(frame, src);
  }

  /** A frame from a peer (after its source MAC passed the ownership checks). PASS or DROP (counted). */
  checkPeer(peer: Peer, frame: Buffer, src: number): number {
    return this.inspector.checkPeer(peer, frame, src);
  }

  trustsDhcpFrom(peer: Peer): boolean {
    return this.inspector.trustsDhcpFrom(peer);
  }

  bindingSignal(peer: Peer, mac: number, ip: number, seconds: number): void {
    this.inspector.bindingSignal(peer, mac, ip, seconds);
  }

  // ---- time ------------------------------------------------------------------------------------------

  /** Drops expired authorizations, expectations, pins and bindings (called now and then by the switch). */
  prune(): void {
    const now = this.nowMs;
    for (const [mac, a] of this.authorizations) if (a.untilMs <= now) this.authorizations.delete(mac);
    for (const [mac, until] of this.expectedHere) if (until <= now) this.expectedHere.delete(mac);
    for (const [mac, until] of this.pins) if (until <= now) this.pins.delete(mac);
    this.bindings.prune(now);
  }

  forgetPort(peer: Peer): void {
    this.counts.delete(peer);
  }

  /** @internal a counted refusal's rate-limited warning (one per reason and port per 10 s) */
  warn(reason: string, mac: number, port: { name: string }, msg: string): void {
    this.limited.warn(
      `${reason}:${port.name}`,
      { reason, from: port.name, ...(mac >= 0 ? { mac: macString(mac) } : {}) },
      msg,
    );
  }
}

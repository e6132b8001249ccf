// Introductions: how a site that lists only home learns every other site.
//
// Introducer (a site with `introduce: true`, normally home): gives each of its peers a 24-bit site id, and
// tells every peer that uses it as introducer (it sent CANDIDATES) about every other peer it has a session
// with: name, public key, site id, the endpoint it sees the site at and the site's own addresses. A change is
// sent at once and again after 1 and 3 s (UDP may lose one); the whole directory again every 60 s; a removed
// peer is withdrawn. Introductions are leases: a site the introducer stops naming is dropped after 180 s.
//
// Site (a peer marked `introducer: true` in its config): adds introduced sites as peers in memory, with no
// endpoint of their own (they are reached through the introducer until a direct path works: mesh/paths.ts),
// and reports its own addresses to its introducers (CANDIDATES). Introductions from any other peer, and from
// introduced peers, are dropped and counted: only the config says who may introduce.
import crypto from 'node:crypto';
import {
  CANDIDATES_MAX,
  CANDIDATES_REFRESH_MS,
  INTRO_LEASE_MS,
  INTRO_REFRESH_MS,
  INTRO_REPEAT_MS,
  INTRODUCED_PEERS_MAX,
  SITE_ID_MAX,
} from '../constants.ts';
import type { Logger } from '../log.ts';
import {
  encodeCandidates,
  encodeIntroduce,
  encodeWithdraw,
  INTRO_FLAG_NO_UDP,
  INTRO_FLAG_RELAY,
  type Introduction,
} from './natsignal.ts';
import type { Endpoint, Peer } from './peer.ts';

/** Introductions by result (homewire_introductions_total{result}), at both ends. */
export class IntroStats {
  sent = 0; // introductions sent (introducer)
  withdrawals_sent = 0;
  accepted = 0; // a new site added
  updated = 0; // a known site re-introduced (refresh, new endpoints)
  configured = 0; // a site we have in our config: only its site id is taken
  withdrawn = 0;
  expired = 0; // not re-introduced within the lease
  not_introducer = 0; // from a peer the config does not mark introducer (or an introduced one): dropped
  not_introducing = 0; // CANDIDATES to a site without introduce: true: dropped
  malformed = 0;
  self = 0; // an introduction of our own key: ignored
  conflict = 0; // the key belongs to another introducer's site, or the name is taken: dropped
  full = 0; // INTRODUCED_PEERS_MAX reached: dropped
}

/** What introductions need from the mesh. */
export interface IntroHost {
  readonly peers: readonly Peer[];
  readonly nowMs: number;
  readonly relayEnabled: boolean;
  readonly localKeyHex: string;
  /** A signal on the peer's own session (type 5); staged if the session is not up yet. */
  sendSignalDirect(peer: Peer, payload: Buffer): void;
  peerByKeyHex(hex: string): Peer | undefined;
  peerByName(name: string): Peer | undefined;
  addIntroduced(from: Peer, intro: Introduction): Peer;
  removePeer(peer: Peer): void;
  /** This host's own addresses with the listen port (candidates for direct paths). */
  localCandidates(): Endpoint[];
  isTcp(ep: Endpoint | null): boolean;
}

/** A scheduled send: `about` to every peer that takes introductions (announce), every site to `to` (welcome),
 *  or a withdrawal of `key` to everyone. One entry per change, expanded when sent: O(changes), not O(N²). */
type Scheduled =
  | { kind: 'announce'; about: Peer; atMs: number }
  | { kind: 'welcome'; to: Peer; atMs: number }
  | { kind: 'withdraw'; key: Buffer; atMs: number };

/** The introducer's side: site ids, the directory, sending introductions and withdrawals. */
export class Introducer {
  readonly bySite = new Map<number, Peer>();
  private schedule: Scheduled[] = [];
  private readonly refreshAt = new Map<Peer, number>();

  constructor(
    private readonly host: IntroHost,
    private readonly stats: IntroStats,
    private readonly log: Logger,
  ) {}

  /** Gives a configured peer its site id: derived from its key (stable across restarts), probed on collision. */
  assign(peer: Peer): void {
    const h = crypto.createHash('sha256').update(peer.publicKey).digest();
    let id = (h.readUIntBE(0, 3) % SITE_ID_MAX) + 1;
    while (this.bySite.has(id)) id = (id % SITE_ID_MAX) + 1;
    peer.siteId = id;
    this.bySite.set(id, peer);
  }

  /** A peer was removed from our config: withdraw it everywhere. */
  release(peer: Peer): void {
    if (this.bySite.get(peer.siteId) === peer) this.bySite.delete(peer.siteId);
    this.refreshAt.delete(peer);
    this.schedule = this.schedule.filter((e) => !(e.kind === 'announce' && e.about === peer));
    for (const d of INTRO_REPEAT_MS)
      this.schedule.push({ kind: 'withdraw', key: peer.publicKey, atMs: this.host.nowMs + d });
    this.sendDue();
  }

  /** A site reported its addresses: it uses us as introducer. Introduce it to the others, and the others to it
   *  when it knows fewer sites from us than we have (new, restarted, or it lost introductions). */
  candidates(peer: Peer, endpoints: Endpoint[], known: number): void {
    const fresh = !peer.acceptsIntroductions;
    const changed = !sameEndpoints(peer.localCandidates, endpoints);
    peer.acceptsIntroductions = true;
    peer.localCandidates = endpoints;
    if (fresh) {
      this.log.info({ peer: peer.name, siteId: peer.siteId }, 'site uses this node as introducer');
      this.refreshAt.set(peer, this.host.nowMs + INTRO_REFRESH_MS);
    }
    let have = 0;
    for (const q of this.host.peers) if (q !== peer && this.introducible(q)) have++;
    const welcomed = this.schedule.some((e) => e.kind === 'welcome' && e.to === peer);
    if (known < have && !welcomed) {
      for (const d of INTRO_REPEAT_MS) this.schedule.push({ kind: 'welcome', to: peer, atMs: this.host.nowMs + d });
    }
    if (fresh || changed || known < have) this.announce(peer);
    else this.sendDue();
  }

  /** A session with a peer came up, or its endpoint moved: (re-)introduce it to the others. */
  announce(peer: Peer): void {
    if (peer.introducedBy !== null || peer.siteId === 0) return;
    // A newer change replaces what is still scheduled for the same site.
    this.schedule = this.schedule.filter((e) => !(e.kind === 'announce' && e.about === peer));
    for (const d of INTRO_REPEAT_MS) this.schedule.push({ kind: 'announce', about: peer, atMs: this.host.nowMs + d });
    this.sendDue();
  }

  private introducible(q: Peer): boolean {
    return q.introducedBy === null && q.siteId !== 0 && q.current !== null && q.endpoint !== null && !q.removed;
  }

  introduction(q: Peer): Introduction {
    const endpoints: Endpoint[] = [];
    const tcp = this.host.isTcp(q.endpoint);
    if (q.endpoint && !tcp) endpoints.push(q.endpoint);
    for (const e of q.localCandidates) {
      if (endpoints.length >= CANDIDATES_MAX) break;
      if (!endpoints.some((x) => x.address === e.address && x.port === e.port)) endpoints.push(e);
    }
    return {
      siteId: q.siteId,
      publicKey: q.publicKey,
      flags: (this.host.relayEnabled ? INTRO_FLAG_RELAY : 0) | (tcp ? INTRO_FLAG_NO_UDP : 0),
      name: q.name,
      endpoints,
    };
  }

  tick(): void {
    const now = this.host.nowMs;
    this.sendDue();
    for (const [p, at] of this.refreshAt) {
      if (now < at) continue;
      this.refreshAt.set(p, now + INTRO_REFRESH_MS);
      this.sendAll(p);
    }
  }

  private sendDue(): void {
    const now = this.host.nowMs;
    if (this.schedule.length === 0 || this.schedule.every((e) => e.atMs > now)) return;
    const due = this.schedule.filter((e) => e.atMs <= now);
    this.schedule = this.schedule.filter((e) => e.atMs > now);
    for (const e of due) {
      if (e.kind === 'withdraw') {
        const msg = encodeWithdraw(e.key);
        for (const p of this.host.peers) {
          if (!p.acceptsIntroductions || p.introducedBy !== null) continue;
          this.host.sendSignalDirect(p, msg);
          this.stats.withdrawals_sent++;
        }
      } else if (e.kind === 'welcome') {
        if (!e.to.removed) this.sendAll(e.to);
      } else if (this.introducible(e.about)) {
        const msg = encodeIntroduce(this.introduction(e.about));
        for (const p of this.host.peers) {
          if (p === e.about || !p.acceptsIntroductions || p.introducedBy !== null) continue;
          this.host.sendSignalDirect(p, msg);
          this.stats.sent++;
        }
      }
    }
  }

  /** The whole directory to one site. */
  private sendAll(to: Peer): void {
    for (const q of this.host.peers) if (q !== to && this.introducible(q)) this.send(to, q);
  }

  private send(to: Peer, about: Peer): void {
    this.host.sendSignalDirect(to, encodeIntroduce(this.introduction(about)));
    this.stats.sent++;
  }
}

/** A site's side: accepting introductions, withdrawing and expiring them, reporting our own addresses. */
export class Introductions {
  count = 0;
  private readonly candidatesAt = new Map<Peer, number[]>();

  constructor(
    private readonly host: IntroHost,
    private readonly stats: IntroStats,
    private readonly log: Logger,
  ) {}

  /** An INTRODUCE from `from` over its own session (never relayed: the mesh checks). */
  receive(from: Peer, intro: Introduction): void {
    if (!from.introducer || from.introducedBy !== null) {
      this.stats.not_introducer++;
      this.log.warn({ peer: from.name }, 'introduction from a peer that is not an introducer: dropped');
      return;
    }
    if ((intro.flags & INTRO_FLAG_RELAY) !== 0) from.relays = true;
    const hex = intro.publicKey.toString('hex');
    if (hex === this.host.localKeyHex) {
      this.stats.self++;
      return;
    }
    const now = this.host.nowMs;
    const known = this.host.peerByKeyHex(hex);
    if (known !== undefined) {
      if (known === from) {
        this.stats.conflict++;
        return;
      }
      if (known.introducedBy === null) {
        // Configured here as well: take the site id only, so frames relayed from it are accepted.
        this.register(from, known, intro.siteId);
        this.stats.configured++;
        return;
      }
      if (known.introducedBy !== from) {
        this.stats.conflict++;
        return;
      }
      this.register(from, known, intro.siteId);
      const changed = !sameEndpoints(known.candidates, intro.endpoints);
      known.candidates = intro.endpoints;
      known.introFlags = intro.flags;
      known.introExpiresMs = now + INTRO_LEASE_MS;
      if (changed) {
        known.punchAttempt = 0; // new addresses: try again soon
        known.punchNextMs = 0;
      }
      this.stats.updated++;
      return;
    }
    const clash = this.host.peerByName(intro.name);
    if (clash !== undefined) {
      this.stats.conflict++;
      this.log.warn(
        { peer: from.name, name: intro.name },
        'introduced site has the name of another peer: dropped (rename one of them)',
      );
      return;
    }
    if (this.count >= INTRODUCED_PEERS_MAX) {
      this.stats.full++;
      return;
    }
    const peer = this.host.addIntroduced(from, intro);
    peer.introExpiresMs = now + INTRO_LEASE_MS;
    this.register(from, peer, intro.siteId);
    this.count++;
    this.stats.accepted++;
    this.log.info(
      { peer: peer.name, introducedBy: from.name, siteId: intro.siteId, endpoints: intro.endpoints.length },
      'site introduced',
    );
  }

  private register(from: Peer, peer: Peer, siteId: number): void {
    if (from.introducedSites === null) from.introducedSites = new Map();
    const sites = from.introducedSites;
    if (peer.siteId !== siteId && sites.get(peer.siteId) === peer) sites.delete(peer.siteId);
    const other = sites.get(siteId);
    if (other !== undefined && other !== peer) other.siteId = 0; // the introducer gave the id to this site now
    peer.siteId = siteId;
    sites.set(siteId, peer);
  }

  withdraw(from: Peer, publicKey: Buffer): void {
    if (!from.introducer || from.introducedBy !== null) {
      this.stats.not_introducer++;
      return;
    }
    const peer = this.host.peerByKeyHex(publicKey.toString('hex'));
    if (peer === undefined || peer.introducedBy !== from) return;
    this.remove(peer);
    this.stats.withdrawn++;
    this.log.info({ peer: peer.name, introducedBy: from.name }, 'site withdrawn by its introducer');
  }

  /** An introduced peer leaves (withdrawn, expired, or its introducer was removed). */
  remove(peer: Peer): void {
    const sites = peer.introducedBy?.introducedSites;
    if (sites?.get(peer.siteId) === peer) sites.delete(peer.siteId);
    this.host.removePeer(peer);
    this.count--;
  }

  /** A session with one of our introducers came up: report our addresses (again after 1 and 3 s). */
  introducerUp(peer: Peer): void {
    const now = this.host.nowMs;
    this.candidatesAt.set(
      peer,
      INTRO_REPEAT_MS.map((d) => now + d),
    );
    this.tick();
  }

  tick(): void {
    const now = this.host.nowMs;
    for (const p of [...this.host.peers]) {
      if (p.introducedBy !== null && p.introExpiresMs !== 0 && now > p.introExpiresMs) {
        this.log.info({ peer: p.name }, 'introduction lapsed (not renewed by its introducer): site removed');
        this.remove(p);
        this.stats.expired++;
      }
    }
    for (const [p, times] of this.candidatesAt) {
      if (p.removed) {
        this.candidatesAt.delete(p);
        continue;
      }
      if (times.length === 0 || times[0] > now) continue;
      while (times.length > 0 && times[0] <= now) times.shift();
      if (times.length === 0) times.push(now + CANDIDATES_REFRESH_MS);
      this.host.sendSignalDirect(p, encodeCandidates(this.host.localCandidates(), p.introducedSites?.size ?? 0));
    }
  }
}

export function sameEndpoints(a: readonly Endpoint[], b: readonly Endpoint[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i].address !== b[i].address || a[i].port !== b[i].port) return false;
  return true;
}

// The L2 learning switch between the local side (the TAP) and the peers of the mesh.
//
//   fromTap  (inside):  learn src → local; service? → known peer: send | group/unknown: flood to all peers
//   fromPeer (outside): learn src → peer;  service? → group/unknown/local: write to the TAP
//                       (split horizon: a frame from a peer never goes back out to peers, except to a MAC that
//                        just moved away from here: the old host forwards to the new one for a grace period;
//                        relaying between sites behind NAT is the mesh's business: mesh/relay.ts)
//
// MAC mobility (live migration): a guest MAC showing up on the local side while the table placed it behind a
// peer is a move; the switch announces "MAC m is at me, sequence n" to every peer at once (mesh/signal.ts), and
// a coordinator can pre-announce an arrival (expect) so peers send the MAC's frames to both hosts meanwhile.
// MACs are 48-bit numbers (exact in a double). All ageing is driven by tick(), not by per-entry timers.
//
// Security (security/site.ts): the fast path is unchanged (a known source MAC on its own port); a MAC new
// to a port, or changing port, goes through port security (local side) or the ownership checks (peers), so
// no peer can take a MAC pinned here and no guest can send as a MAC another site holds. Every frame gets a
// few header reads for DHCP snooping, ARP/ND inspection and RA guard; floods pass storm control.
import {
  ANNOUNCE_REPEAT_MS,
  ETHERNET_HEADER_BYTES,
  EXPECT_DUAL_SEND_MS,
  FLAP_HOLDDOWN_MS,
  FLAP_MOVES_MAX,
  FLAP_WINDOW_MS,
  MAC_AGEING_MS,
  MAC_TABLE_MAX,
  MOVE_FORWARD_GRACE_MS,
  MOVE_SETTLE_MS,
} from './constants.ts';
import { type Express, noExpress } from './express.ts';
import type { Logger } from './log.ts';
import type { Mesh } from './mesh/mesh.ts';
import type { Peer } from './mesh/peer.ts';
import { macKey, macString } from './addr.ts';
import { decodeSignal, encodeExpect, encodeMacAt, SIG_EXPECT, SIG_MAC_AT } from './mesh/signal.ts';
import type { SecurityConfig } from './security/config.ts';
import { decodeBinding, encodeBinding, SIG_SECURITY_FIRST, SIG_SECURITY_LAST } from './security/signal.ts';
import { DROP, KEEP_LOCAL } from './security/inspect.ts';
import { type LeaseSource, SiteSecurity } from './security/site.ts';
import { STORM_BROADCAST, STORM_MULTICAST, STORM_UNKNOWN_UNICAST } from './security/storm.ts';
import type { TapDevice } from './tap/device.ts';

/** Port name of the local side in services and logs. */
export const LOCAL = 'local';

/** Something on the segment that consumes frames itself (the DHCP server). */
export interface SegmentService extends LeaseSource {
  readonly mac: Buffer;
  /** Whether it also serves the site's own local side (dhcp.serve_local). */
  readonly serveLocal: boolean;
  /** Offered group frames and frames to `mac`; returns true if consumed. Never throws. */
  offer(frame: Buffer, from: string): boolean;
}

export interface MacEntry {
  port: Peer | null; // null = the local side (TAP)
  seenMs: number;
  seq: number; // mobility sequence (announced moves)
  settledUntilMs: number; // an announced move: data-plane learning may not move it before this
  forwardTo: Peer | null; // moved away from here: frames from peers are forwarded there until forwardUntilMs
  forwardUntilMs: number;
  alsoTo: Peer | null; // expected arrival: frames are sent there too until alsoUntilMs
  alsoUntilMs: number;
  expectedUntilMs: number; // expected to arrive here: frames from peers go to the TAP until then
  moveTimes: number[]; // recent move times (flap detection)
  holdUntilMs: number; // flapping: held where it is until then
  rxBytes: number; // local MACs: bytes from this MAC into the overlay
  txBytes: number; // local MACs: bytes from the overlay to this MAC
  exGen: number; // the express path's install mark (src/express.ts)
  exUntil: number;
}

export class SwitchDrops {
  runt = 0; // shorter than an Ethernet header
  too_big = 0; // does not fit one underlay datagram
  local_unicast = 0; // from the TAP to a MAC that is also on the TAP side
  split_horizon = 0; // from a peer to a MAC behind another peer
  table_full = 0;
  signal_malformed = 0;
}

export class MobilityStats {
  moves = 0; // a MAC changed port
  announced = 0; // MAC_AT messages sent
  forwardedAfterMove = 0; // frames the old host forwarded to the new one
  dualSent = 0; // frames also sent to an expected host
  flapHolddowns = 0;
  staleAnnouncements = 0; // lower sequence than known
}

export class Switch {
  readonly table = new Map<number, MacEntry>();
  readonly drops = new SwitchDrops();
  readonly mobility = new MobilityStats();
  readonly security: SiteSecurity;
  nowMs = Date.now();
  /** Announce moves to peers (off: plain data-plane learning, for comparison in bench/). */
  announceMoves = true;
  /** The express path (src/express.ts): told which MACs are where after this switch carried their frames. */
  express: Express = noExpress();
  private readonly serviceMac: number;
  private readonly announcements: Array<{ mac: number; seq: number; atMs: number }> = [];
  private lastPruneMs = 0;

  constructor(
    private readonly tap: TapDevice,
    private readonly mesh: Mesh,
    private readonly maxFrameBytes: number,
    private readonly localKeyHex: string,
    private readonly log: Logger,
    private readonly service: SegmentService | null,
    security: SecurityConfig,
  ) {
    this.serviceMac = service ? macKey(service.mac, 0) : -1;
    this.security = new SiteSecurity(security, {
      table: this.table,
      localKeyHex,
      writeLocal: (frame) => this.tap.write(frame),
      dhcp: service,
      log,
      hasIntroducer: () => this.mesh.peers.some((p) => p.introducer),
    });
  }

  /** A frame from the TAP (BORROWED: valid during this call only). */
  fromTap(frame: Buffer): void {
    if (frame.length < ETHERNET_HEADER_BYTES) {
      this.drops.runt++;
      return;
    }
    if (frame.length > this.maxFrameBytes) {
      this.drops.too_big++;
      return;
    }
    const sec = this.security;
    let src = -1;
    let srcEntry: MacEntry | undefined;
    if ((frame[6] & 1) === 0) {
      src = macKey(frame, 6);
      srcEntry = this.table.get(src);
      if (srcEntry === undefined || srcEntry.port !== null) {
        srcEntry = this.learnLocal(src, srcEntry); // port security: a MAC new here, or arriving from another site
        if (srcEntry === undefined) return;
      } else srcEntry.seenMs = this.nowMs;
      srcEntry.rxBytes += frame.length;
    } else if (sec.badLocalSource()) return;
    const verdict = sec.checkLocal(frame, src);
    if (verdict === DROP) return;
    const group = (frame[0] & 1) === 1;
    const dst = group ? -1 : macKey(frame, 0);
    if (this.service !== null && (group || dst === this.serviceMac) && this.service.offer(frame, LOCAL)) return;
    if (verdict === KEEP_LOCAL) return;
    if (!group) {
      const entry = this.table.get(dst);
      if (entry !== undefined) {
        if (entry.port === null) this.drops.local_unicast++;
        else {
          this.mesh.sendFrame(entry.port, frame);
          if (entry.alsoTo === null && srcEntry !== undefined && srcEntry.port === null && dst !== this.serviceMac) {
            this.express.mac(srcEntry, src, null, this.nowMs);
            this.express.mac(entry, dst, entry.port, this.nowMs);
          }
        }
        if (entry.alsoTo !== null) this.sendAlso(entry, frame);
        return;
      }
    }
    if (!sec.storm.allow(LOCAL_STORM_PORT, stormKind(frame, group), this.nowMs)) return;
    this.mesh.flood(frame); // every site; through a relay one copy, which the relay fans out
  }

  /** A frame from a peer (OWNED: handed on to the TAP without copying). `peer` is the site it came FROM
   *  (for a relayed frame, the origin site, not the relay). */
  fromPeer(peer: Peer, frame: Buffer): void {
    if (frame.length < ETHERNET_HEADER_BYTES) {
      this.drops.runt++;
      return;
    }
    const sec = this.security;
    if ((frame[6] & 1) !== 0) {
      sec.badPeerSource(peer);
      return;
    }
    const src = macKey(frame, 6);
    let srcEntry = this.table.get(src);
    if (srcEntry === undefined || srcEntry.port !== peer) {
      if (!this.learnPeer(src, srcEntry, peer)) return; // ownership: a MAC pinned here or held by another site
      srcEntry = this.table.get(src);
    } else srcEntry.seenMs = this.nowMs;
    if (sec.checkPeer(peer, frame, src) === DROP) return;
    const group = (frame[0] & 1) === 1;
    const dst = group ? -1 : macKey(frame, 0);
    if (this.service !== null && (group || dst === this.serviceMac) && this.service.offer(frame, peer.name)) return;
    if (!group) {
      const entry = this.table.get(dst);
      if (entry !== undefined && entry.port !== null) {
        // The MAC left this host a moment ago: pass what is still in flight on to its new host.
        if (entry.forwardTo === entry.port && entry.forwardUntilMs > this.nowMs && entry.port !== peer) {
          this.mobility.forwardedAfterMove++;
          this.mesh.sendFrame(entry.port, frame);
        } else if (entry.expectedUntilMs > this.nowMs) {
          this.tap.write(frame); // a migration is in flight to here: the (paused) guest takes it after resume
        } else {
          this.drops.split_horizon++;
        }
        return;
      }
      if (entry !== undefined) {
        entry.txBytes += frame.length;
        if (srcEntry !== undefined && srcEntry.port === peer && dst !== this.serviceMac) {
          this.express.mac(srcEntry, src, peer, this.nowMs);
          this.express.mac(entry, dst, null, this.nowMs);
        }
      } else if (!sec.storm.allow(peer, STORM_UNKNOWN_UNICAST, this.nowMs)) return;
    } else if (!sec.storm.allow(peer, frame[0] === 0xff ? STORM_BROADCAST : STORM_MULTICAST, this.nowMs)) return;
    this.tap.write(frame);
  }

  /** Sends a frame the daemon itself made (e.g. a DHCP reply) to exactly one port. Ownership passes. */
  sendTo(port: string, frame: Buffer): void {
    if (port === LOCAL) {
      this.tap.write(frame);
      return;
    }
    const peer = this.mesh.peerByName(port);
    if (peer) this.mesh.sendFrame(peer, frame);
  }

  private sendAlso(entry: MacEntry, frame: Buffer): void {
    if (entry.alsoUntilMs <= this.nowMs || entry.alsoTo === entry.port) {
      entry.alsoTo = null;
      return;
    }
    this.mobility.dualSent++;
    this.mesh.sendFrame(entry.alsoTo!, frame);
  }

  // ---- learning, ownership and mobility ------------------------------------------------------------

  /** A source MAC on the local side that the table does not place here. undefined: dropped (counted). */
  private learnLocal(mac: number, entry: MacEntry | undefined): MacEntry | undefined {
    const sec = this.security;
    if (entry === undefined) {
      if (!sec.mayLearnLocal(mac)) return undefined;
      return this.addEntry(mac, null);
    }
    if (!sec.mayMoveHere(mac, entry.port!)) return undefined;
    entry.seenMs = this.nowMs;
    this.move(mac, entry, null, false);
    return entry;
  }

  /** A source MAC from `peer` that the table does not place at `peer`. false: dropped (counted). */
  private learnPeer(mac: number, entry: MacEntry | undefined, peer: Peer): boolean {
    const sec = this.security;
    if (entry === undefined) {
      if (!sec.mayClaimNew(mac, peer, false)) return false;
      return this.addEntry(mac, peer) !== undefined;
    }
    if (!sec.mayClaimHeld(mac, peer, entry.port, false)) return false;
    entry.seenMs = this.nowMs;
    this.move(mac, entry, peer, false);
    return true;
  }

  private addEntry(mac: number, port: Peer | null): MacEntry | undefined {
    if (this.table.size >= MAC_TABLE_MAX) {
      this.drops.table_full++;
      return undefined;
    }
    const entry = newEntry(port, this.nowMs);
    this.table.set(mac, entry);
    this.security.entryAdded(port);
    if (port !== null) this.sendBinding(mac, port);
    return entry;
  }

  private deleteEntry(mac: number, entry: MacEntry): void {
    this.express.flush();
    this.table.delete(mac);
    this.security.entryRemoved(mac, entry.port, entry.seenMs);
  }

  /** Moves a MAC to another port (data-plane learning or an announcement); returns false if refused. */
  private move(mac: number, entry: MacEntry, port: Peer | null, announced: boolean): boolean {
    const now = this.nowMs;
    if (entry.holdUntilMs > now) return false;
    if (!announced && port !== null && entry.settledUntilMs > now) return false;
    // Flap detection: too many moves in the window holds the entry where it is.
    const times = entry.moveTimes;
    while (times.length > 0 && now - times[0] > FLAP_WINDOW_MS) times.shift();
    times.push(now);
    if (times.length > FLAP_MOVES_MAX) {
      entry.holdUntilMs = now + FLAP_HOLDDOWN_MS;
      times.length = 0;
      this.mobility.flapHolddowns++;
      this.log.warn(
        { mac: macString(mac), holdSeconds: FLAP_HOLDDOWN_MS / 1000 },
        'MAC is flapping between hosts; holding it down',
      );
      return false;
    }
    const from = entry.port;
    this.express.flush();
    this.security.entryMoved(mac, from, port);
    entry.port = port;
    entry.alsoTo = null;
    entry.expectedUntilMs = 0;
    this.mobility.moves++;
    if (from === null && port !== null) {
      // It left us: forward what is still in flight to its new host for a grace period.
      entry.forwardTo = port;
      entry.forwardUntilMs = now + MOVE_FORWARD_GRACE_MS;
    } else {
      entry.forwardTo = null;
    }
    if (port === null && from !== null) {
      // It arrived here (RARP, gratuitous ARP or any frame): tell every peer at once.
      entry.seq = (entry.seq + 1) >>> 0;
      entry.settledUntilMs = now + MOVE_SETTLE_MS;
      if (this.announceMoves) this.announce(mac, entry.seq);
    }
    if (port !== null) this.sendBinding(mac, port);
    this.log.debug({ mac: macString(mac), from: from?.name ?? LOCAL, to: port?.name ?? LOCAL }, 'MAC moved');
    return true;
  }

  /** This site serves DHCP and `mac` holds a lease: tell the site it now lives at (ARP inspection there). */
  private sendBinding(mac: number, peer: Peer): void {
    const service = this.service;
    if (service === null) return;
    for (const [ip, expiresAtMs] of service.leasesOf(mac, this.nowMs)) {
      this.mesh.sendSignal(peer, encodeBinding(mac, ip, (expiresAtMs - this.nowMs) / 1000));
    }
  }

  private announce(mac: number, seq: number): void {
    for (const delay of ANNOUNCE_REPEAT_MS) this.announcements.push({ mac, seq, atMs: this.nowMs + delay });
    this.sendDueAnnouncements();
  }

  private sendDueAnnouncements(): void {
    for (let i = 0; i < this.announcements.length; ) {
      const a = this.announcements[i];
      if (a.atMs > this.nowMs) {
        i++;
        continue;
      }
      this.announcements.splice(i, 1);
      const entry = this.table.get(a.mac);
      if (!entry || entry.port !== null || entry.seq !== a.seq) continue; // superseded
      const msg = encodeMacAt(a.mac, a.seq);
      this.mesh.floodSignal(msg);
      this.mobility.announced++;
    }
  }

  /** A signal message from a peer (authenticated by the mesh; from the origin site when relayed). */
  onSignal(peer: Peer, payload: Buffer): void {
    if (payload.length > 0 && payload[0] >= SIG_SECURITY_FIRST && payload[0] <= SIG_SECURITY_LAST) {
      const b = decodeBinding(payload);
      if (b === null) this.drops.signal_malformed++;
      else this.security.bindingSignal(peer, b.mac, b.ip, b.seconds);
      return;
    }
    const msg = decodeSignal(payload);
    if (msg === null) {
      this.drops.signal_malformed++;
      return;
    }
    const sec = this.security;
    let entry = this.table.get(msg.mac);
    if (msg.type === SIG_EXPECT) {
      if (entry === undefined || entry.port === peer) return;
      if (!sec.mayExpect(msg.mac, peer, entry.port)) return; // never a copy of someone else's traffic
      this.express.flush(); // its frames go to both hosts now: JavaScript's path
      entry.alsoTo = peer;
      entry.alsoUntilMs = this.nowMs + EXPECT_DUAL_SEND_MS;
      return;
    }
    if (msg.type !== SIG_MAC_AT) return;
    if (Math.floor(msg.mac / 0x100_0000_0000) & 1) {
      sec.badPeerSource(peer); // a group address lives nowhere
      return;
    }
    if (entry === undefined) {
      if (!sec.mayClaimNew(msg.mac, peer, true)) return;
      entry = this.addEntry(msg.mac, peer);
      if (entry === undefined) return;
      entry.seq = msg.seq;
      entry.settledUntilMs = this.nowMs + MOVE_SETTLE_MS;
      return;
    }
    if (entry.port !== peer && !sec.mayClaimHeld(msg.mac, peer, entry.port, true)) return;
    const newer =
      seqNewer(msg.seq, entry.seq) ||
      (msg.seq === entry.seq && entry.port !== peer && peer.keyHex > (entry.port?.keyHex ?? this.localKeyHex));
    if (!newer) {
      if (entry.port === peer) return;
      this.mobility.staleAnnouncements++;
      // We hold it with a newer sequence: say so again, so the stale claimant's peers converge.
      if (entry.port === null && this.announceMoves) this.announce(msg.mac, entry.seq);
      return;
    }
    entry.seq = msg.seq;
    entry.seenMs = this.nowMs;
    if (entry.port !== peer && this.move(msg.mac, entry, peer, true))
      entry.settledUntilMs = this.nowMs + MOVE_SETTLE_MS;
  }

  /** The coordinator (or the operator) says MAC mac is about to arrive here: peers send its frames here too
   *  meanwhile, and port security lets it appear on the local side. */
  expect(mac: number): void {
    this.express.flush();
    const entry = this.table.get(mac);
    if (entry !== undefined) entry.expectedUntilMs = this.nowMs + EXPECT_DUAL_SEND_MS;
    this.security.expectHere(mac, this.nowMs + EXPECT_DUAL_SEND_MS);
    this.mesh.floodSignal(encodeExpect(mac));
  }

  /** Ages out entries not seen for MAC_AGEING_MS; forgets entries of removed peers; sends due announcements. */
  tick(now: number): void {
    this.nowMs = now;
    this.security.nowMs = now;
    if (this.announcements.length) this.sendDueAnnouncements();
    for (const [mac, entry] of this.table) {
      if (now - entry.seenMs > MAC_AGEING_MS || entry.port?.removed) {
        this.deleteEntry(mac, entry);
      }
    }
    if (now - this.lastPruneMs >= SECURITY_PRUNE_MS) {
      this.lastPruneMs = now;
      this.security.prune();
      this.security.storm.retain((p) => p === LOCAL_STORM_PORT || !(p as Peer).removed);
    }
  }
}

/** The local side's key for storm control. */
const LOCAL_STORM_PORT = { name: LOCAL };
const SECURITY_PRUNE_MS = 10_000;

function stormKind(frame: Buffer, group: boolean): number {
  if (!group) return STORM_UNKNOWN_UNICAST;
  return frame[0] === 0xff && frame[1] === 0xff && frame[2] === 0xff ? STORM_BROADCAST : STORM_MULTICAST;
}

function newEntry(port: Peer | null, now: number): MacEntry {
  return {
    port,
    seenMs: now,
    seq: 0,
    settledUntilMs: 0,
    forwardTo: null,
    forwardUntilMs: 0,
    alsoTo: null,
    alsoUntilMs: 0,
    expectedUntilMs: 0,
    moveTimes: [],
    holdUntilMs: 0,
    rxBytes: 0,
    txBytes: 0,
    exGen: -1,
    exUntil: 0,
  };
}

/** Serial-number comparison (RFC 1982) of 32-bit sequences. */
function seqNewer(a: number, b: number): boolean {
  return a !== b && (a - b) >>> 0 < 0x8000_0000;
}

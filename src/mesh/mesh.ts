// The encrypted mesh: sessions with every peer over one UDP socket (and TCP links where UDP is blocked).
//
// Outbound (send path):  switch → sendFrame → path (direct | relay via introducer) → current keypair → seal →
//                        peer outbox → flush → udp.sendBatch
//                        (flushed at the end of each TAP batch, else on the next turn: one batched send
//                         per peer per batch, so runs of full-size datagrams leave as one UDP GSO send)
// Inbound  (receive):    udp message → classify → index table → open (decrypt in place) → replay → roam →
//                        switch (relayed messages: relay.ts, then the switch as from the ORIGIN peer)
// Handshake messages are queued and processed on their own event-loop turns (processHandshakes), never on
// the receive path; the handshake guard (cookie.ts: mac1, cookies under load, per-source buckets) decides
// what may be queued, and responses to our own initiations are processed first. Session time policy lives in
// timers.ts, path choice and hole punching in paths.ts, introductions in introductions.ts, relaying in
// relay.ts, DNS endpoints in resolver.ts.
import os from 'node:os';
import sodium from 'sodium-native';
import {
  CANDIDATES_MAX,
  DIRECT_TRUST_MS,
  DISPLACED_SESSION_GRACE_MS,
  DISPLACED_SESSIONS_MAX,
  HANDSHAKE_QUEUE_MAX,
  HANDSHAKE_TURN_BUDGET_MS,
  HANDSHAKES_PER_TICK_MAX,
  MSG_DATA,
  MSG_HANDSHAKE_INIT,
  MSG_HANDSHAKE_RESP,
  MSG_COOKIE_REPLY,
  MSG_RELAY_DATA,
  MSG_RELAY_SIGNAL,
  MSG_SIGNAL,
  NOISE_PROLOGUE,
  REJECT_AFTER_MS,
  SITE_ID_BROADCAST,
} from '../constants.ts';
import { ADMIT, HandshakeGuard, SEND_COOKIE } from './cookie.ts';
import { LimitedLog } from '../limited-log.ts';
import { type Express, noExpress } from '../express.ts';
import type { Logger } from '../log.ts';
import { isLink, type UdpSocket } from '../udp/socket.ts';
import { consumeInitiation, createInitiation, type StaticKeys, TimestampClock } from './handshake.ts';
import { IntroStats, Introducer, Introductions } from './introductions.ts';
import { Keypair, OPEN_NOT_AUTHENTIC, OPEN_REPLAYED } from './keypair.ts';
import {
  decodeNatSignal,
  encodePing,
  type Introduction,
  isNatSignal,
  PUNCH,
  SIG_CANDIDATES,
  SIG_INTRODUCE,
  SIG_PING,
  SIG_PONG,
  SIG_PUNCH,
  SIG_WITHDRAW,
} from './natsignal.ts';
import { directUsable, Paths } from './paths.ts';
import { type Endpoint, type PathKind, Peer, type PeerConfig } from './peer.ts';
import { OverlayAddresses } from './overlay.ts';
import { relayReceive } from './relay.ts';
import { type Lookup, Resolver, systemLookup } from './resolver.ts';
import { MeshTimers } from './timers.ts';
import { classify, OFF_PAYLOAD, OFF_TYPE, readReceiver, readRespReceiver, readSender, readSite } from './wire.ts';
import { formatEndpoint } from '../addr.ts';

export interface MeshHandler {
  /** A decrypted frame from a peer (the origin site for relayed frames). OWNED by the handler (a view into
   *  the received datagram). */
  frame(peer: Peer, frame: Buffer): void;
  /** A decrypted signal message (MAC mobility) from a peer (owned). */
  signal(peer: Peer, payload: Buffer): void;
  /** A peer's session came up (first handshake) or went down. */
  peerState?(peer: Peer, up: boolean): void;
  /** After each batch of received datagrams: flush what the frames produced (TAP writes). */
  batchEnd?(): void;
}

export interface MeshOptions {
  /** Tell every peer about the others (introducer role, normally home). */
  introduce?: boolean;
  /** Forward frames between two of our peers that have no direct path (needs introduce). */
  relay?: boolean;
  /** DNS lookups for host-name endpoints (default: getaddrinfo). */
  lookup?: Lookup;
  /** This host's own addresses, offered to introducers as direct-path candidates (default: its interfaces'). */
  localAddresses?: () => string[];
  /** The overlay's own interfaces (the TAP and its bridge): their addresses are never underlay endpoints. */
  overlayInterfaces?: string[];
}

/** Drop counters by reason: plain fields, read at scrape time. */
export class MeshDrops {
  malformed = 0;
  unknown_index = 0;
  auth_failed = 0;
  replay = 0;
  counter_range = 0;
  expired_session = 0;
  no_endpoint = 0;
  staging_full = 0;
  handshake_invalid = 0;
  handshake_unknown_key = 0;
  handshake_replay = 0;
  handshake_queue_full = 0;
  // relay.ts
  relay_refused = 0;
  relay_unknown_site = 0;
  relay_target_down = 0;
  relay_not_introducer = 0;
  relay_unknown_origin = 0;
  // mesh signals (codes 16-31)
  nat_signal_malformed = 0;
  nat_signal_misplaced = 0; // e.g. a PING through a relay, a PUNCH from a configured peer
  overlay_endpoint = 0; // a handshake or roam from an address inside the overlay (the mesh inside itself)
}

export class HandshakeCounts {
  initiated = 0;
  completed = 0; // as initiator
  responded = 0; // as responder
  invalid = 0;
  unknown_key = 0;
  replay = 0;
  timeout = 0;
}

interface Slot {
  peer: Peer;
  keypair: Keypair | null; // null while the index belongs to a pending handshake
}

interface QueuedHandshake {
  msg: Buffer;
  address: string;
  port: number;
}

export const STAGED_FRAMES_MAX = 128;
const UNKNOWN_INITIATORS_MAX = 256;
const UNKNOWN_INITIATOR_TTL_MS = 60_000;
/** A staged message: type (1), site id (3), payload. */
const STAGED_HEADER_BYTES = 4;

export class Mesh {
  readonly peers: Peer[] = [];
  readonly drops = new MeshDrops();
  readonly handshakes = new HandshakeCounts();
  readonly introStats = new IntroStats();
  /** Coarse clock (ms) for the data path, refreshed by tick() and by handshake processing. */
  nowMs: number;
  readonly introduce: boolean;
  relayEnabled: boolean;
  readonly localKeyHex: string;
  readonly paths: Paths;
  readonly introductions: Introductions;
  /** Our introducer role (introduce: true), else null. */
  readonly introducer: Introducer | null;
  readonly resolver: Resolver;
  private readonly byKey = new Map<string, Peer>();
  private readonly byIndex = new Map<number, Slot>();
  private readonly handshakeQueue: QueuedHandshake[] = [];
  /** Responses to our own initiations: processed before any queued initiation. */
  private readonly responseQueue: QueuedHandshake[] = [];
  readonly guard: HandshakeGuard;
  private handshakeScheduled = false;
  private readonly timestamps = new TimestampClock();
  private readonly timers: MeshTimers;
  private handler: MeshHandler | null = null;
  private closed = false;
  private readonly outboxPeers: Peer[] = [];
  private flushScheduled = false;
  private readonly flushBound = () => this.flush();
  /** A batch is open (a UDP wake-up, or a TAP read: holdFlush()) and its end calls flush(): queue() schedules
   *  nothing. An idle round trip then costs no setImmediate hop and no extra event-loop turn. */
  private batchOpen = false;
  private readonly localAddresses: () => string[];
  readonly overlay: OverlayAddresses;
  /** Sources of recent initiations from keys not (yet) in the config: a peer added by a reload is reached at
   *  once instead of at its next retry. Bounded; the address is only a hint (an initiation can be replayed). */
  private readonly unknownInitiators = new Map<string, { endpoint: Endpoint; atMs: number }>();
  private readonly limited: LimitedLog;
  /** The express path (src/express.ts): told which sessions carry data from and to which endpoints. */
  express: Express = noExpress();
  private readonly pathChanged = (): void => this.express.flush();
  private readonly byId = new Map<number, Peer>();

  constructor(
    private readonly keys: StaticKeys,
    readonly socket: UdpSocket,
    peers: PeerConfig[],
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
    options: MeshOptions = {},
  ) {
    this.nowMs = now();
    this.limited = new LimitedLog(log, now);
    this.guard = new HandshakeGuard(keys.publicKey, now);
    this.localKeyHex = keys.publicKey.toString('hex');
    this.introduce = options.introduce ?? false;
    this.relayEnabled = options.relay ?? false;
    this.introducer = this.introduce ? new Introducer(this, this.introStats, log) : null;
    this.introductions = new Introductions(this, this.introStats, log);
    this.paths = new Paths(this, log);
    this.resolver = new Resolver(socket.family, options.lookup ?? systemLookup, log, (peer) =>
      this.timers.sessionWanted(peer),
    );
    this.overlay = new OverlayAddresses(options.overlayInterfaces ?? [], now);
    this.localAddresses = options.localAddresses ?? (() => interfaceAddresses(socket.family, this.overlay.names));
    for (const p of peers) this.addPeer(p);
    this.timers = new MeshTimers(this);
  }

  start(handler: MeshHandler): void {
    this.handler = handler;
    this.socket.start(
      (msg, address, port) => {
        this.batchOpen = true;
        this.receive(msg, address, port);
      },
      () => this.receiveBatchEnd(),
    );
    this.tick();
  }

  // ---- inbound ---------------------------------------------------------------------------------

  private receive(msg: Buffer, address: string, port: number): void {
    const type = classify(msg);
    if (type >= MSG_DATA) {
      const slot = this.byIndex.get(readReceiver(msg));
      const keypair = slot?.keypair;
      if (!slot || !keypair) {
        this.drops.unknown_index++;
        return;
      }
      if (keypair.createdMs + REJECT_AFTER_MS < this.nowMs) {
        this.drops.expired_session++;
        return;
      }
      const n = keypair.open(msg);
      if (n < 0) {
        if (n === OPEN_NOT_AUTHENTIC) this.drops.auth_failed++;
        else if (n === OPEN_REPLAYED) this.drops.replay++;
        else this.drops.counter_range++;
        return;
      }
      // Authentic and fresh: only now may the packet change state.
      const peer = slot.peer;
      if (keypair === peer.next) this.promoteNext(peer);
      const ep = peer.endpoint;
      if (ep === null || ep.port !== port || ep.address !== address) this.roam(peer, address, port);
      const now = this.nowMs;
      peer.lastRecvMs = now;
      peer.lastDirectRecvMs = now;
      if (!peer.up) {
        peer.up = true;
        this.handler?.peerState?.(peer, true);
      }
      if (n === 0) return; // keepalive
      const payload = msg.subarray(OFF_PAYLOAD, OFF_PAYLOAD + n);
      if (type === MSG_RELAY_DATA || type === MSG_RELAY_SIGNAL) {
        relayReceive(this, this.drops, peer, type, readSite(msg), payload);
        return;
      }
      // Current or previous (both sides may each use the session the other promoted last: crossing handshakes);
      // a next session is promoted by its first packet here, never by the express path.
      if (type === MSG_DATA && (keypair === peer.current || keypair === peer.previous)) {
        const at = peer.endpoint; // after roam(): the source, unless it was refused
        if (at !== null && at.port === port && at.address === address) this.express.receiving(peer, keypair, at, now);
      }
      this.deliver(peer, type as typeof MSG_DATA | typeof MSG_SIGNAL, payload, false);
      return;
    }
    if (type === MSG_HANDSHAKE_INIT || type === MSG_HANDSHAKE_RESP) {
      if (this.overlay.contains(address)) {
        this.drops.overlay_endpoint++;
        return;
      }
      if (!this.guard.mac1Valid(msg)) return; // counted by the guard: nothing else was spent on it
      let queue: QueuedHandshake[];
      if (type === MSG_HANDSHAKE_RESP) {
        if (this.pendingSlot(readRespReceiver(msg)) === null) {
          this.drops.unknown_index++;
          return;
        }
        queue = this.responseQueue;
      } else {
        const verdict = this.guard.admit(msg, address, port, this.handshakeQueue.length);
        if (verdict === SEND_COOKIE) this.socket.send(this.guard.cookieReply(msg, address, port), port, address);
        if (verdict !== ADMIT) return;
        queue = this.handshakeQueue;
      }
      if (queue.length >= HANDSHAKE_QUEUE_MAX) {
        this.drops.handshake_queue_full++;
        return;
      }
      queue.push({ msg, address, port });
      if (!this.handshakeScheduled) {
        this.handshakeScheduled = true;
        setImmediate(() => this.processHandshakes());
      }
      return;
    }
    if (type === MSG_COOKIE_REPLY) {
      this.consumeCookieReply(msg, address, port);
      return;
    }
    this.drops.malformed++;
  }

  /** The end of a batch of received datagrams: what it produced leaves now, not on a later turn. */
  private receiveBatchEnd(): void {
    this.handler?.batchEnd?.();
    this.flush();
  }

  /** @internal relay.ts: a message for this site's own side, from `origin` (relayed: through its introducer). */
  deliver(origin: Peer, type: typeof MSG_DATA | typeof MSG_SIGNAL, payload: Buffer, relayed: boolean): void {
    origin.stats.rxPackets++;
    origin.stats.rxBytes += payload.length;
    if (relayed) origin.lastRecvMs = this.nowMs;
    if (type === MSG_DATA) {
      origin.lastDataMs = this.nowMs;
      this.handler!.frame(origin, payload);
    } else if (isNatSignal(payload)) this.natSignal(origin, payload, relayed);
    else this.handler!.signal(origin, payload);
  }

  /** The mesh's own signal messages (codes 16-31): introductions, candidates, punching, probes. */
  private natSignal(peer: Peer, payload: Buffer, relayed: boolean): void {
    const m = decodeNatSignal(payload);
    if (m === null) {
      this.drops.nat_signal_malformed++;
      if (payload[0] === SIG_INTRODUCE) this.introStats.malformed++;
      return;
    }
    if (m.type === SIG_INTRODUCE || m.type === SIG_CANDIDATES)
      m.endpoints = m.endpoints.filter((e) => !this.overlay.contains(e.address));
    switch (m.type) {
      case SIG_INTRODUCE:
        if (relayed) this.introStats.not_introducer++;
        else this.introductions.receive(peer, m);
        return;
      case SIG_WITHDRAW:
        if (relayed) this.introStats.not_introducer++;
        else this.introductions.withdraw(peer, m.publicKey);
        return;
      case SIG_CANDIDATES:
        if (relayed || this.introducer === null || peer.introducedBy !== null) this.introStats.not_introducing++;
        else this.introducer.candidates(peer, m.endpoints, m.known);
        return;
      case SIG_PUNCH:
        if (!relayed || peer.introducedBy === null) this.drops.nat_signal_misplaced++;
        else this.paths.punchRequested(peer);
        return;
      case SIG_PING:
        if (relayed) this.drops.nat_signal_misplaced++;
        else this.sendProbe(peer, SIG_PONG, m.nonce);
        return;
      case SIG_PONG:
        if (relayed) this.drops.nat_signal_misplaced++;
        else this.paths.pong(peer, m.nonce);
        return;
    }
  }

  private roam(peer: Peer, address: string, port: number): void {
    if (this.overlay.contains(address)) {
      this.drops.overlay_endpoint++; // never follow a peer into our own overlay
      return;
    }
    if (peer.endpoint !== null) {
      peer.stats.roams++;
      this.log.info(
        { peer: peer.name, from: this.describe(peer.endpoint), to: this.describe({ address, port }) },
        'peer endpoint moved',
      );
    }
    peer.endpoint = { address, port };
    peer.learned = 'roaming';
    // An introducer tells the others where the site is now (a NAT may have given it a new mapping).
    if (this.introducer !== null && peer.current !== null) this.introducer.announce(peer);
  }

  // ---- outbound --------------------------------------------------------------------------------

  /** Sends a frame (BORROWED: copied by encryption) to a peer on its current path. */
  sendFrame(peer: Peer, frame: Buffer): void {
    if (peer.introducedBy === null) {
      this.sendDirect(peer, MSG_DATA, frame, 0);
      return;
    }
    peer.lastDataMs = this.nowMs;
    if (directUsable(peer, this.nowMs)) {
      this.sendDirect(peer, MSG_DATA, frame, 0);
      return;
    }
    this.paths.wantDirect(peer);
    this.sendRelayed(peer, MSG_RELAY_DATA, frame);
  }

  sendSignal(peer: Peer, payload: Buffer): void {
    if (peer.introducedBy === null || directUsable(peer, this.nowMs)) this.sendDirect(peer, MSG_SIGNAL, payload, 0);
    else this.sendRelayed(peer, MSG_RELAY_SIGNAL, payload);
  }

  /** A group or unknown-unicast frame (BORROWED) to every site; through a relay, one copy goes to the relay
   *  and it fans out. */
  flood(frame: Buffer): void {
    this.floodType(frame, MSG_DATA);
  }

  /** A signal message (BORROWED) to every site, as flood(). */
  floodSignal(payload: Buffer): void {
    this.floodType(payload, MSG_SIGNAL);
  }

  private floodType(payload: Buffer, type: typeof MSG_DATA | typeof MSG_SIGNAL): void {
    const relayType = type === MSG_DATA ? MSG_RELAY_DATA : MSG_RELAY_SIGNAL;
    const peers = this.peers;
    for (let i = 0; i < peers.length; i++) {
      const p = peers[i];
      const via = p.introducedBy;
      if (via !== null) {
        if (via.relays && p.siteId !== 0) continue; // its relay fans out
        if (directUsable(p, this.nowMs)) this.sendDirect(p, type, payload, 0);
      } else if (p.introducer && p.relays) {
        this.sendDirect(p, relayType, payload, SITE_ID_BROADCAST);
      } else {
        this.sendDirect(p, type, payload, 0);
      }
    }
  }

  /** Through the peer's introducer, with the peer's site id; without a relay only a direct path can carry it. */
  private sendRelayed(peer: Peer, type: number, payload: Buffer): void {
    const via = peer.introducedBy!;
    if (!via.relays || peer.siteId === 0) {
      this.sendDirect(peer, type === MSG_RELAY_DATA ? MSG_DATA : MSG_SIGNAL, payload, 0);
      return;
    }
    if (payload.length > 0) {
      peer.stats.txPackets++;
      peer.stats.txBytes += payload.length;
    }
    this.sendDirect(via, type, payload, peer.siteId, false);
  }

  /** On the peer's own session, or staged (a copy) until one exists. */
  private sendDirect(peer: Peer, type: number, payload: Buffer, site: number, count = true): void {
    const keypair = peer.current;
    const ep = peer.endpoint;
    if (ep === null) {
      this.drops.no_endpoint++;
      return;
    }
    if (keypair === null || keypair.createdMs + REJECT_AFTER_MS < this.nowMs) {
      if (peer.staged.length >= STAGED_FRAMES_MAX) {
        this.drops.staging_full++;
        return;
      }
      const staged = Buffer.allocUnsafe(payload.length + STAGED_HEADER_BYTES);
      staged[0] = type;
      staged.writeUIntBE(site, 1, 3);
      payload.copy(staged, STAGED_HEADER_BYTES);
      peer.staged.push(staged);
      this.timers.sessionWanted(peer);
      return;
    }
    if (!this.queue(peer, keypair, type, payload, site)) return;
    if (count && payload.length > 0) {
      peer.stats.txPackets++;
      peer.stats.txBytes += payload.length;
      // An introduced peer's direct path holds while its probes are answered (paths.ts directUsable): the
      // install lasts no longer than that trust, so a path that stops answering goes back to JavaScript (and
      // to the relay) as it would without the express path.
      if (type === MSG_DATA && site === 0 && !this.isTcp(ep))
        this.express.sending(
          peer,
          keypair,
          ep,
          this.nowMs,
          peer.introducedBy === null ? Number.POSITIVE_INFINITY : peer.lastPongMs + DIRECT_TRUST_MS,
        );
    }
  }

  private queue(peer: Peer, keypair: Keypair, type: number, payload: Buffer, site: number): boolean {
    const out = keypair.seal(type, payload, site);
    if (out === null) {
      this.drops.counter_range++;
      this.timers.sessionWanted(peer);
      return false;
    }
    if (peer.outbox.push(out) === 1) this.outboxPeers.push(peer);
    if (!this.flushScheduled && !this.batchOpen) {
      this.flushScheduled = true;
      setImmediate(this.flushBound);
    }
    peer.lastSentMs = this.nowMs;
    return true;
  }

  /** @internal relay.ts: seals on the peer's current session (no staging); false if there is none. */
  sealTo(peer: Peer, type: number, payload: Buffer, site: number): boolean {
    const keypair = peer.current;
    if (keypair === null || peer.endpoint === null || keypair.createdMs + REJECT_AFTER_MS < this.nowMs) return false;
    return this.queue(peer, keypair, type, payload, site);
  }

  /** @internal introductions.ts */
  sendSignalDirect(peer: Peer, payload: Buffer): void {
    this.sendDirect(peer, MSG_SIGNAL, payload, 0, false);
  }

  /** @internal paths.ts: PING/PONG on the direct session only. */
  sendProbe(peer: Peer, type: number, nonce: number): boolean {
    return this.sealTo(peer, MSG_SIGNAL, encodePing(type as typeof SIG_PING, nonce), 0);
  }

  /** @internal paths.ts: asks an introduced peer, through its relay, to punch towards us now. */
  sendPunch(peer: Peer): void {
    const via = peer.introducedBy;
    if (via === null || !via.relays || peer.siteId === 0) return;
    this.sendDirect(via, MSG_RELAY_SIGNAL, PUNCH, peer.siteId, false);
  }

  /** Sends every peer's sealed datagrams, one batch per peer. Called at the end of a TAP batch. */
  /** The caller (the daemon's TAP read batch) calls flush() when its batch ends: sends wait for it. */
  holdFlush(): void {
    this.batchOpen = true;
  }

  flush(): void {
    this.flushScheduled = false;
    this.batchOpen = false;
    const peers = this.outboxPeers;
    for (let i = 0; i < peers.length; i++) {
      const peer = peers[i];
      const box = peer.outbox;
      const ep = peer.endpoint;
      if (ep !== null && !this.closed) this.socket.sendBatch(box, box.length, ep.port, ep.address);
      box.length = 0;
    }
    peers.length = 0;
  }

  /** @internal timers: an authenticated empty data message, on the peer's own session. */
  sendKeepalive(peer: Peer): void {
    if (peer.current) this.sendDirect(peer, MSG_DATA, EMPTY, 0);
  }

  // ---- handshakes (own queue, own event-loop turns) ------------------------------------------

  private processHandshakes(): void {
    this.handshakeScheduled = false;
    if (this.closed) return;
    this.nowMs = this.now();
    // Responses to our own initiations first; then initiations, until the turn's count or time is spent.
    const deadline = performance.now() + HANDSHAKE_TURN_BUDGET_MS;
    for (let n = 0; n < HANDSHAKES_PER_TICK_MAX; n++) {
      const h = this.responseQueue.shift() ?? this.handshakeQueue.shift();
      if (h === undefined) break;
      if (h.msg[OFF_TYPE] === MSG_HANDSHAKE_INIT) this.handleInitiation(h);
      else this.handleResponse(h);
      if (performance.now() > deadline) break;
    }
    if (this.handshakeQueue.length + this.responseQueue.length > 0 && !this.handshakeScheduled) {
      this.handshakeScheduled = true;
      setImmediate(() => this.processHandshakes());
    }
  }

  /** Where an initiation goes: the working endpoint for a rekey; else the endpoint and every candidate. */
  private initiationTargets(peer: Peer): Endpoint[] {
    const ep = peer.endpoint;
    if (peer.current !== null && ep !== null) return [ep];
    const out: Endpoint[] = ep !== null ? [ep] : [];
    for (const c of peer.candidates) {
      if (out.length >= CANDIDATES_MAX) break;
      if (!out.some((e) => e.address === c.address && e.port === c.port)) out.push(c);
    }
    return out;
  }

  /** @internal timers, paths: starts a handshake with a peer, to `targets` (default: initiationTargets). */
  initiate(peer: Peer, targets?: Endpoint[]): void {
    if (this.closed) return;
    const to = targets ?? this.initiationTargets(peer);
    if (to.length === 0) return;
    this.abandonPending(peer);
    const index = this.newIndex();
    const { msg, pending } = createInitiation(
      this.keys,
      peer.publicKey,
      index,
      this.nowMs,
      this.timestamps.next(Date.now()),
    );
    peer.pending = pending;
    this.byIndex.set(index, { peer, keypair: null });
    this.handshakes.initiated++;
    this.guard.stamp(msg, this.guard.remote(peer, peer.publicKey));
    // The same initiation to every target: whichever answers first completes it (the socket owns each copy).
    for (let i = 0; i < to.length; i++) this.socket.send(i === 0 ? msg : Buffer.from(msg), to[i].port, to[i].address);
    if (!isLink(to[0].address) && peer.udpTryingSinceMs === 0) peer.udpTryingSinceMs = this.nowMs;
  }

  /** The slot of a handshake we have pending under `index`, or null. */
  private pendingSlot(index: number): Slot | null {
    const slot = this.byIndex.get(index);
    if (!slot || slot.keypair !== null || slot.peer.pending?.localIndex !== index) return null;
    return slot;
  }

  /** A cookie reply: the peer is under load; resend our pending initiation at once, with mac2, to where the
   *  reply came from if that is one of the peer's addresses (else to its endpoint). */
  private consumeCookieReply(msg: Buffer, address: string, port: number): void {
    const slot = this.pendingSlot(readReceiver(msg));
    const r = slot ? this.guard.remote(slot.peer, slot.peer.publicKey) : null;
    if (!slot || !r || !this.guard.consumeReply(msg, r)) {
      if (!slot) this.guard.stats.cookie_replies_invalid++;
      return;
    }
    const peer = slot.peer;
    const known = [peer.endpoint, ...peer.candidates].find(
      (e) => e !== null && e.address === address && e.port === port,
    );
    const to = known ?? peer.endpoint;
    if (r.lastInit === null || !to || this.closed) return;
    const again = Buffer.from(r.lastInit);
    this.guard.stamp(again, r);
    this.socket.send(again, to.port, to.address);
  }

  /** @internal timers */
  abandonPending(peer: Peer): void {
    if (!peer.pending) return;
    this.byIndex.delete(peer.pending.localIndex);
    peer.pending.abandon();
    peer.pending = null;
  }

  /** @internal timers: a handshake got no answer. */
  handshakeTimedOut(peer: Peer): void {
    this.resolver.handshakeFailed(peer, this.nowMs);
  }

  private handleInitiation(h: QueuedHandshake): void {
    const init = consumeInitiation(this.keys, h.msg);
    if (!init) {
      this.handshakes.invalid++;
      this.drops.handshake_invalid++;
      // mac1 was right, so the sender knows our public key: most likely a site on another wire version.
      this.limited.warn(
        'handshake_invalid',
        { from: this.describe({ address: h.address, port: h.port }), prologue: NOISE_PROLOGUE.toString() },
        'a handshake initiation for this key could not be read: the sender runs another homewire wire version ' +
          '(run the same homewire on every site) or the message was forged or damaged',
      );
      return;
    }
    const peer = this.byKey.get(init.remoteStatic.toString('hex'));
    if (!peer) {
      init.reject();
      this.handshakes.unknown_key++;
      this.drops.handshake_unknown_key++;
      this.rememberUnknown(init.remoteStatic.toString('hex'), { address: h.address, port: h.port });
      this.log.debug(
        { from: this.describe({ address: h.address, port: h.port }), key: init.remoteStatic.toString('base64') },
        'handshake from a key not in the config',
      );
      return;
    }
    if (peer.lastTimestamp && Buffer.compare(init.timestamp, peer.lastTimestamp) <= 0) {
      init.reject();
      this.handshakes.replay++;
      this.drops.handshake_replay++;
      return;
    }
    peer.lastTimestamp = init.timestamp;
    const index = this.newIndex();
    const { msg, keys } = init.respond(index);
    const keypair = new Keypair(keys.send, keys.recv, index, init.remoteIndex, false, this.nowMs);
    if (peer.next) this.displace(peer, peer.next); // the peer may have completed it and be sending on it
    peer.next = keypair;
    this.byIndex.set(index, { peer, keypair });
    // The endpoint does not move here: an initiation can be replayed (e.g. after a restart, when no
    // timestamp is remembered). It moves with the first data packet on the new session, which only the
    // holder of the initiator's key can send.
    peer.lastHandshakeMs = this.nowMs;
    this.handshakes.responded++;
    this.guard.stamp(msg, this.guard.remote(peer, peer.publicKey));
    this.socket.send(msg, h.port, h.address);
  }

  private rememberUnknown(hex: string, endpoint: Endpoint): void {
    const m = this.unknownInitiators;
    m.delete(hex);
    if (m.size >= UNKNOWN_INITIATORS_MAX) m.delete(m.keys().next().value!);
    m.set(hex, { endpoint, atMs: this.nowMs });
  }

  private handleResponse(h: QueuedHandshake): void {
    const answered = readRespReceiver(h.msg);
    const slot = this.pendingSlot(answered);
    const pending = slot?.peer.pending;
    if (!slot || !pending) {
      this.drops.unknown_index++;
      return;
    }
    const peer = slot.peer;
    const keys = pending.consumeResponse(h.msg);
    if (!keys) {
      // A forged or damaged response: the handshake stays pending for the real one.
      this.handshakes.invalid++;
      this.drops.handshake_invalid++;
      return;
    }
    peer.pending = null;
    const keypair = new Keypair(keys.send, keys.recv, pending.localIndex, readSender(h.msg), true, this.nowMs);
    slot.keypair = keypair;
    const fresh = this.noSession(peer);
    if (peer.previous) this.displace(peer, peer.previous);
    peer.previous = peer.current;
    peer.current = keypair;
    if (peer.endpoint === null || peer.endpoint.address !== h.address || peer.endpoint.port !== h.port) {
      this.roam(peer, h.address, h.port);
    }
    peer.rttMs = this.now() - pending.sentMs;
    peer.lastHandshakeMs = this.nowMs;
    peer.lastDirectRecvMs = this.nowMs;
    this.handshakes.completed++;
    this.timers.handshakeComplete(peer);
    this.sessionEstablished(peer, fresh);
    // Confirm the session to the responder: staged frames, or a keepalive.
    if (!this.flushStaged(peer)) this.sendKeepalive(peer);
  }

  private promoteNext(peer: Peer): void {
    const fresh = this.noSession(peer);
    if (peer.previous) this.displace(peer, peer.previous);
    peer.previous = peer.current;
    peer.current = peer.next;
    peer.next = null;
    this.timers.handshakeComplete(peer);
    this.sessionEstablished(peer, fresh);
    this.flushStaged(peer);
  }

  private noSession(peer: Peer): boolean {
    return peer.current === null || peer.current.createdMs + REJECT_AFTER_MS < this.nowMs;
  }

  /** A session just came up (fresh: there was none before). */
  private sessionEstablished(peer: Peer, fresh: boolean): void {
    this.paths.sessionUp(peer);
    // Every new session with an introducer (it may have restarted and know nothing of us): our addresses and
    // how many sites we know from it, so it introduces what we miss.
    if (peer.introducer) this.introductions.introducerUp(peer);
    if (fresh && this.introducer !== null && peer.introducedBy === null) this.introducer.announce(peer);
  }

  private flushStaged(peer: Peer): boolean {
    if (peer.staged.length === 0) return false;
    const staged = peer.staged;
    peer.staged = [];
    for (const s of staged) this.sendDirect(peer, s[0], s.subarray(STAGED_HEADER_BYTES), s.readUIntBE(1, 3));
    return true;
  }

  /** A session that leaves previous or next: still accepted for a grace (crossing handshakes), then retired by
   *  the tick (MeshTimers). The oldest goes at once beyond DISPLACED_SESSIONS_MAX. */
  private displace(peer: Peer, keypair: Keypair): void {
    const d = peer.displaced;
    if (d.length >= DISPLACED_SESSIONS_MAX) this.retire(d.shift()!.keypair);
    d.push({ keypair, untilMs: this.nowMs + DISPLACED_SESSION_GRACE_MS });
  }

  /** @internal Removes a keypair from the index table and wipes it. */
  retire(keypair: Keypair): void {
    this.express.flush();
    this.byIndex.delete(keypair.localIndex);
    keypair.wipe();
  }

  private newIndex(): number {
    for (;;) {
      const index = sodium.randombytes_random();
      if (!this.byIndex.has(index)) return index;
    }
  }

  // ---- peers and lifecycle -----------------------------------------------------------------------

  /** A peer from the config. An introduced peer with the same key or name makes way for it. */
  addPeer(cfg: PeerConfig): Peer {
    const hex = cfg.publicKey.toString('hex');
    for (const p of [...this.peers]) {
      if (p.introducedBy !== null && (p.keyHex === hex || p.name === cfg.name)) this.introductions.remove(p);
    }
    const peer = new Peer(cfg.name, cfg.publicKey, cfg.endpoint);
    peer.learned = cfg.endpoint ? 'config' : null;
    this.configure(peer, cfg);
    const seen = this.unknownInitiators.get(hex);
    if (seen !== undefined) {
      this.unknownInitiators.delete(hex);
      if (!cfg.endpoint && !cfg.endpointHost && this.nowMs - seen.atMs < UNKNOWN_INITIATOR_TTL_MS) {
        peer.endpoint = seen.endpoint; // it has been knocking: answer now (the next tick initiates)
        peer.learned = 'roaming';
      }
    }
    this.track(peer);
    this.introducer?.assign(peer);
    return peer;
  }

  /** Applies a peer's config beyond its key (also on reload). */
  configure(peer: Peer, cfg: PeerConfig): void {
    peer.introducer = cfg.introducer ?? false;
    peer.endpointHost = cfg.endpointHost ?? null;
    peer.endpointTcp = cfg.endpointTcp ?? null;
    if (cfg.endpoint) peer.candidates = [];
  }

  /** @internal introductions.ts: a site an introducer named. */
  addIntroduced(from: Peer, intro: Introduction): Peer {
    const peer = new Peer(intro.name, intro.publicKey, undefined);
    peer.introducedBy = from;
    peer.candidates = intro.endpoints;
    peer.introFlags = intro.flags;
    peer.learned = 'introduction';
    this.track(peer);
    return peer;
  }

  private track(peer: Peer): void {
    peer.onPathChange = this.pathChanged;
    this.peers.push(peer);
    this.byKey.set(peer.keyHex, peer);
    this.byId.set(peer.id, peer);
  }

  removePeer(peer: Peer): void {
    if (peer.removed) return;
    peer.removed = true;
    this.abandonPending(peer);
    for (const kp of [peer.current, peer.previous, peer.next]) if (kp) this.retire(kp);
    for (const d of peer.displaced) this.retire(d.keypair);
    peer.current = peer.previous = peer.next = null;
    peer.displaced = [];
    peer.staged = [];
    this.byKey.delete(peer.keyHex);
    this.byId.delete(peer.id);
    const i = this.peers.indexOf(peer);
    if (i >= 0) this.peers.splice(i, 1);
    // The sites it introduced go with it; an introducer withdraws a removed peer everywhere.
    for (const p of [...this.peers]) if (p.introducedBy === peer) this.introductions.remove(p);
    if (this.introducer !== null && peer.introducedBy === null && !this.closed) this.introducer.release(peer);
  }

  peerById(id: number): Peer | undefined {
    return this.byId.get(id);
  }

  peerByName(name: string): Peer | undefined {
    return this.peers.find((p) => p.name === name);
  }

  peerByKeyHex(hex: string): Peer | undefined {
    return this.byKey.get(hex);
  }

  /** @internal relay.ts */
  siteById(id: number): Peer | undefined {
    return this.introducer?.bySite.get(id);
  }

  /** The path frames to this peer take now. */
  pathOf(peer: Peer): PathKind {
    return this.paths.pathOf(peer);
  }

  isTcp(ep: Endpoint | null): boolean {
    return ep !== null && isLink(ep.address);
  }

  /** @internal paths.ts */
  linkOpen(address: string): boolean {
    return this.socket.linkOpen?.(address) ?? false;
  }

  /** @internal paths.ts */
  dialTcp(peer: Peer): string | null {
    const to = peer.tcpCandidates[0];
    if (to === undefined || this.socket.dial === undefined) return null;
    return this.socket.dial(to.address, to.port);
  }

  /** @internal paths.ts */
  udpSendErrors(): number {
    return this.socket.sendErrors ?? 0;
  }

  /** An endpoint as people read it (TCP links: "tcp 192.0.2.1:443"). */
  describe(ep: Endpoint): string {
    if (isLink(ep.address)) return this.socket.describe?.(ep.address, ep.port) ?? `${ep.address}:${ep.port}`;
    return formatEndpoint(ep.address, ep.port);
  }

  /** @internal introductions.ts: this host's own addresses with the listen port. */
  localCandidates(): Endpoint[] {
    const port = this.socket.port;
    const any = this.socket.address === '0.0.0.0' || this.socket.address === '::';
    const list = any ? this.localAddresses() : [this.socket.address];
    return list.slice(0, CANDIDATES_MAX).map((address) => ({ address, port }));
  }

  /** Drives all time policy; called every TICK_MS. */
  tick(): void {
    if (this.closed) return;
    this.nowMs = this.now();
    this.timers.tick(this.nowMs);
    this.resolver.tick(this.peers, this.nowMs);
    this.introducer?.tick();
    this.introductions.tick();
    this.paths.tick();
    this.guard.tick(this.nowMs);
    this.guard.setKnownEndpoints(
      this.peers.flatMap((p) => (p.endpoint ? [p.endpoint, ...p.candidates] : p.candidates)),
    );
  }

  /** @internal for timers */
  emitPeerState(peer: Peer, up: boolean): void {
    this.handler?.peerState?.(peer, up);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.resolver.close();
    for (const peer of [...this.peers]) this.removePeer(peer);
    this.handshakeQueue.length = 0;
    this.responseQueue.length = 0;
    await this.socket.close();
  }
}

const EMPTY = Buffer.alloc(0);

/** This host's addresses of one family, for direct-path candidates: no loopback, no link-local, none of the
 *  overlay's own interfaces. */
function interfaceAddresses(family: 4 | 6, exclude: readonly string[]): string[] {
  const out: string[] = [];
  for (const [name, list] of Object.entries(os.networkInterfaces())) {
    if (exclude.includes(name)) continue;
    for (const a of list ?? []) {
      if (a.internal || (family === 4 ? a.family !== 'IPv4' : a.family !== 'IPv6')) continue;
      if (a.address.startsWith('169.254.') || a.address.toLowerCase().startsWith('fe80:')) continue;
      out.push(a.address);
    }
  }
  return out;
}

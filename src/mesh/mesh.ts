// The encrypted mesh: sessions with every configured peer over one UDP socket.
//
// Outbound (send path):  switch → sendFrame → current keypair → seal → peer outbox → flush → udp.sendBatch
//                        (flushed at the end of each TAP batch, else on the next turn: one batched send
//                         per peer per batch, so runs of full-size datagrams leave as one UDP GSO send)
// Inbound  (receive):    udp message → classify → index table → open (decrypt in place) → replay → roam → switch
// Handshake messages are queued and processed on their own event-loop turns (processHandshakes), never on
// the receive path; the handshake guard (cookie.ts: mac1, cookies under load, per-source buckets) decides
// what may be queued, and responses to our own initiations are processed first. All time policy lives in
// timers.ts; the data path only records times.
import sodium from 'sodium-native';
import {
  HANDSHAKE_QUEUE_MAX,
  HANDSHAKE_TURN_BUDGET_MS,
  HANDSHAKES_PER_TICK_MAX,
  MSG_SIGNAL,
  MSG_DATA,
  MSG_HANDSHAKE_INIT,
  MSG_HANDSHAKE_RESP,
  MSG_COOKIE_REPLY,
  REJECT_AFTER_MS,
} from '../constants.ts';
import { ADMIT, HandshakeGuard, SEND_COOKIE } from './cookie.ts';
import type { Logger } from '../log.ts';
import type { UdpSocket } from '../udp/socket.ts';
import { consumeInitiation, createInitiation, type StaticKeys, TimestampClock } from './handshake.ts';
import { Keypair, OPEN_NOT_AUTHENTIC, OPEN_REPLAYED } from './keypair.ts';
import { Peer, type PeerConfig } from './peer.ts';
import { MeshTimers } from './timers.ts';
import { classify, OFF_PAYLOAD, OFF_TYPE, readReceiver, readRespReceiver, readSender } from './wire.ts';
import { formatEndpoint } from '../addr.ts';

export interface MeshHandler {
  /** A decrypted frame from a peer. OWNED by the handler (a view into the received datagram). */
  frame(peer: Peer, frame: Buffer): void;
  /** A decrypted signal message (MAC mobility, mesh signalling) from a peer (owned). */
  signal(peer: Peer, payload: Buffer): void;
  /** A peer's session came up (first handshake) or went down. */
  peerState?(peer: Peer, up: boolean): void;
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

export class Mesh {
  readonly peers: Peer[] = [];
  readonly drops = new MeshDrops();
  readonly handshakes = new HandshakeCounts();
  /** Coarse clock (ms) for the data path, refreshed by tick() and by handshake processing. */
  nowMs: number;
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

  constructor(
    private readonly keys: StaticKeys,
    readonly socket: UdpSocket,
    peers: PeerConfig[],
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {
    this.nowMs = now();
    this.guard = new HandshakeGuard(keys.publicKey, now);
    for (const p of peers) this.addPeer(p);
    this.timers = new MeshTimers(this);
  }

  start(handler: MeshHandler): void {
    this.handler = handler;
    this.socket.start((msg, address, port) => this.receive(msg, address, port));
    this.tick();
  }

  // ---- inbound ---------------------------------------------------------------------------------

  private receive(msg: Buffer, address: string, port: number): void {
    const type = classify(msg);
    if (type === MSG_DATA || type === MSG_SIGNAL) {
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
      peer.lastRecvMs = this.nowMs;
      if (!peer.up) {
        peer.up = true;
        this.handler?.peerState?.(peer, true);
      }
      if (n === 0) return; // keepalive
      peer.stats.rxPackets++;
      peer.stats.rxBytes += n;
      const payload = msg.subarray(OFF_PAYLOAD, OFF_PAYLOAD + n);
      if (type === MSG_DATA) this.handler!.frame(peer, payload);
      else this.handler!.signal(peer, payload);
      return;
    }
    if (type === MSG_HANDSHAKE_INIT || type === MSG_HANDSHAKE_RESP) {
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
      this.consumeCookieReply(msg);
      return;
    }
    this.drops.malformed++;
  }

  private roam(peer: Peer, address: string, port: number): void {
    if (peer.endpoint !== null) {
      peer.stats.roams++;
      this.log.info(
        {
          peer: peer.name,
          from: formatEndpoint(peer.endpoint.address, peer.endpoint.port),
          to: formatEndpoint(address, port),
        },
        'peer endpoint moved',
      );
    }
    peer.endpoint = { address, port };
  }

  // ---- outbound --------------------------------------------------------------------------------

  /** Sends a frame (BORROWED: copied by encryption) to a peer, or stages a copy until a session exists. */
  sendFrame(peer: Peer, frame: Buffer): void {
    this.send(peer, MSG_DATA, frame);
  }

  sendSignal(peer: Peer, payload: Buffer): void {
    this.send(peer, MSG_SIGNAL, payload);
  }

  private send(peer: Peer, type: number, payload: Buffer): void {
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
      const staged = Buffer.allocUnsafe(payload.length + 1);
      staged[0] = type;
      payload.copy(staged, 1);
      peer.staged.push(staged);
      this.timers.sessionWanted(peer);
      return;
    }
    const out = keypair.seal(type, payload);
    if (out === null) {
      this.drops.counter_range++;
      this.timers.sessionWanted(peer);
      return;
    }
    if (peer.outbox.push(out) === 1) this.outboxPeers.push(peer);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushBound);
    }
    peer.lastSentMs = this.nowMs;
    if (payload.length > 0) {
      peer.stats.txPackets++;
      peer.stats.txBytes += payload.length;
    }
  }

  /** Sends every peer's sealed datagrams, one batch per peer. Called at the end of a TAP batch. */
  flush(): void {
    this.flushScheduled = false;
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

  /** @internal timers: an authenticated empty data message. */
  sendKeepalive(peer: Peer): void {
    if (peer.current) this.send(peer, MSG_DATA, EMPTY);
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

  /** @internal timers: starts a handshake with a peer that has an endpoint. */
  initiate(peer: Peer): void {
    const ep = peer.endpoint;
    if (!ep || this.closed) return;
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
    this.socket.send(msg, ep.port, ep.address);
  }

  /** The slot of a handshake we have pending under `index`, or null. */
  private pendingSlot(index: number): Slot | null {
    const slot = this.byIndex.get(index);
    if (!slot || slot.keypair !== null || slot.peer.pending?.localIndex !== index) return null;
    return slot;
  }

  /** A cookie reply: the peer is under load; resend our pending initiation at once, with mac2. */
  private consumeCookieReply(msg: Buffer): void {
    const slot = this.pendingSlot(readReceiver(msg));
    const r = slot ? this.guard.remote(slot.peer, slot.peer.publicKey) : null;
    if (!slot || !r || !this.guard.consumeReply(msg, r)) {
      if (!slot) this.guard.stats.cookie_replies_invalid++;
      return;
    }
    const ep = slot.peer.endpoint;
    if (r.lastInit === null || ep === null || this.closed) return;
    const again = Buffer.from(r.lastInit);
    this.guard.stamp(again, r);
    this.socket.send(again, ep.port, ep.address);
  }

  /** @internal timers */
  abandonPending(peer: Peer): void {
    if (!peer.pending) return;
    this.byIndex.delete(peer.pending.localIndex);
    peer.pending.abandon();
    peer.pending = null;
  }

  private handleInitiation(h: QueuedHandshake): void {
    const init = consumeInitiation(this.keys, h.msg);
    if (!init) {
      this.handshakes.invalid++;
      this.drops.handshake_invalid++;
      return;
    }
    const peer = this.byKey.get(init.remoteStatic.toString('hex'));
    if (!peer) {
      init.reject();
      this.handshakes.unknown_key++;
      this.drops.handshake_unknown_key++;
      this.log.debug(
        { from: formatEndpoint(h.address, h.port), key: init.remoteStatic.toString('base64') },
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
    if (peer.next) this.retire(peer.next);
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
    if (peer.previous) this.retire(peer.previous);
    peer.previous = peer.current;
    peer.current = keypair;
    if (peer.endpoint === null || peer.endpoint.address !== h.address || peer.endpoint.port !== h.port) {
      this.roam(peer, h.address, h.port);
    }
    peer.rttMs = this.now() - pending.sentMs;
    peer.lastHandshakeMs = this.nowMs;
    this.handshakes.completed++;
    this.timers.handshakeComplete(peer);
    // Confirm the session to the responder: staged frames, or a keepalive.
    if (!this.flushStaged(peer)) this.sendKeepalive(peer);
  }

  private promoteNext(peer: Peer): void {
    if (peer.previous) this.retire(peer.previous);
    peer.previous = peer.current;
    peer.current = peer.next;
    peer.next = null;
    this.timers.handshakeComplete(peer);
    this.flushStaged(peer);
  }

  private flushStaged(peer: Peer): boolean {
    if (peer.staged.length === 0) return false;
    const staged = peer.staged;
    peer.staged = [];
    for (const s of staged) this.send(peer, s[0], s.subarray(1));
    return true;
  }

  /** @internal Removes a keypair from the index table and wipes it. */
  retire(keypair: Keypair): void {
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

  addPeer(cfg: PeerConfig): Peer {
    const peer = new Peer(cfg.name, cfg.publicKey, cfg.endpoint);
    this.peers.push(peer);
    this.byKey.set(peer.keyHex, peer);
    return peer;
  }

  removePeer(peer: Peer): void {
    this.abandonPending(peer);
    for (const kp of [peer.current, peer.previous, peer.next]) if (kp) this.retire(kp);
    peer.current = peer.previous = peer.next = null;
    peer.staged = [];
    this.byKey.delete(peer.keyHex);
    const i = this.peers.indexOf(peer);
    if (i >= 0) this.peers.splice(i, 1);
  }

  peerByName(name: string): Peer | undefined {
    return this.peers.find((p) => p.name === name);
  }

  /** Drives all session time policy; called every TICK_MS. */
  tick(): void {
    if (this.closed) return;
    this.nowMs = this.now();
    this.timers.tick(this.nowMs);
    this.guard.tick(this.nowMs);
    this.guard.setKnownEndpoints(this.peers.flatMap((p) => (p.endpoint ? [p.endpoint] : [])));
  }

  /** @internal for timers */
  emitPeerState(peer: Peer, up: boolean): void {
    this.handler?.peerState?.(peer, up);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const peer of [...this.peers]) this.removePeer(peer);
    this.handshakeQueue.length = 0;
    this.responseQueue.length = 0;
    await this.socket.close();
  }
}

const EMPTY = Buffer.alloc(0);

// Path choice for every peer: direct, through the relay, or over TCP; hole punching; TCP fallback.
//
// Introduced peers (mesh/introductions.ts) are reached through their introducer until a direct path is known
// to work. "Known to work" means a PONG (or a completed handshake) on the direct session within
// DIRECT_TRUST_MS: a path that stops answering falls back to the relay within that time (the data path checks
// it per frame, no timer needed), and probing goes on, so traffic moves back as soon as it answers again.
// Probes (PING, answered by PONG) go every PING_INTERVAL_MS while frames flow, every 10 intervals otherwise.
//
// Hole punching: when a site has frames for an introduced peer without a working direct path, it asks the
// peer, through the relay, to punch (PUNCH) and at the same moment sends handshake initiations to every
// endpoint the introducer named (the address it sees the peer at, and the peer's own addresses). The peer
// answers a PUNCH by initiating towards us at once, so both NATs see outgoing packets to the other side at
// nearly the same time, which is what lets endpoint-independent mappings through. While relayed, attempts
// go on with backoff (PUNCH_BACKOFF_MS). A site whose own path to its introducer is TCP, or a peer the
// introducer reaches over TCP only, is not punched (there is no UDP to punch).
//
// TCP fallback (configured peers with endpoint_tcp): no UDP answer within TCP_FALLBACK_AFTER_MS (or a UDP send
// error) dials the TCP endpoint and sends the next initiation over UDP and TCP at once; UDP is tried again
// every TCP_RETRY_UDP_MS and takes over (roaming) as soon as it answers.
import {
  CANDIDATES_MAX,
  DIRECT_IDLE_MS,
  DIRECT_TRUST_MS,
  PING_INTERVAL_MS,
  PUNCH_ANSWER_MIN_MS,
  PUNCH_BACKOFF_MS,
  REKEY_TIMEOUT_MS,
  TCP_FALLBACK_AFTER_MS,
  TCP_RETRY_UDP_MS,
} from '../constants.ts';
import type { Logger } from '../log.ts';
import { INTRO_FLAG_NO_UDP, SIG_PING } from './natsignal.ts';
import type { Endpoint, PathKind, Peer } from './peer.ts';

/** Frames flowed to or from the peer this recently: probe often, trust probes only this fresh. */
const ACTIVE_MS = 2_000;
const IDLE_PING_INTERVAL_MS = 10 * PING_INTERVAL_MS;

/** Hole punching attempts by result (homewire_punch_attempts_total{result}). */
export class PunchStats {
  started = 0; // we asked a peer to punch and sent initiations
  answered = 0; // a peer asked us and we initiated at once
  direct = 0; // a direct session came up while an attempt was running
  failed = 0; // no direct session within REKEY_TIMEOUT_MS of an attempt
}

/** What path policy needs from the mesh. */
export interface PathHost {
  readonly peers: readonly Peer[];
  readonly nowMs: number;
  isTcp(ep: Endpoint | null): boolean;
  /** Is this TCP link (a socket address "tcp#N") still open? */
  linkOpen(address: string): boolean;
  /** Handshake initiation to these endpoints (default: the peer's endpoint and candidates). */
  initiate(peer: Peer, targets?: Endpoint[]): void;
  /** PUNCH to an introduced peer through its introducer. */
  sendPunch(peer: Peer): void;
  /** PING or PONG on the direct session; false if there is none. */
  sendProbe(peer: Peer, type: number, nonce: number): boolean;
  /** Dials the peer's endpoint_tcp; the socket address of the new link, or null. */
  dialTcp(peer: Peer): string | null;
  /** UDP send errors so far (a firewall that refuses UDP locally makes sends fail at once). */
  udpSendErrors(): number;
}

/** Is the direct session to this peer trusted now? (Configured peers: whenever there is a session.) */
export function directUsable(peer: Peer, now: number): boolean {
  if (peer.current === null || peer.endpoint === null) return false;
  if (peer.introducedBy === null) return true;
  const trust = now - peer.lastDataMs < ACTIVE_MS ? DIRECT_TRUST_MS : IDLE_PING_INTERVAL_MS + DIRECT_TRUST_MS;
  return now - peer.lastPongMs <= trust;
}

/** Where a punch goes: the endpoint it last answered from and every endpoint the introducer named (a NAT may
 *  have given the peer a new mapping since, which the introducer re-announces). */
function punchTargets(peer: Peer): Endpoint[] {
  const out: Endpoint[] = peer.endpoint !== null ? [peer.endpoint] : [];
  for (const c of peer.candidates) {
    if (out.length >= CANDIDATES_MAX) break;
    if (!out.some((e) => e.address === c.address && e.port === c.port)) out.push(c);
  }
  return out;
}

export class Paths {
  readonly punches = new PunchStats();
  private udpErrorsSeen = 0;

  constructor(
    private readonly host: PathHost,
    private readonly log: Logger,
  ) {}

  /** The path frames to this peer take now. */
  pathOf(peer: Peer): PathKind {
    const now = this.host.nowMs;
    if (peer.introducedBy === null) {
      if (peer.current === null || peer.endpoint === null) return 'none';
      return this.host.isTcp(peer.endpoint) ? 'tcp' : 'direct';
    }
    if (directUsable(peer, now)) return 'direct';
    const via = peer.introducedBy;
    return via.current !== null && via.relays ? 'relay' : 'none';
  }

  /** Data path: a unicast frame for an introduced peer without a trusted direct path. Cheap unless acting. */
  wantDirect(peer: Peer): void {
    const now = this.host.nowMs;
    if (peer.current !== null && peer.endpoint !== null && now - peer.pingSentMs >= PING_INTERVAL_MS) {
      this.ping(peer, now);
    }
    if (now >= peer.punchNextMs && peer.pending === null) this.punch(peer, now);
  }

  /** A session with the peer was established (either side): both directions worked just now. */
  sessionUp(peer: Peer): void {
    const now = this.host.nowMs;
    peer.lastPongMs = now;
    if (peer.introducedBy !== null) {
      if (peer.punchStartedMs !== 0) {
        this.punches.direct++;
        peer.punchStartedMs = 0;
      }
      peer.punchAttempt = 0;
      peer.punchNextMs = 0;
    } else if (!this.host.isTcp(peer.endpoint)) {
      peer.udpTryingSinceMs = 0;
    }
  }

  /** The peer (through the relay) asks us to punch: initiate towards it now. */
  punchRequested(peer: Peer): void {
    const now = this.host.nowMs;
    if (now - peer.punchAnsweredMs < PUNCH_ANSWER_MIN_MS || !this.canPunch(peer)) return;
    peer.punchAnsweredMs = now;
    peer.lastDataMs = now;
    this.punches.answered++;
    this.host.initiate(peer, punchTargets(peer));
  }

  pong(peer: Peer, nonce: number): void {
    if (nonce !== peer.pingNonce) return;
    peer.lastPongMs = this.host.nowMs;
  }

  private ping(peer: Peer, now: number): void {
    peer.pingNonce = (Math.random() * 0x1_0000_0000) >>> 0;
    peer.pingSentMs = now;
    this.host.sendProbe(peer, SIG_PING, peer.pingNonce);
  }

  private canPunch(peer: Peer): boolean {
    const via = peer.introducedBy;
    if (via === null || this.host.isTcp(via.endpoint)) return false;
    if ((peer.introFlags & INTRO_FLAG_NO_UDP) !== 0) return false;
    return peer.candidates.length > 0 || (peer.endpoint !== null && !this.host.isTcp(peer.endpoint));
  }

  private punch(peer: Peer, now: number): void {
    const step = PUNCH_BACKOFF_MS[Math.min(peer.punchAttempt + 1, PUNCH_BACKOFF_MS.length - 1)];
    peer.punchNextMs = now + step;
    if (!this.canPunch(peer)) return;
    peer.punchAttempt++;
    peer.punchStartedMs = now;
    this.punches.started++;
    this.host.sendPunch(peer);
    this.host.initiate(peer, punchTargets(peer));
  }

  tick(): void {
    const now = this.host.nowMs;
    const errors = this.host.udpSendErrors();
    const udpFailing = errors !== this.udpErrorsSeen;
    this.udpErrorsSeen = errors;
    for (const peer of this.host.peers) {
      if (peer.introducedBy !== null) this.tickIntroduced(peer, now);
      else if (peer.endpointTcp !== null) this.tickFallback(peer, now, udpFailing);
      const path = this.pathOf(peer);
      if (path !== peer.path) {
        const from = peer.path;
        peer.path = path;
        if (from !== 'none' || path !== 'none') {
          this.log.info({ peer: peer.name, from, to: path, via: peer.introducedBy?.name }, 'path changed');
        }
      }
    }
  }

  private tickIntroduced(peer: Peer, now: number): void {
    if (peer.punchStartedMs !== 0 && now - peer.punchStartedMs >= REKEY_TIMEOUT_MS) {
      this.punches.failed++;
      peer.punchStartedMs = 0;
    }
    const active = now - peer.lastDataMs < ACTIVE_MS;
    if (peer.current !== null && peer.endpoint !== null) {
      const interval = active ? PING_INTERVAL_MS : IDLE_PING_INTERVAL_MS;
      if (now - peer.pingSentMs >= interval) this.ping(peer, now);
    }
    // While frames want a direct path that is not there, keep punching with backoff.
    const wanted = now - peer.lastDataMs < DIRECT_IDLE_MS;
    if (wanted && !directUsable(peer, now) && now >= peer.punchNextMs && peer.pending === null) this.punch(peer, now);
  }

  private tickFallback(peer: Peer, now: number, udpFailing: boolean): void {
    const ep = peer.endpoint;
    if (ep !== null && this.host.isTcp(ep)) {
      if (!this.host.linkOpen(ep.address)) {
        // The TCP link went away: back to UDP, and to TCP again if UDP still gets no answer.
        this.log.warn({ peer: peer.name }, 'TCP link to the peer closed; trying UDP, then TCP again');
        peer.endpoint = peer.candidates[0] ?? null;
        peer.tcpLink = null;
        peer.udpTryingSinceMs = now;
        return;
      }
      if (now - peer.tcpRetryUdpMs >= TCP_RETRY_UDP_MS && peer.candidates.length > 0) {
        peer.tcpRetryUdpMs = now;
        this.host.initiate(peer, peer.candidates); // a UDP answer moves the peer back to UDP (roaming)
      }
      return;
    }
    if (peer.current !== null && now - peer.lastDirectRecvMs < TCP_FALLBACK_AFTER_MS * 10) return;
    if (peer.tcpLink !== null) {
      if (this.host.linkOpen(peer.tcpLink) && now - peer.tcpDialedMs < REKEY_TIMEOUT_MS) return; // handshaking
      peer.tcpLink = null;
    }
    const since = peer.udpTryingSinceMs;
    if (since === 0 || (now - since < TCP_FALLBACK_AFTER_MS && !udpFailing)) return;
    if (peer.tcpCandidates.length === 0 || now - peer.tcpDialedMs < REKEY_TIMEOUT_MS) return;
    const link = this.host.dialTcp(peer);
    if (link === null) return;
    peer.tcpLink = link;
    peer.tcpDialedMs = now;
    peer.tcpRetryUdpMs = now;
    this.log.info(
      { peer: peer.name, after: now - since, udpSendErrors: udpFailing },
      'no UDP answer from the peer: trying TCP',
    );
    // One initiation to UDP and TCP alike: if UDP was only slow, its answer wins and nothing moves to TCP.
    this.host.initiate(peer, [...peer.candidates, { address: link, port: peer.tcpCandidates[0].port }]);
  }
}

// All session time policy of the mesh. The data path only records times (lastSentMs, lastRecvMs) and calls
// the event hooks here; tick() (every TICK_MS) decides what happens next: handshakes, retries with jitter,
// rekeying, expiry, keepalives, peer up/down.
//
// homewire keeps a session up with every configured peer whose endpoint it knows (a site mesh is always on),
// rather than only on demand as WireGuard does: broadcasts and DHCP must find every site reachable at once.
// Introduced peers (sites behind NAT that an introducer named) are reached through the relay; their direct
// sessions are made by hole punching (paths.ts) and only rekeyed here while frames flow.
// A session that has sent but heard nothing for KEEPALIVE + REKEY_TIMEOUT (both sides send keepalives) is
// renewed: the other side restarted, or a NAT dropped its mapping (a site behind NAT is the only one that can).
import {
  DIRECT_IDLE_MS,
  KEEPALIVE_TIMEOUT_MS,
  PEER_DOWN_AFTER_MS,
  REJECT_AFTER_MS,
  REKEY_AFTER_MESSAGES,
  REKEY_AFTER_MS,
  REKEY_JITTER_MS,
  REKEY_TIMEOUT_MS,
} from '../constants.ts';
import type { Mesh } from './mesh.ts';
import type { Peer } from './peer.ts';

const REKEY_AFTER_MESSAGES_N = Number(REKEY_AFTER_MESSAGES); // a power of two: exact as a number

export class MeshTimers {
  private wanted = new Set<Peer>();
  private scheduled = false;

  constructor(private readonly mesh: Mesh) {}

  /** Data path: a packet wants a session that is not there. Handshake on a later turn, not inline. */
  sessionWanted(peer: Peer): void {
    if (peer.pending || this.mesh.nowMs < peer.nextHandshakeMs) return;
    this.wanted.add(peer);
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      for (const p of this.wanted) this.maybeInitiate(p, this.mesh.nowMs);
      this.wanted.clear();
    });
  }

  handshakeComplete(peer: Peer): void {
    peer.nextHandshakeMs = 0;
  }

  tick(now: number): void {
    for (const peer of this.mesh.peers) {
      // Expire sessions past REJECT_AFTER.
      for (const slot of ['previous', 'current', 'next'] as const) {
        const kp = peer[slot];
        if (kp && now - kp.createdMs >= REJECT_AFTER_MS) {
          this.mesh.retire(kp);
          peer[slot] = null;
        }
      }
      // Sessions displaced by crossing handshakes: their grace is over.
      const d = peer.displaced;
      while (d.length > 0 && d[0].untilMs <= now) this.mesh.retire(d.shift()!.keypair);
      // An unanswered initiation is abandoned after REKEY_TIMEOUT; frames waiting on it go too.
      if (peer.pending && now - peer.pending.sentMs >= REKEY_TIMEOUT_MS) {
        this.mesh.abandonPending(peer);
        this.mesh.handshakes.timeout++;
        this.mesh.handshakeTimedOut(peer);
        if (!peer.current && peer.staged.length) {
          this.mesh.drops.staging_full += peer.staged.length;
          peer.staged = [];
        }
      }
      this.maybeInitiate(peer, now);
      if (peer.current && now - peer.lastSentMs >= KEEPALIVE_TIMEOUT_MS) this.mesh.sendKeepalive(peer);
      if (peer.up && now - peer.lastRecvMs > PEER_DOWN_AFTER_MS) {
        peer.up = false;
        this.mesh.emitPeerState(peer, false);
      }
    }
  }

  private maybeInitiate(peer: Peer, now: number): void {
    if ((!peer.endpoint && peer.candidates.length === 0) || peer.pending || now < peer.nextHandshakeMs) return;
    const kp = peer.current;
    if (peer.introducedBy !== null && (kp === null || now - peer.lastDataMs >= DIRECT_IDLE_MS)) return;
    const needed =
      kp === null ||
      now - kp.createdMs >= REKEY_AFTER_MS + (kp.initiator ? 0 : 2 * REKEY_TIMEOUT_MS) ||
      kp.sendCounter >= REKEY_AFTER_MESSAGES_N ||
      (peer.introducedBy === null &&
        peer.lastSentMs > peer.lastDirectRecvMs &&
        now - peer.lastDirectRecvMs >= KEEPALIVE_TIMEOUT_MS + REKEY_TIMEOUT_MS);
    if (!needed) return;
    peer.nextHandshakeMs = now + REKEY_TIMEOUT_MS + Math.floor(Math.random() * REKEY_JITTER_MS);
    this.mesh.initiate(peer);
  }
}

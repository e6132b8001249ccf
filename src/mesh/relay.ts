// Relaying through an introducer (home), one hop, hop by hop: the origin seals the frame on its session with
// the relay as MSG_RELAY_DATA/SIGNAL with the TARGET's site id in the reserved header bytes; the relay opens it,
// checks that it relays and that the target is a site it serves, and seals it again on its session with the
// target, with the ORIGIN's site id in those bytes. The header is the AEAD's associated data, so both ids are
// authenticated, and a relayed datagram is exactly as long as a direct one (the TAP MTU does not change).
//
// The target accepts relayed messages only from a peer its config marks `introducer: true`, and only for an
// origin that introducer introduced; it hands them on as coming FROM THE ORIGIN (mesh/mesh.ts), so its MAC
// table points at the origin site and a direct path coming up later moves traffic without relearning.
//
// Site id SITE_ID_BROADCAST asks the relay to deliver to its own side and fan out to every site it serves:
// a broadcast from a site behind NAT costs it one datagram, whatever the number of sites.
import { MSG_DATA, MSG_RELAY_DATA, MSG_SIGNAL, SITE_ID_BROADCAST } from '../constants.ts';
import type { Peer } from './peer.ts';

/** Relayed traffic between two sites, counted at the relay (homewire_relayed_*_total{from,to}). */
export interface RelayCount {
  packets: number;
  bytes: number;
}

/** What the relay needs from the mesh (a narrow seam, so this file holds only relay policy). */
export interface RelayHost {
  readonly relayEnabled: boolean;
  readonly peers: readonly Peer[];
  /** The site we introduced with this id (our own directory). */
  siteById(id: number): Peer | undefined;
  /** Seals on the peer's current session and queues it; false if there is no session. */
  sealTo(peer: Peer, type: number, payload: Buffer, site: number): boolean;
  /** Delivers a message to this site's own side (switch, or the mesh's own signals) as from `origin`. */
  deliver(origin: Peer, type: typeof MSG_DATA | typeof MSG_SIGNAL, payload: Buffer, relayed: boolean): void;
}

export class RelayDrops {
  relay_refused = 0; // a relay request to a site that does not relay
  relay_unknown_site = 0; // a relay request for a site id we do not serve
  relay_target_down = 0; // for a site we have no session with now
  relay_not_introducer = 0; // a relayed message from a peer that is not our introducer
  relay_unknown_origin = 0; // from our introducer, for an origin it never introduced
}

/**
 * A relayed message (decrypted, authenticated) from `from`, with the site id of its header.
 * The payload is OWNED: it is handed on to deliver() after every copy was sealed.
 */
export function relayReceive(
  host: RelayHost,
  drops: RelayDrops,
  from: Peer,
  type: number,
  site: number,
  payload: Buffer,
): void {
  const inner = type === MSG_RELAY_DATA ? MSG_DATA : MSG_SIGNAL;
  if (from.introducer) {
    // Our relay delivers from an origin it introduced.
    const origin = from.introducedSites?.get(site);
    if (origin === undefined) {
      drops.relay_unknown_origin++;
      return;
    }
    host.deliver(origin, inner, payload, true);
    return;
  }
  if (!host.relayEnabled || from.introducedBy !== null || from.siteId === 0) {
    drops.relay_refused++;
    return;
  }
  if (site === SITE_ID_BROADCAST) {
    const peers = host.peers;
    for (let i = 0; i < peers.length; i++) {
      const p = peers[i];
      if (p === from || !p.acceptsIntroductions || p.introducedBy !== null) continue;
      if (host.sealTo(p, type, payload, from.siteId)) count(from, p, payload.length);
    }
    host.deliver(from, inner, payload, false);
    return;
  }
  const target = host.siteById(site);
  if (target === undefined || target === from) {
    drops.relay_unknown_site++;
    return;
  }
  if (!host.sealTo(target, type, payload, from.siteId)) {
    drops.relay_target_down++;
    return;
  }
  count(from, target, payload.length);
}

function count(from: Peer, to: Peer, bytes: number): void {
  let m = from.relayedTo;
  if (m === null) m = from.relayedTo = new Map();
  let c = m.get(to);
  if (c === undefined) {
    c = { packets: 0, bytes: 0 };
    m.set(to, c);
  }
  c.packets++;
  c.bytes += bytes;
}

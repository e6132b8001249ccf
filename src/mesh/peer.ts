// A peer: its identity, its endpoint, its sessions (keypairs) and its counters.
// A peer is a key listed in the config, or a key introduced over an authenticated session by a peer the config
// marks `introducer: true` (mesh/introductions.ts); there is no other way to become one.
import type { Keypair } from './keypair.ts';
import type { PendingHandshake } from './handshake.ts';

export interface Endpoint {
  address: string;
  port: number;
}

/** A host name (or IP literal) and port, resolved at run time (mesh/resolver.ts). */
export interface HostPort {
  host: string;
  port: number;
}

export interface PeerConfig {
  name: string;
  publicKey: Buffer;
  /** An IP literal endpoint. */
  endpoint?: Endpoint;
  /** An endpoint given as a DNS name: resolved at start, every DNS_REFRESH_MS and after handshake failures. */
  endpointHost?: HostPort;
  /** TCP fallback (the peer's listen_tcp): used when UDP gets no answer. */
  endpointTcp?: HostPort;
  /** Accept the sites this peer introduces (and frames it relays from them). */
  introducer?: boolean;
}

/** How a peer's endpoint was learned (status). */
export type Learned = 'config' | 'dns' | 'introduction' | 'roaming';

/** The path frames to a peer take now (status, metrics). */
export type PathKind = 'direct' | 'relay' | 'tcp' | 'none';

export interface PeerStats {
  rxBytes: number; // decrypted payload bytes received
  rxPackets: number;
  txBytes: number; // payload bytes sent (direct or through a relay)
  txPackets: number;
  roams: number; // endpoint changed by an authenticated packet
}

let nextPeerId = 1;
const noop = (): void => {};

export class Peer {
  readonly keyHex: string;
  /** A small number naming the peer in the express path's table (native/express.cc). */
  readonly id = nextPeerId++;
  /** Called whenever the endpoint or the sending session changes (the mesh flushes the express path). */
  onPathChange: () => void = noop;
  private ep: Endpoint | null;
  private cur: Keypair | null = null;

  get endpoint(): Endpoint | null {
    return this.ep;
  }

  set endpoint(v: Endpoint | null) {
    this.ep = v;
    this.onPathChange();
  }

  /** Session used for sending. */
  get current(): Keypair | null {
    return this.cur;
  }

  set current(v: Keypair | null) {
    this.cur = v;
    this.onPathChange();
  }

  /** Previous session, still accepted for receiving until it expires (in-flight packets). */
  previous: Keypair | null = null;
  /** Responder's new session: used for receiving; promoted to current by the first packet on it. */
  next: Keypair | null = null;
  /** Sessions pushed out of previous or next while the peer may still send on them: accepted for receiving
   *  until untilMs (DISPLACED_SESSION_GRACE_MS), never used to send. */
  displaced: Array<{ keypair: Keypair; untilMs: number }> = [];
  pending: PendingHandshake | null = null;
  /** Highest handshake timestamp accepted from this peer (replayed initiations are refused). */
  lastTimestamp: Buffer | null = null;
  nextHandshakeMs = 0;
  lastSentMs = 0;
  lastRecvMs = 0;
  lastHandshakeMs = 0; // completed, either side
  rttMs = -1; // handshake round trip as initiator
  up = false; // an authenticated packet arrived within PEER_DOWN_AFTER_MS
  /** Sealed datagrams waiting for this turn's batched send (Mesh.flush). */
  outbox: Buffer[] = [];
  /** Frames waiting for a session (copies), bounded. */
  staged: Buffer[] = [];
  readonly stats: PeerStats = { rxBytes: 0, rxPackets: 0, txBytes: 0, txPackets: 0, roams: 0 };

  // ---- sites behind NAT (mesh/introductions.ts, relay.ts, paths.ts, resolver.ts) -------------------------
  /** Config: this peer introduces other sites to us. */
  introducer = false;
  /** Config: DNS endpoint and TCP fallback endpoint. */
  endpointHost: HostPort | null = null;
  endpointTcp: HostPort | null = null;
  /** The introducer this peer came from (null: configured). */
  introducedBy: Peer | null = null;
  /** Its 24-bit site id: assigned by us if we introduce, else by the introducer that named it (0: none). */
  siteId = 0;
  /** Endpoints to try for a direct path: DNS results, or the observed and local ones an introducer sent. */
  candidates: Endpoint[] = [];
  /** At an introducer: the local addresses the site reported (CANDIDATES). */
  localCandidates: Endpoint[] = [];
  learned: Learned | null = null;
  /** Introduction flags (INTRO_FLAG_*) and when the introduction lapses unless refreshed. */
  introFlags = 0;
  introExpiresMs = 0;
  /** For introducers: it relays for the sites it introduced (an introduction said so). */
  relays = false;
  /** For introducers: the sites it introduced, by the site ids it gave them. */
  introducedSites: Map<number, Peer> | null = null;
  /** At an introducer: this site uses us as its introducer (it sent CANDIDATES). */
  acceptsIntroductions = false;
  /** At a relay: what we relayed from this site, by target. */
  relayedTo: Map<Peer, { packets: number; bytes: number }> | null = null;
  /** Removed from the mesh (the switch forgets its MACs). */
  removed = false;
  /** Last authenticated packet that came directly (not relayed) from this peer. */
  lastDirectRecvMs = 0;
  /** Direct path probing: last PONG, outstanding PING. */
  lastPongMs = 0;
  pingNonce = 0;
  pingSentMs = 0;
  /** Last data frame sent to or received from this peer (introduced peers: probing and rekeying while active). */
  lastDataMs = 0;
  /** Hole punching: attempts so far (backoff index), next attempt, when the current one started. */
  punchAttempt = 0;
  punchNextMs = 0;
  punchStartedMs = 0;
  punchAnsweredMs = 0;
  /** Path now in use for frames (recomputed by the mesh on changes). */
  path: PathKind = 'none';
  /** TCP fallback: when we first tried this peer over UDP without an answer, and the last UDP retry. */
  udpTryingSinceMs = 0;
  tcpRetryUdpMs = 0;
  /** TCP fallback: endpoint_tcp resolved, the link we dialed (a socket address "tcp#N") and when. */
  tcpCandidates: Endpoint[] = [];
  tcpLink: string | null = null;
  tcpDialedMs = 0;

  constructor(
    readonly name: string,
    readonly publicKey: Buffer,
    endpoint: Endpoint | undefined,
  ) {
    this.keyHex = publicKey.toString('hex');
    this.ep = endpoint ?? null;
  }
}

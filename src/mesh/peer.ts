// A configured peer: its identity, its endpoint, its sessions (keypairs) and its counters.
// A peer is only ever a key listed in the config; there is no other way to become one.
import type { Keypair } from './keypair.ts';
import type { PendingHandshake } from './handshake.ts';

export interface Endpoint {
  address: string;
  port: number;
}

export interface PeerConfig {
  name: string;
  publicKey: Buffer;
  endpoint?: Endpoint;
}

export interface PeerStats {
  rxBytes: number; // decrypted payload bytes received
  rxPackets: number;
  txBytes: number; // payload bytes sent
  txPackets: number;
  roams: number; // endpoint changed by an authenticated packet
}

export class Peer {
  readonly keyHex: string;
  endpoint: Endpoint | null;
  /** Session used for sending. */
  current: Keypair | null = null;
  /** Previous session, still accepted for receiving until it expires (in-flight packets). */
  previous: Keypair | null = null;
  /** Responder's new session: used for receiving; promoted to current by the first packet on it. */
  next: Keypair | null = null;
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

  constructor(
    readonly name: string,
    readonly publicKey: Buffer,
    endpoint: Endpoint | undefined,
  ) {
    this.keyHex = publicKey.toString('hex');
    this.endpoint = endpoint ?? null;
  }
}

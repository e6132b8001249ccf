// The UDP seam: the daemon's underlay socket. Implementations: node:dgram (udp/dgram.ts), the same with TCP
// links beside it (udp/underlay.ts), and an in-memory network (lab/twins/udp.ts) that lets tests run whole
// meshes in one process.
//
// TCP links (fallback for networks that block UDP) look like UDP endpoints to the mesh: a link's address is
// "tcp#N" and datagrams to it go over that TCP connection, so sessions, roaming and relaying need no special
// case for them.

/** A datagram. The buffer is OWNED by the handler (it may decrypt in place and keep it). */
export type UdpHandler = (msg: Buffer, address: string, port: number) => void;

/** Called once after a batch of datagrams (one wake-up): where batched work (TAP writes, sends) is flushed. */
export type UdpBatchEnd = () => void;

/** Receive-side figures of a socket (status and metrics). */
export interface UdpStats {
  /** 'native': the addon's recvmmsg (and UDP GRO if `gro`); 'dgram': one event per datagram. */
  receivePath: 'native' | 'dgram' | 'memory';
  gro: boolean;
  rxDatagrams: number;
  rxBytes: number;
  /** Receive syscalls (recvmmsg calls, or one per datagram with dgram). */
  rxCalls: number;
  /** Datagrams that arrived in coalesced (GRO) runs. */
  rxCoalesced: number;
  /** Datagrams longer than the receive buffer, cut by the kernel and dropped. */
  rxTruncated: number;
  rxErrors: number;
  /** Calls into the handler's batch (wake-ups that delivered datagrams). */
  rxBatches: number;
  /** Scavenges the process asked V8 for, paced by receive batches and sealed datagrams (src/heap.ts). */
  pacedScavenges?: number;
  /** Datagrams sent through the batched path, and through dgram's one-by-one send. */
  txBatched: number;
  txFallback: number;
  /** Batched path: send syscalls, datagrams sent inline by the event loop, waiting now, dropped. */
  txCalls?: number;
  txInline?: number;
  txQueued?: number;
  txDropped?: number;
  /** Batches are sent from a thread of the socket's own. */
  sendThread?: boolean;
  /** A UDP GSO send was refused (a kernel or route without it): plain sendmmsg from then on. */
  gsoOff?: boolean;
}

export interface UdpSocket {
  readonly address: string;
  readonly port: number;
  readonly family: 4 | 6;
  /** Deliver datagrams to handler; batchEnd (if given) runs after each batch of them. */
  start(handler: UdpHandler, batchEnd?: UdpBatchEnd): void;
  /** Fire-and-forget send. OWNERSHIP of msg passes to the socket. */
  send(msg: Buffer, port: number, address: string): void;
  /** Fire-and-forget send of msgs[0..count) to one destination, in order. OWNERSHIP passes. */
  sendBatch(msgs: Buffer[], count: number, port: number, address: string): void;
  close(): Promise<void>;
  /** Receive-side figures, where the implementation keeps them. */
  readonly stats?: UdpStats;
  /** TCP fallback: connects to address:port and returns the link's address ("tcp#N"), or null if unsupported. */
  dial?(address: string, port: number): string | null;
  /** Whether a link address still has an open connection. */
  linkOpen?(address: string): boolean;
  /** A link address as people read it ("tcp 192.0.2.1:443"). */
  describe?(address: string, port: number): string;
  /** UDP sends that failed locally so far (e.g. a firewall rejecting them). */
  readonly sendErrors?: number;
}

export const LINK_PREFIX = 'tcp#';

export function isLink(address: string): boolean {
  return address.startsWith(LINK_PREFIX);
}

// The UDP seam: the daemon's underlay socket. Two implementations: node:dgram (udp/dgram.ts) and an
// in-memory network (lab/twins/udp.ts) that lets tests run whole meshes in one process.

/** A datagram. The buffer is OWNED by the handler (it may decrypt in place and keep it). */
export type UdpHandler = (msg: Buffer, address: string, port: number) => void;

export interface UdpSocket {
  readonly address: string;
  readonly port: number;
  readonly family: 4 | 6;
  start(handler: UdpHandler): void;
  /** Fire-and-forget send. OWNERSHIP of msg passes to the socket. */
  send(msg: Buffer, port: number, address: string): void;
  /** Fire-and-forget send of msgs[0..count) to one destination, in order. OWNERSHIP passes. */
  sendBatch(msgs: Buffer[], count: number, port: number, address: string): void;
  close(): Promise<void>;
}

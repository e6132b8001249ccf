// In-memory twin of the underlay: sockets on a MemoryNetwork deliver to each other by address:port on a
// later event-loop turn, copying each datagram as a wire would. Tests can drop, rewrite or inject datagrams.
import type { UdpBatchEnd, UdpHandler, UdpSocket } from '../../src/udp/socket.ts';
import { formatEndpoint } from '../../src/addr.ts';

export type Filter = (msg: Buffer, from: string, to: string) => Buffer | null;

export class MemoryNetwork {
  private readonly sockets = new Map<string, MemoryUdp>();
  /** Optional: return null to drop a datagram, or a (possibly changed) buffer to deliver. */
  filter: Filter | null = null;
  delivered = 0;

  bind(address: string, port: number): MemoryUdp {
    const key = endpointKey(address, port);
    if (this.sockets.has(key)) throw Object.assign(new Error(`${key} in use`), { code: 'EADDRINUSE' });
    const sock = new MemoryUdp(this, address, port);
    this.sockets.set(key, sock);
    return sock;
  }

  /** @internal */
  route(msg: Buffer, from: MemoryUdp, port: number, address: string): void {
    const to = this.sockets.get(endpointKey(address, port));
    let data: Buffer | null = Buffer.from(msg);
    if (this.filter) data = this.filter(data, endpointKey(from.address, from.port), endpointKey(address, port));
    if (!to || !data) return;
    const copy = data;
    setImmediate(() => to.deliver(copy, from.address, from.port));
  }

  /** Sends a datagram as if from address:port (spoofing is what an attacker on the path can do). */
  inject(msg: Buffer, fromAddress: string, fromPort: number, toAddress: string, toPort: number): void {
    const to = this.sockets.get(endpointKey(toAddress, toPort));
    if (to) setImmediate(() => to.deliver(Buffer.from(msg), fromAddress, fromPort));
  }

  /** @internal */
  unbind(sock: MemoryUdp): void {
    this.sockets.delete(endpointKey(sock.address, sock.port));
  }
}

export class MemoryUdp implements UdpSocket {
  private handler: UdpHandler | null = null;
  private batchEnd: UdpBatchEnd | null = null;
  readonly family: 4 | 6;
  constructor(
    private readonly net: MemoryNetwork,
    readonly address: string,
    readonly port: number,
  ) {
    this.family = address.includes(':') ? 6 : 4;
  }
  start(handler: UdpHandler, batchEnd?: UdpBatchEnd): void {
    this.handler = handler;
    this.batchEnd = batchEnd ?? null;
  }
  send(msg: Buffer, port: number, address: string): void {
    this.net.route(msg, this, port, address);
  }
  sendBatch(msgs: Buffer[], count: number, port: number, address: string): void {
    for (let i = 0; i < count; i++) this.net.route(msgs[i], this, port, address);
  }
  /** One datagram arrives: a batch of one, as the real socket's wake-up with a lone datagram. */
  deliver(msg: Buffer, address: string, port: number): void {
    this.net.delivered++;
    this.handler?.(msg, address, port);
    this.batchEnd?.();
  }
  async close(): Promise<void> {
    this.handler = null;
    this.batchEnd = null;
    this.net.unbind(this);
  }
}

function endpointKey(address: string, port: number): string {
  return formatEndpoint(address, port);
}

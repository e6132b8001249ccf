// In-memory twin of the underlay: sockets on a MemoryNetwork deliver to each other by address:port on a
// later event-loop turn, copying each datagram as a wire would. Tests can drop, rewrite or inject datagrams.
//
// NATs (MemoryNat) behave as the kinds the namespace lab builds with iptables (lab/nat.ts):
//   full-cone           one public port per inside endpoint; anyone may send to it
//   address-restricted  one public port per inside endpoint; only addresses the inside has sent to
//   port-restricted     one public port per inside endpoint; only address:ports the inside has sent to
//   symmetric           a new public port per destination; only that destination may answer
//   udp-blocked         no UDP out at all (TCP passes: MemoryNetwork.connect)
// TCP (listen_tcp / endpoint_tcp) is a pair of in-memory streams: MemoryNetwork.listenTcp / connect.
import { duplexPair, type Duplex } from 'node:stream';
import type { UdpBatchEnd, UdpHandler, UdpSocket } from '../../src/udp/socket.ts';
import type { TcpLinks } from '../../src/udp/tcp.ts';
import { formatEndpoint } from '../../src/addr.ts';

export type Filter = (msg: Buffer, from: string, to: string) => Buffer | null;

export type NatKind = 'full-cone' | 'address-restricted' | 'port-restricted' | 'symmetric' | 'udp-blocked';

interface Mapping {
  inside: string; // "addr:port"
  publicPort: number;
  dest: string | null; // symmetric: the one destination
  sentTo: Set<string>; // addresses (address-restricted) or endpoints (port-restricted, symmetric) sent to
}

export class MemoryNat {
  private readonly byInside = new Map<string, Mapping>();
  private readonly byPort = new Map<number, Mapping>();
  private nextPort = 40_000;
  /** Datagrams the NAT dropped (no mapping, or not allowed in). */
  dropped = 0;

  constructor(
    readonly kind: NatKind,
    readonly publicAddress: string,
  ) {}

  /** Outbound: the public source endpoint for a datagram from inside to dest, or null if dropped. */
  outbound(inside: string, dest: string): number | null {
    if (this.kind === 'udp-blocked') {
      this.dropped++;
      return null;
    }
    const key = this.kind === 'symmetric' ? `${inside}>${dest}` : inside;
    let m = this.byInside.get(key);
    if (m === undefined) {
      // Symmetric NATs pick ports at random (MASQUERADE --random-fully); the others keep one per endpoint.
      const port = this.kind === 'symmetric' ? 20_000 + Math.floor(Math.random() * 40_000) : this.nextPort++;
      m = { inside, publicPort: port, dest: this.kind === 'symmetric' ? dest : null, sentTo: new Set() };
      this.byInside.set(key, m);
      this.byPort.set(port, m);
    }
    m.sentTo.add(this.kind === 'address-restricted' ? dest.slice(0, dest.lastIndexOf(':')) : dest);
    return m.publicPort;
  }

  /** Inbound: the inside endpoint a datagram from `from` to the public port goes to, or null if dropped. */
  inbound(from: string, publicPort: number): string | null {
    const m = this.byPort.get(publicPort);
    let ok = m !== undefined;
    if (m !== undefined && this.kind !== 'full-cone') {
      const key = this.kind === 'address-restricted' ? from.slice(0, from.lastIndexOf(':')) : from;
      ok = m.sentTo.has(key);
    }
    if (!ok) {
      this.dropped++;
      return null;
    }
    return m!.inside;
  }

  /** conntrack -F: every mapping is forgotten (new ones get new ports). */
  flush(): void {
    this.byInside.clear();
    this.byPort.clear();
  }
}

export class MemoryNetwork {
  private readonly sockets = new Map<string, MemoryUdp>();
  /** Inside addresses behind a NAT, and NATs by public address. */
  private readonly behind = new Map<string, MemoryNat>();
  private readonly nats = new Map<string, MemoryNat>();
  private readonly tcpListeners = new Map<string, TcpLinks>();
  /** Optional: return null to drop a datagram, or a (possibly changed) buffer to deliver. Sees the public
   *  (translated) source, as a wire between NATs would. */
  filter: Filter | null = null;
  delivered = 0;

  bind(address: string, port: number): MemoryUdp {
    const key = endpointKey(address, port);
    if (this.sockets.has(key)) throw Object.assign(new Error(`${key} in use`), { code: 'EADDRINUSE' });
    const sock = new MemoryUdp(this, address, port);
    this.sockets.set(key, sock);
    return sock;
  }

  /** Puts inside addresses behind a NAT. */
  addNat(nat: MemoryNat, insideAddresses: string[]): void {
    this.nats.set(nat.publicAddress, nat);
    for (const a of insideAddresses) this.behind.set(a, nat);
  }

  natOf(address: string): MemoryNat | undefined {
    return this.behind.get(address);
  }

  /** @internal */
  route(msg: Buffer, from: MemoryUdp, port: number, address: string): void {
    let src = endpointKey(from.address, from.port);
    let srcAddress = from.address;
    let srcPort = from.port;
    const outNat = this.behind.get(from.address);
    const dstBehind = this.behind.get(address);
    let target = this.sockets.get(endpointKey(address, port));
    if (dstBehind !== undefined && dstBehind !== outNat) return; // a private address of another network
    if (outNat !== undefined && dstBehind !== outNat) {
      const p = outNat.outbound(src, endpointKey(address, port));
      if (p === null) return;
      srcAddress = outNat.publicAddress;
      srcPort = p;
      src = endpointKey(srcAddress, srcPort);
    }
    const inNat = this.nats.get(address);
    if (inNat !== undefined) {
      const inside = inNat.inbound(src, port);
      if (inside === null) return;
      target = this.sockets.get(inside);
    }
    let data: Buffer | null = Buffer.from(msg);
    if (this.filter) data = this.filter(data, src, endpointKey(address, port));
    if (!target || !data) return;
    const copy = data;
    const to = target;
    setImmediate(() => to.deliver(copy, srcAddress, srcPort));
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

  // ---- TCP: in-memory stream pairs ---------------------------------------------------------------

  listenTcp(links: TcpLinks, address: string, port: number): void {
    this.tcpListeners.set(endpointKey(address, port), links);
  }

  /** A connection from `fromAddress` (its public address if behind a NAT) to a listener, or a stream that fails. */
  connect(fromAddress: string, address: string, port: number): Duplex {
    const [client, server] = duplexPair();
    const links = this.tcpListeners.get(endpointKey(address, port));
    if (links === undefined) {
      setImmediate(() => client.destroy(Object.assign(new Error('connection refused'), { code: 'ECONNREFUSED' })));
      return client;
    }
    const nat = this.behind.get(fromAddress);
    const remote = endpointKey(nat?.publicAddress ?? fromAddress, 50_000 + Math.floor(Math.random() * 10_000));
    // Ending one side ends the other, as a TCP close does.
    const closeBoth = () => {
      client.destroy();
      server.destroy();
    };
    client.on('close', closeBoth);
    server.on('close', closeBoth);
    if (!links.accept(server, remote, 0)) closeBoth();
    return client;
  }
}

export class MemoryUdp implements UdpSocket {
  private handler: UdpHandler | null = null;
  private batchEnd: UdpBatchEnd | null = null;
  readonly family: 4 | 6;
  /** A local firewall refusing UDP: sends fail at once (and count), as EPERM from the kernel would. */
  failSends = false;
  sendErrors = 0;
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
    if (this.failSends) this.sendErrors++;
    else this.net.route(msg, this, port, address);
  }
  sendBatch(msgs: Buffer[], count: number, port: number, address: string): void {
    if (this.failSends) this.sendErrors += count;
    else for (let i = 0; i < count; i++) this.net.route(msgs[i], this, port, address);
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

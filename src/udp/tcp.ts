// TCP fallback for networks that block UDP: the mesh's datagrams, unchanged, on TCP connections, each one
// prefixed with its length (u16 big-endian). A connection is a "link" with an address of its own ("tcp#N"),
// so to the mesh a site on TCP is just a peer at another endpoint: sessions, roaming, relaying and
// introductions work as they do over UDP. Everything that arrives is authenticated by the mesh as any
// datagram is; here a length of 0 or beyond TCP_FRAME_MAX_BYTES ends the connection, and a connection that
// carries nothing for TCP_IDLE_MS is closed (a site with a session sends keepalives every 10 s).
//
//   TcpLinks   accepted (listen_tcp) and dialed (a peer's endpoint_tcp) connections, framing, limits
//   Underlay   the daemon's socket: UDP, with TCP links beside it (implements UdpSocket)
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { TCP_CONNECTIONS_MAX, TCP_FRAME_MAX_BYTES, TCP_IDLE_MS, TCP_WRITE_BUFFER_MAX_BYTES } from '../constants.ts';
import { OperatorError } from '../errors.ts';
import { formatEndpoint } from '../addr.ts';
import { isLink, LINK_PREFIX, type UdpBatchEnd, type UdpHandler, type UdpSocket, type UdpStats } from './socket.ts';

const LENGTH_BYTES = 2;

interface Link {
  id: number;
  stream: Duplex;
  remote: string; // "192.0.2.7:40211" (accepted) or "192.0.2.1:443" (dialed)
  remotePort: number;
  dialed: boolean;
  open: boolean;
  pending: Buffer | null; // a partial datagram
  lastRxMs: number;
}

export class TcpStats {
  accepted = 0;
  dialed = 0;
  refused = 0; // TCP_CONNECTIONS_MAX reached
  closed = 0;
  malformed = 0; // a bad length prefix: connection closed
  idle_closed = 0;
  backpressure_drops = 0; // datagrams dropped: the connection's send buffer is full
  rx_datagrams = 0;
  tx_datagrams = 0;
}

/** Connects to address:port; a stream of bytes (net.Socket, or an in-memory pair in tests). */
export type Connect = (address: string, port: number) => Duplex;

const netConnect: Connect = (address, port) => {
  const s = net.connect({ host: address, port });
  s.setNoDelay(true);
  return s;
};

export class TcpLinks {
  readonly stats = new TcpStats();
  private readonly links = new Map<number, Link>();
  private nextId = 1;
  private handler: UdpHandler | null = null;
  private batchEnd: UdpBatchEnd | null = null;
  private server: net.Server | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly connect: Connect = netConnect,
    private readonly now: () => number = Date.now,
  ) {}

  /** batchEnd runs after each chunk's datagrams, as after a UDP wake-up: what they produced leaves at once. */
  start(handler: UdpHandler, batchEnd?: UdpBatchEnd): void {
    this.handler = handler;
    this.batchEnd = batchEnd ?? null;
    this.timer = setInterval(() => this.expireIdle(), TCP_IDLE_MS / 6);
    this.timer.unref();
  }

  /** Accepts connections on address:port (listen_tcp). Resolves once listening. */
  listen(address: string, port: number): Promise<void> {
    const server = net.createServer({ noDelay: true }, (s) => {
      const remote = formatEndpoint(s.remoteAddress ?? '?', s.remotePort);
      if (!this.accept(s, remote, s.remotePort ?? 0)) s.destroy();
    });
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => {
        const where = formatEndpoint(address, port);
        reject(
          new OperatorError(
            err.code ?? 'ETCP',
            err.code === 'EADDRINUSE'
              ? `TCP ${where} is already in use: stop what listens there or change 'listen_tcp'`
              : `TCP ${where}: ${err.message} (check 'listen_tcp'; ports below 1024 need root or CAP_NET_BIND_SERVICE)`,
          ),
        );
      });
      server.listen(port, address, () => {
        server.removeAllListeners('error');
        server.on('error', () => {});
        resolve();
      });
    });
  }

  /** An accepted connection (also the in-memory twin's). False if over the limit. */
  accept(stream: Duplex, remote: string, remotePort: number): boolean {
    if (this.links.size >= TCP_CONNECTIONS_MAX) {
      this.stats.refused++;
      return false;
    }
    this.stats.accepted++;
    this.add(stream, remote, remotePort, false);
    return true;
  }

  /** Dials a peer's TCP endpoint; the link's address at once (datagrams queue until connected). */
  dial(address: string, port: number): string {
    this.stats.dialed++;
    const link = this.add(this.connect(address, port), formatEndpoint(address, port), port, true);
    return LINK_PREFIX + link.id;
  }

  private add(stream: Duplex, remote: string, remotePort: number, dialed: boolean): Link {
    const link: Link = {
      id: this.nextId++,
      stream,
      remote,
      remotePort,
      dialed,
      open: true,
      pending: null,
      lastRxMs: this.now(),
    };
    this.links.set(link.id, link);
    stream.on('data', (chunk: Buffer) => this.data(link, chunk));
    const gone = () => this.drop(link);
    stream.on('end', gone);
    stream.on('close', gone);
    stream.on('error', gone);
    return link;
  }

  private data(link: Link, chunk: Buffer): void {
    if (!link.open) return;
    link.lastRxMs = this.now();
    let buf = link.pending === null ? chunk : Buffer.concat([link.pending, chunk]);
    link.pending = null;
    const address = LINK_PREFIX + link.id;
    while (buf.length >= LENGTH_BYTES) {
      const len = buf.readUInt16BE(0);
      if (len === 0 || len > TCP_FRAME_MAX_BYTES) {
        this.stats.malformed++;
        this.drop(link);
        break; // what came before it in this chunk still ends its batch
      }
      if (buf.length < LENGTH_BYTES + len) break;
      // Each datagram is a view of its own range: the mesh decrypts it in place and may keep it.
      const msg = buf.subarray(LENGTH_BYTES, LENGTH_BYTES + len);
      buf = buf.subarray(LENGTH_BYTES + len);
      this.stats.rx_datagrams++;
      this.handler?.(msg, address, link.remotePort);
      if (!link.open) break;
    }
    if (link.open && buf.length > 0) link.pending = Buffer.from(buf);
    this.batchEnd?.();
  }

  private drop(link: Link): void {
    if (!link.open) return;
    link.open = false;
    this.links.delete(link.id);
    this.stats.closed++;
    link.stream.destroy();
  }

  private linkOf(address: string): Link | undefined {
    return this.links.get(Number(address.slice(LINK_PREFIX.length)));
  }

  /** msgs[0..count) on one link, length-prefixed, in one write. OWNERSHIP of msgs passes (they are copied). */
  send(address: string, msgs: Buffer[], count: number): boolean {
    const link = this.linkOf(address);
    if (link === undefined) return false;
    if (link.stream.writableLength > TCP_WRITE_BUFFER_MAX_BYTES) {
      this.stats.backpressure_drops += count;
      return true;
    }
    let total = 0;
    for (let i = 0; i < count; i++) total += LENGTH_BYTES + msgs[i].length;
    const out = Buffer.allocUnsafe(total);
    let off = 0;
    for (let i = 0; i < count; i++) {
      out.writeUInt16BE(msgs[i].length, off);
      msgs[i].copy(out, off + LENGTH_BYTES);
      off += LENGTH_BYTES + msgs[i].length;
    }
    this.stats.tx_datagrams += count;
    link.stream.write(out);
    return true;
  }

  linkOpen(address: string): boolean {
    return this.linkOf(address)?.open ?? false;
  }

  describe(address: string): string {
    const link = this.linkOf(address);
    return link ? `tcp ${link.remote}` : `tcp (closed)`;
  }

  get size(): number {
    return this.links.size;
  }

  private expireIdle(): void {
    const now = this.now();
    for (const link of [...this.links.values()]) {
      if (now - link.lastRxMs > TCP_IDLE_MS) {
        this.stats.idle_closed++;
        this.drop(link);
      }
    }
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.server?.close();
    for (const link of [...this.links.values()]) this.drop(link);
  }
}

/** The daemon's underlay: a UDP socket with TCP links beside it. */
export class Underlay implements UdpSocket {
  constructor(
    readonly udp: UdpSocket,
    readonly links: TcpLinks,
  ) {}

  get address(): string {
    return this.udp.address;
  }
  get port(): number {
    return this.udp.port;
  }
  get family(): 4 | 6 {
    return this.udp.family;
  }
  get sendErrors(): number {
    return this.udp.sendErrors ?? 0;
  }
  /** Datagrams for links that have gone. */
  closedLinkDrops = 0;

  /** Receive-side figures of the UDP socket (TCP links count in links.stats). */
  get stats(): UdpStats | undefined {
    return this.udp.stats;
  }

  start(handler: UdpHandler, batchEnd?: UdpBatchEnd): void {
    this.udp.start(handler, batchEnd);
    this.links.start(handler, batchEnd);
  }

  send(msg: Buffer, port: number, address: string): void {
    if (!isLink(address)) this.udp.send(msg, port, address);
    else if (!this.links.send(address, [msg], 1)) this.closedLinkDrops++;
  }

  sendBatch(msgs: Buffer[], count: number, port: number, address: string): void {
    if (!isLink(address)) this.udp.sendBatch(msgs, count, port, address);
    else if (!this.links.send(address, msgs, count)) this.closedLinkDrops += count;
  }

  dial(address: string, port: number): string {
    return this.links.dial(address, port);
  }

  linkOpen(address: string): boolean {
    return this.links.linkOpen(address);
  }

  describe(address: string): string {
    return this.links.describe(address);
  }

  async close(): Promise<void> {
    this.links.close();
    await this.udp.close();
  }
}

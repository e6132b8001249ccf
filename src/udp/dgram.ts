// The underlay socket on node:dgram. One event and one Buffer per datagram: the Buffer is handed to the
// mesh, which decrypts it in place and passes the frame on without copying.
import dgram from 'node:dgram';
import os from 'node:os';
import { OperatorError } from '../errors.ts';
import type { UdpHandler, UdpSocket } from './socket.ts';
import { formatEndpoint } from '../addr.ts';

const SOCKET_BUFFER_BYTES = 8 * 1024 * 1024; // capped by net.core.rmem_max / wmem_max

type BatchSender = (
  fd: number,
  address: string,
  port: number,
  packets: readonly Buffer[],
  count: number,
  gso: boolean,
) => number;

/** The addon's batched sender, if the addon is built (the daemon runs without it, one send per datagram). */
async function loadBatchSender(): Promise<BatchSender | null> {
  try {
    const { loadTapAddon } = await import('../tap/native.ts');
    return loadTapAddon().udpSendBatch;
  } catch {
    return null;
  }
}

const EAGAIN = os.constants.errno.EAGAIN;

/** The fd under a bound dgram socket (Linux), via its internal state (the public _handle is deprecated). */
function socketFd(sock: dgram.Socket): number {
  const state = Object.getOwnPropertySymbols(sock).find((s) => s.description === 'state symbol');
  const internal = sock as unknown as Record<symbol, { handle?: { fd?: unknown } } | undefined>;
  const fd = state ? internal[state]?.handle?.fd : undefined;
  return typeof fd === 'number' ? fd : -1;
}

export class DgramSocket implements UdpSocket {
  private batchSender: BatchSender | null = null;
  private fd = -1;
  private gso = true;
  /** Datagrams that went out through the batched path, and how many fell back to dgram. */
  readonly batchStats = { batched: 0, fallback: 0, gsoDisabled: false };
  /** Single sends (handshakes) that failed locally: a firewall refusing UDP shows here at once. */
  sendErrors = 0;
  private readonly onSent = (err: Error | null) => {
    if (err) this.sendErrors++;
  };

  private constructor(
    private readonly sock: dgram.Socket,
    readonly address: string,
    readonly port: number,
    readonly family: 4 | 6,
  ) {}

  static bind(address: string, port: number): Promise<DgramSocket> {
    const family = address.includes(':') ? 6 : 4;
    const sock = dgram.createSocket({
      type: family === 6 ? 'udp6' : 'udp4',
      ipv6Only: family === 6 && address !== '::',
    });
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => {
        sock.close();
        const where = formatEndpoint(address, port);
        if (err.code === 'EADDRINUSE') {
          reject(
            new OperatorError(
              err.code,
              `UDP ${where} is already in use (another homewire, WireGuard or service?): stop it or set another port in 'listen'`,
            ),
          );
        } else if (err.code === 'EADDRNOTAVAIL') {
          reject(
            new OperatorError(
              err.code,
              `UDP ${where}: this host has no such address; set 'listen' to one of its addresses or 0.0.0.0 / [::]`,
            ),
          );
        } else if (err.code === 'EACCES') {
          reject(
            new OperatorError(
              err.code,
              `UDP ${where}: permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE`,
            ),
          );
        } else {
          reject(new OperatorError(err.code ?? 'EUDP', `UDP ${where}: ${err.message}`));
        }
      };
      sock.once('error', onError);
      sock.bind(port, address, () => {
        sock.off('error', onError);
        try {
          sock.setRecvBufferSize(SOCKET_BUFFER_BYTES);
          sock.setSendBufferSize(SOCKET_BUFFER_BYTES);
        } catch {
          /* best effort: capped by sysctl */
        }
        const bound = sock.address();
        const socket = new DgramSocket(sock, bound.address, bound.port, family);
        // dgram's own fd (Linux): sends in batches through the addon; receiving stays dgram's.
        const fd = socketFd(sock);
        loadBatchSender().then((sender) => {
          if (sender && typeof fd === 'number' && fd >= 0) {
            socket.batchSender = sender;
            socket.fd = fd;
          }
          resolve(socket);
        });
      });
    });
  }

  start(handler: UdpHandler): void {
    this.sock.on('message', (msg, rinfo) => handler(msg, rinfo.address, rinfo.port));
    // Send errors (unreachable peer, buffer full) are per-datagram and never fatal.
    this.sock.on('error', () => {});
  }

  send(msg: Buffer, port: number, address: string): void {
    this.sock.send(msg, port, address, this.onSent);
  }

  /** Runs of equal-size datagrams leave as one UDP GSO send; the rest in one sendmmsg. */
  sendBatch(msgs: Buffer[], count: number, port: number, address: string): void {
    let sent = 0;
    if (this.batchSender !== null) {
      let r = this.batchSender(this.fd, address, port, msgs, count, this.gso);
      if (r < 0 && this.gso && r !== -EAGAIN) {
        // A kernel or path without UDP GSO: plain sendmmsg from now on.
        this.gso = false;
        this.batchStats.gsoDisabled = true;
        r = this.batchSender(this.fd, address, port, msgs, count, false);
      }
      sent = Math.max(r, 0);
      this.batchStats.batched += sent;
    }
    // What the batch did not take (no addon, EAGAIN, an error) goes through dgram, which queues.
    for (let i = sent; i < count; i++) {
      this.batchStats.fallback++;
      this.sock.send(msgs[i], port, address);
    }
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      try {
        this.sock.close(() => resolve());
      } catch {
        resolve();
      }
    });
  }
}

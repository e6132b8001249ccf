// The underlay socket on node:dgram. One event and one Buffer per datagram: the Buffer is handed to the
// mesh, which decrypts it in place and passes the frame on without copying.
import dgram from 'node:dgram';
import { OperatorError } from '../errors.ts';
import type { UdpHandler, UdpSocket } from './socket.ts';

const SOCKET_BUFFER_BYTES = 8 * 1024 * 1024; // capped by net.core.rmem_max / wmem_max

export class DgramSocket implements UdpSocket {
  private constructor(private readonly sock: dgram.Socket, readonly address: string, readonly port: number,
    readonly family: 4 | 6) {}

  static bind(address: string, port: number): Promise<DgramSocket> {
    const family = address.includes(':') ? 6 : 4;
    const sock = dgram.createSocket({ type: family === 6 ? 'udp6' : 'udp4', ipv6Only: family === 6 && address !== '::' });
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => {
        sock.close();
        const where = family === 6 ? `[${address}]:${port}` : `${address}:${port}`;
        if (err.code === 'EADDRINUSE') {
          reject(new OperatorError(err.code, `UDP ${where} is already in use (another homewire, WireGuard or service?): stop it or set another port in 'listen'`));
        } else if (err.code === 'EADDRNOTAVAIL') {
          reject(new OperatorError(err.code, `UDP ${where}: this host has no such address; set 'listen' to one of its addresses or 0.0.0.0 / [::]`));
        } else if (err.code === 'EACCES') {
          reject(new OperatorError(err.code, `UDP ${where}: permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE`));
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
        } catch { /* best effort: capped by sysctl */ }
        const bound = sock.address();
        resolve(new DgramSocket(sock, bound.address, bound.port, family));
      });
    });
  }

  start(handler: UdpHandler): void {
    this.sock.on('message', (msg, rinfo) => handler(msg, rinfo.address, rinfo.port));
    // Send errors (unreachable peer, buffer full) are per-datagram and never fatal.
    this.sock.on('error', () => {});
  }

  send(msg: Buffer, port: number, address: string): void {
    this.sock.send(msg, port, address);
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      try { this.sock.close(() => resolve()); } catch { resolve(); }
    });
  }
}

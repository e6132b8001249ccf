// The per-host daemon: TAP ↔ switch ↔ mesh ↔ UDP, built from a Config, with one tick for all ageing.
// Lifecycle: fromConfig → start → stop (idempotent). I/O comes in through the TapDevice and UdpSocket
// seams so tests can run whole meshes in one process with the in-memory twins.
import { maxFrameBytes, TICK_MS } from './constants.ts';
import type { Config } from './config.ts';
import type { Logger } from './log.ts';
import { Mesh } from './mesh/mesh.ts';
import { Switch, type SegmentService } from './switch.ts';
import type { TapDevice } from './tap/device.ts';
import { DgramSocket } from './udp/dgram.ts';
import type { UdpSocket } from './udp/socket.ts';

export interface DaemonDeps {
  tap?: TapDevice;
  socket?: UdpSocket;
  log: Logger;
  now?: () => number;
}

export class Daemon {
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;

  private constructor(readonly config: Config, readonly tap: TapDevice, readonly mesh: Mesh, readonly sw: Switch,
    readonly log: Logger, private readonly now: () => number, readonly service: SegmentService | null) {}

  /** Binds the UDP socket first (fails fast if the port is taken), then creates the TAP. */
  static async fromConfig(cfg: Config, deps: DaemonDeps): Promise<Daemon> {
    const now = deps.now ?? Date.now;
    const socket = deps.socket ?? await DgramSocket.bind(cfg.listen.address, cfg.listen.port);
    let tap: TapDevice;
    if (deps.tap) {
      tap = deps.tap;
    } else {
      try {
        const { NativeTap } = await import('./tap/native.ts');
        tap = NativeTap.open({ name: cfg.tap.name, mtu: cfg.tap.mtu, bridge: cfg.tap.bridge });
      } catch (err) {
        await socket.close();
        throw err;
      }
    }
    const mesh = new Mesh({ publicKey: cfg.publicKey, secretKey: cfg.privateKey }, socket, cfg.peers, deps.log, now);
    const sw = new Switch(tap, mesh, maxFrameBytes(cfg.listen.family), cfg.publicKey.toString('hex'), deps.log);
    return new Daemon(cfg, tap, mesh, sw, deps.log, now, null);
  }

  start(): void {
    const { sw, mesh, log } = this;
    mesh.start({
      frame: (peer, frame) => sw.fromPeer(peer, frame),
      control: (peer, payload) => sw.onControl(peer, payload),
      peerState: (peer, up) => log.info({ peer: peer.name, endpoint: peer.endpoint }, up ? 'peer up' : 'peer down'),
    });
    this.tap.start({ frame: (frame) => sw.fromTap(frame), batchEnd: () => {} });
    this.timer = setInterval(() => this.tick(), TICK_MS);
    log.info({
      name: this.config.name, listen: `${this.mesh.socket.address}:${this.mesh.socket.port}`, tap: this.tap.name,
      mtu: this.tap.mtu, peers: this.mesh.peers.map((p) => p.name),
    }, 'homewire up');
  }

  private tick(): void {
    const now = this.now();
    this.mesh.tick();
    this.sw.tick(now);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.tap.close();
    await this.mesh.close();
    this.log.info('homewire stopped');
  }
}

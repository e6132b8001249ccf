// The L2 learning switch between the local side (the TAP) and the peers of the mesh.
//
//   fromTap  (inside):  learn src → local; service? → known peer: send | group/unknown: flood to all peers
//   fromPeer (outside): learn src → peer;  service? → group/unknown/local: write to the TAP
//                       (split horizon: a frame from a peer never goes back out to peers)
// MACs are 48-bit numbers (exact in a double). Ageing is driven by tick(), not by per-entry timers.
import { ETHERNET_HEADER_BYTES, MAC_AGEING_MS, MAC_TABLE_MAX } from './constants.ts';
import type { Mesh } from './mesh/mesh.ts';
import type { Peer } from './mesh/peer.ts';
import type { TapDevice } from './tap/device.ts';

/** Port name of the local side in services and logs. */
export const LOCAL = 'local';

/** Something on the segment that consumes frames itself (the DHCP server). */
export interface SegmentService {
  readonly mac: Buffer;
  /** Offered group frames and frames to `mac`; returns true if consumed. Never throws. */
  offer(frame: Buffer, from: string): boolean;
}

export interface MacEntry {
  port: Peer | null; // null = the local side (TAP)
  seenMs: number;
}

export class SwitchDrops {
  runt = 0; // shorter than an Ethernet header
  too_big = 0; // does not fit one underlay datagram
  local_unicast = 0; // from the TAP to a MAC that is also on the TAP side
  split_horizon = 0; // from a peer to a MAC behind another peer
  table_full = 0;
}

export class Switch {
  readonly table = new Map<number, MacEntry>();
  readonly drops = new SwitchDrops();
  moves = 0;
  nowMs = Date.now();
  private readonly serviceMac: number;

  constructor(private readonly tap: TapDevice, private readonly mesh: Mesh, private readonly maxFrameBytes: number,
    private readonly service: SegmentService | null = null) {
    this.serviceMac = service ? macKey(service.mac, 0) : -1;
  }

  /** A frame from the TAP (BORROWED: valid during this call only). */
  fromTap(frame: Buffer): void {
    if (frame.length < ETHERNET_HEADER_BYTES) { this.drops.runt++; return; }
    if (frame.length > this.maxFrameBytes) { this.drops.too_big++; return; }
    if ((frame[6] & 1) === 0) this.learn(macKey(frame, 6), null);
    const group = (frame[0] & 1) === 1;
    const dst = group ? -1 : macKey(frame, 0);
    if (this.service !== null && (group || dst === this.serviceMac) && this.service.offer(frame, LOCAL)) return;
    if (!group) {
      const entry = this.table.get(dst);
      if (entry !== undefined) {
        if (entry.port === null) this.drops.local_unicast++;
        else this.mesh.sendFrame(entry.port, frame);
        return;
      }
    }
    const peers = this.mesh.peers;
    for (let i = 0; i < peers.length; i++) this.mesh.sendFrame(peers[i], frame);
  }

  /** A frame from a peer (OWNED: handed on to the TAP without copying). */
  fromPeer(peer: Peer, frame: Buffer): void {
    if (frame.length < ETHERNET_HEADER_BYTES) { this.drops.runt++; return; }
    if ((frame[6] & 1) === 0) this.learn(macKey(frame, 6), peer);
    const group = (frame[0] & 1) === 1;
    const dst = group ? -1 : macKey(frame, 0);
    if (this.service !== null && (group || dst === this.serviceMac) && this.service.offer(frame, peer.name)) return;
    if (!group) {
      const entry = this.table.get(dst);
      if (entry !== undefined && entry.port !== null) { this.drops.split_horizon++; return; }
    }
    this.tap.write(frame);
  }

  /** Sends a frame the daemon itself made (e.g. a DHCP reply) to exactly one port. Ownership passes. */
  sendTo(port: string, frame: Buffer): void {
    if (port === LOCAL) { this.tap.write(frame); return; }
    const peer = this.mesh.peerByName(port);
    if (peer) this.mesh.sendFrame(peer, frame);
  }

  private learn(mac: number, port: Peer | null): void {
    const entry = this.table.get(mac);
    if (entry !== undefined) {
      entry.seenMs = this.nowMs;
      if (entry.port !== port) {
        entry.port = port;
        this.moves++;
      }
      return;
    }
    if (this.table.size >= MAC_TABLE_MAX) { this.drops.table_full++; return; }
    this.table.set(mac, { port, seenMs: this.nowMs });
  }

  /** Ages out entries not seen for MAC_AGEING_MS; forgets entries of removed peers. */
  tick(now: number): void {
    this.nowMs = now;
    for (const [mac, entry] of this.table) {
      if (now - entry.seenMs > MAC_AGEING_MS || (entry.port !== null && !this.mesh.peers.includes(entry.port))) {
        this.table.delete(mac);
      }
    }
  }
}

/** The 48-bit MAC at offset as a number. */
export function macKey(buf: Buffer, offset: number): number {
  return buf.readUInt16BE(offset) * 0x1_0000_0000 + buf.readUInt32BE(offset + 2);
}

export function macString(mac: number): string {
  return mac.toString(16).padStart(12, '0').replace(/(..)(?!$)/g, '$1:');
}

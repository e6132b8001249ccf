// Per-frame checks of the segment defences (README "Security model"): DHCP snooping, ARP and neighbour
// inspection, RA guard and ARP suppression on frames from the local side; DHCP server replies, ACK snooping
// and address conflicts on frames from peers. A few header reads per frame (frames.ts), no allocation on
// the common path (an IPv4/TCP frame is K_OTHER after four reads).
import { MAC_AGEING_MS } from '../constants.ts';
import { decodeDhcp, messageType } from '../dhcp/codec.ts';
import { DHCPACK, OPT_LEASE_TIME } from '../dhcp/constants.ts';
import { macString } from '../addr.ts';
import type { Peer } from '../mesh/peer.ts';
import { B_DHCP, B_LEARNED, B_REMOTE, isAuthoritative } from './bindings.ts';
import {
  type ArpFields,
  classify,
  K_ARP,
  K_DHCP4_CLIENT,
  K_DHCP4_SERVER,
  K_DHCP6_SERVER,
  K_ND_NA,
  K_ND_NS,
  K_ND_RA,
  K_ND_REDIRECT,
  K_OTHER,
  K_UNPARSEABLE,
  l3Offset,
  l4Offset,
  readArp,
  readNdClaim,
} from './frames.ts';
import type { SiteContext, SiteSecurity } from './site.ts';

/** checkLocal/checkPeer verdicts. */
export const PASS = 0;
export const DROP = 1;
export const KEEP_LOCAL = 2; // deliver on this side (and to the segment service) but not into the mesh

const LOCAL = { name: 'local' };

export class Inspector {
  private readonly arp: ArpFields = { op: 0, senderMac: 0, senderIp: 0, targetIp: 0 };

  constructor(
    private readonly site: SiteSecurity,
    private readonly ctx: SiteContext,
  ) {}

  /** A frame from the local side (src: its source MAC). PASS, DROP (counted) or KEEP_LOCAL. The site's own
   *  bridge and TAP (infraMacs: the host's own stack, e.g. a host address on the overlay) are not inspected. */
  checkLocal(frame: Buffer, src: number): number {
    const kind = classify(frame);
    if (kind === K_OTHER || (this.site.infraMacs.size > 0 && this.site.infraMacs.has(src))) return PASS;
    const cfg = this.site.cfg;
    const guests = this.site.guestsSide;
    switch (kind) {
      case K_DHCP4_SERVER:
        if (!cfg.dhcpSnooping) return PASS;
        if (guests) {
          this.site.snooping.server_from_guest++;
          this.site.warn('server_from_guest', src, LOCAL, 'dhcp snooping: a guest sends DHCP server replies; dropped');
          return DROP;
        }
        if (this.ctx.dhcp === null) return PASS; // the home LAN's own server serves the overlay
        if (this.ctx.dhcp.serveLocal) {
          this.site.snooping.server_from_lan++;
          this.site.warn(
            'server_from_lan',
            src,
            LOCAL,
            'dhcp snooping: another DHCP server answers on the home LAN while homewire serves it; its replies stay on the LAN',
          );
        } else this.site.snooping.lan_dhcp_kept_local++;
        return KEEP_LOCAL;
      case K_DHCP4_CLIENT:
        if (cfg.dhcpSnooping && !guests && this.ctx.dhcp !== null && !this.ctx.dhcp.serveLocal) {
          this.site.snooping.lan_dhcp_kept_local++;
          return KEEP_LOCAL;
        }
        return PASS;
      case K_DHCP6_SERVER:
        if (!cfg.dhcpSnooping || !guests) return PASS;
        this.site.snooping.dhcpv6_server_from_guest++;
        this.site.warn('dhcpv6_server', src, LOCAL, 'dhcp snooping: a guest sends DHCPv6 server replies; dropped');
        return DROP;
      case K_ARP:
        return this.localArp(frame, src);
      case K_ND_RA:
      case K_ND_REDIRECT:
        if (!guests || !cfg.raGuard) return PASS;
        if (kind === K_ND_RA) this.site.inspection.ra_guard++;
        else this.site.inspection.redirect++;
        this.site.warn('ra_guard', src, LOCAL, 'RA guard: a guest sends router advertisements or redirects; dropped');
        return DROP;
      case K_ND_NA:
      case K_ND_NS:
        if (!guests || cfg.arpInspection === 'off') return PASS;
        return this.localNd(frame, src, kind);
      case K_UNPARSEABLE:
        if (!guests || (cfg.arpInspection === 'off' && !cfg.raGuard)) return PASS;
        this.site.inspection.unparseable++;
        this.site.warn('unparseable', src, LOCAL, 'inspection: a guest frame with a hidden header chain; dropped');
        return DROP;
      default:
        return PASS;
    }
  }

  private localArp(frame: Buffer, src: number): number {
    const cfg = this.site.cfg;
    const l3 = l3Offset(frame);
    const a = readArp(frame, l3, this.arp);
    const inspect = this.site.guestsSide && cfg.arpInspection !== 'off';
    if (a === null) {
      if (!inspect) return PASS;
      this.site.inspection.arp_invalid++;
      return DROP;
    }
    const now = this.site.nowMs;
    if (inspect) {
      if (a.senderMac !== src) {
        this.site.inspection.arp_sha_mismatch++;
        this.site.warn('arp_sha_mismatch', src, LOCAL, 'ARP inspection: sender MAC is not the frame source; dropped');
        return DROP;
      }
      if (a.senderIp !== 0) {
        const b = this.site.bindings.get4(a.senderIp, now);
        if (cfg.arpInspection === 'strict') {
          if (b === undefined || !isAuthoritative(b) || b.mac !== src) {
            this.site.inspection.arp_no_binding++;
            this.site.warn(
              'arp_no_binding',
              src,
              LOCAL,
              `ARP inspection: ${ipString(a.senderIp)} is not bound to this MAC (no DHCP lease or reservation); dropped. ` +
                'Guests with static addresses need a coordinator reservation or security.arp_inspection: learn',
            );
            return DROP;
          }
        } else if (b !== undefined && b.mac !== src) {
          this.site.inspection.arp_ip_conflict++;
          this.site.warn(
            'arp_ip_conflict',
            src,
            LOCAL,
            `ARP inspection: ${ipString(a.senderIp)} belongs to ${macString(b.mac)}; dropped`,
          );
          return DROP;
        } else this.site.bindings.learn4(a.senderIp, src, B_LEARNED, now);
      }
    } else if (a.senderIp !== 0 && a.senderMac === src) {
      this.site.bindings.learn4(a.senderIp, src, B_LEARNED, now); // LAN side: remembered, so peers cannot claim it
    }
    if (cfg.arpSuppression && a.op === 1 && l3 === 14 && a.senderIp !== 0 && a.senderIp !== a.targetIp)
      return this.suppress(frame, a);
    return PASS;
  }

  /** ARP suppression: a request for an address with an authoritative binding is answered here. */
  private suppress(frame: Buffer, a: ArpFields): number {
    if (frame[0] !== 0xff) return PASS; // only broadcasts (a unicast re-check goes to its target)
    const now = this.site.nowMs;
    let mac = this.ctx.dhcp?.macOf(a.targetIp, now) ?? null;
    if (mac === null) {
      const b = this.site.bindings.get4(a.targetIp, now);
      if (b !== undefined && isAuthoritative(b)) mac = b.mac;
    }
    if (mac === null) return PASS;
    const entry = this.ctx.table.get(mac);
    if (entry === undefined || now - entry.seenMs > MAC_AGEING_MS) return PASS; // not around: let it flood
    this.site.stats.arpSuppressed++;
    if (entry.port === null) return KEEP_LOCAL; // on this side: it answers itself; no need to ask the mesh
    this.ctx.writeLocal(arpReply(frame, mac, a.targetIp));
    return KEEP_LOCAL;
  }

  private localNd(frame: Buffer, src: number, kind: number): number {
    const ip6 = l3Offset(frame);
    const claim = readNdClaim(frame, ip6, l4Offset, kind);
    if (claim === null) {
      this.site.inspection.nd_invalid++;
      return DROP;
    }
    if (claim.lladdr !== -1 && claim.lladdr !== src) {
      this.site.inspection.nd_lladdr_mismatch++;
      this.site.warn('nd_lladdr_mismatch', src, LOCAL, 'ND inspection: link-layer option is not the frame source');
      return DROP;
    }
    if (/^0+$/.test(claim.address)) return PASS; // duplicate address detection: no claim yet
    const now = this.site.nowMs;
    const b = this.site.bindings.get6(claim.address, now);
    if (b !== undefined && b.mac !== src) {
      this.site.inspection.nd_conflict++;
      this.site.warn('nd_conflict', src, LOCAL, `ND inspection: the address belongs to ${macString(b.mac)}; dropped`);
      return DROP;
    }
    this.site.bindings.learn6(claim.address, src, B_LEARNED, now);
    return PASS;
  }

  /** A frame from a peer (after its source MAC passed the ownership checks). PASS or DROP (counted). */
  checkPeer(peer: Peer, frame: Buffer, src: number): number {
    const kind = classify(frame);
    if (kind === K_OTHER) return PASS;
    if (kind === K_DHCP4_SERVER) return this.peerDhcpServer(peer, frame);
    if (kind === K_ARP) return this.peerArp(peer, frame, src);
    if (kind === K_ND_NA || kind === K_ND_NS) return this.peerNd(peer, frame, src, kind);
    return PASS;
  }

  /** Whose DHCP server replies reach this site: homewire's own server or the LAN's are local; else trusted peers. */
  trustsDhcpFrom(peer: Peer): boolean {
    if (!this.site.guestsSide || this.ctx.dhcp !== null) return false;
    const list = this.site.cfg.dhcpServers;
    if (list !== null) return list.includes(peer.name);
    // No list: the introducer (home, where DHCP lives) if this site has one; else any configured peer.
    if (this.ctx.hasIntroducer()) return peer.introducer;
    return peer.introducedBy === null;
  }

  private peerDhcpServer(peer: Peer, frame: Buffer): number {
    if (this.site.cfg.dhcpSnooping && !this.trustsDhcpFrom(peer)) {
      this.site.snooping.server_from_peer++;
      this.site.warn(
        'server_from_peer',
        -1,
        peer,
        'dhcp snooping: DHCP server replies from a peer that is not a trusted DHCP server (security.dhcp_servers); dropped',
      );
      return DROP;
    }
    if (this.site.guestsSide) this.snoopAck(frame);
    return PASS;
  }

  /** An ACK a guest here receives binds its address to its MAC for the lease time. */
  private snoopAck(frame: Buffer): void {
    const l4 = l4Offset;
    const ip = l3Offset(frame);
    const end = Math.min(frame.length, ip + frame.readUInt16BE(ip + 2));
    if (l4 + 8 > end) return;
    const m = decodeDhcp(frame.subarray(l4 + 8, end));
    if (m === null || m.yiaddr === 0 || m.hlen !== 6 || messageType(m) !== DHCPACK) return;
    const lease = m.options.get(OPT_LEASE_TIME);
    if (lease === undefined || lease.length !== 4) return;
    const mac = m.chaddr.readUInt16BE(0) * 0x1_0000_0000 + m.chaddr.readUInt32BE(2);
    this.site.bindings.setAuthoritative(
      m.yiaddr,
      mac,
      B_DHCP,
      this.site.nowMs + lease.readUInt32BE(0) * 1000,
      this.site.nowMs,
    );
    this.site.stats.bindingsSnooped++;
  }

  private peerArp(peer: Peer, frame: Buffer, src: number): number {
    const a = readArp(frame, l3Offset(frame), this.arp);
    if (a === null || a.senderIp === 0 || a.senderMac !== src) return PASS;
    const now = this.site.nowMs;
    const b = this.site.bindings.get4(a.senderIp, now);
    const leased = this.ctx.dhcp?.macOf(a.senderIp, now) ?? null;
    const holder = leased ?? (b !== undefined && b.source !== B_REMOTE ? b.mac : null);
    if (holder !== null && holder !== src) {
      this.site.inspection.arp_peer_conflict++;
      this.site.warn(
        'arp_peer_conflict',
        src,
        peer,
        `ARP inspection: a peer's ARP claims ${ipString(a.senderIp)}, which belongs to ${macString(holder)} here; dropped`,
      );
      return DROP;
    }
    this.site.bindings.learn4(a.senderIp, src, B_REMOTE, now);
    return PASS;
  }

  private peerNd(peer: Peer, frame: Buffer, src: number, kind: number): number {
    const claim = readNdClaim(frame, l3Offset(frame), l4Offset, kind);
    if (claim === null || /^0+$/.test(claim.address)) return PASS;
    const now = this.site.nowMs;
    const b = this.site.bindings.get6(claim.address, now);
    if (b !== undefined && b.source === B_LEARNED && b.mac !== src) {
      this.site.inspection.nd_conflict++;
      this.site.warn(
        'nd_peer_conflict',
        src,
        peer,
        "ND inspection: a peer's NA/NS claims an address bound here; dropped",
      );
      return DROP;
    }
    this.site.bindings.learn6(claim.address, src, B_REMOTE, now);
    return PASS;
  }

  /** A BINDING signal from `peer` (the site that serves DHCP): `mac` holds `ip` for `seconds`. */
  bindingSignal(peer: Peer, mac: number, ip: number, seconds: number): void {
    if (!this.trustsDhcpFrom(peer)) {
      this.site.snooping.server_from_peer++;
      this.site.warn(
        'binding_untrusted',
        mac,
        peer,
        'dhcp snooping: a BINDING from a peer that is not a trusted DHCP server',
      );
      return;
    }
    this.site.bindings.setAuthoritative(ip, mac, B_DHCP, this.site.nowMs + seconds * 1000, this.site.nowMs);
    this.site.stats.bindingSignals++;
  }
}

function ipString(ip: number): string {
  return `${ip >>> 24}.${(ip >>> 16) & 255}.${(ip >>> 8) & 255}.${ip & 255}`;
}

/** An ARP reply to the request in `req` (untagged): `mac` has `ip`. */
function arpReply(req: Buffer, mac: number, ip: number): Buffer {
  const f = Buffer.alloc(60);
  req.copy(f, 0, 6, 12); // to the requester
  f.writeUInt16BE(Math.floor(mac / 0x1_0000_0000), 6);
  f.writeUInt32BE(mac % 0x1_0000_0000, 8);
  f.writeUInt16BE(0x0806, 12);
  f.writeUInt16BE(1, 14);
  f.writeUInt16BE(0x0800, 16);
  f[18] = 6;
  f[19] = 4;
  f.writeUInt16BE(2, 20);
  f.writeUInt16BE(Math.floor(mac / 0x1_0000_0000), 22);
  f.writeUInt32BE(mac % 0x1_0000_0000, 24);
  f.writeUInt32BE(ip >>> 0, 28);
  req.copy(f, 32, 22, 32); // target: the requester's MAC and address
  return f;
}

// The status report a daemon serves on its control socket (GET /v1/status) and `homewire status` prints:
// one type for both ends, so the CLI renders exactly what the daemon sends.
import type { GuestReport, Hypervisor as HypervisorInfo, MeshReport } from './coordinator/types.ts';
import type { DhcpLeaseInfo } from './dhcp/server.ts';
import type { Learned, PathKind, PeerStats } from './mesh/peer.ts';
import type { TapStats } from './tap/device.ts';
import type { HistogramSummary } from './trace.ts';
import type { UdpStats } from './udp/socket.ts';
import type { Express } from './express.ts';

export interface PeerStatus extends PeerStats {
  name: string;
  publicKey: string;
  /** "192.0.2.1:51820" / "[2001:db8::1]:51820", or null before the peer has spoken to us. */
  endpoint: string | null;
  up: boolean;
  lastHandshakeSecondsAgo: number | null;
  rttMs: number | null;
  /** How frames reach the peer now: direct (UDP), relay (through `via`), tcp, or none. */
  path: PathKind;
  /** The relay for path 'relay' (the peer's introducer). */
  via: string | null;
  /** How the endpoint was learned: config, dns, introduction, roaming (the peer's own packets). */
  learned: Learned | null;
  /** The introducer that named this peer (null: it is in the config). */
  introduced_by: string | null;
  /** Its site id (ours if we introduce, else the introducer's); null if none. */
  siteId: number | null;
  /** Endpoints tried for a direct path (DNS results, or what the introducer sent). */
  candidates: string[];
}

export interface RelayedStatus {
  from: string;
  to: string;
  packets: number;
  bytes: number;
}

export interface MacStatus {
  mac: string;
  /** 'local' (this site's TAP side) or the peer's name. */
  port: string;
  ageSeconds: number;
  seq: number;
}

export interface AgentStatus {
  coordinator: string;
  registered: boolean;
  bootId: string;
  guests: GuestReport[];
  hypervisor: HypervisorInfo | null;
  /** Guests an earlier agent left running, as this one found them at start. */
  adoption: { adopted: string[]; dead: string[]; settled: string[]; ms: number } | null;
  registrations: number;
  heartbeats: number;
  heartbeatFailures: number;
  polls: number;
  commands: number;
  commandFailures: number;
  /** Commands refused by the agent's own checks, by reason. */
  refused: Record<string, number>;
  images: Record<string, number>;
}

export interface StatusReport {
  name: string;
  publicKey: string;
  listen: string;
  tap: { name: string; mtu: number } & TapStats;
  uptimeSeconds: number;
  peers: PeerStatus[];
  macs: MacStatus[];
  /** Dropped packets by reason (mesh and switch). */
  drops: Record<string, number>;
  /** The segment defences and the handshake guard: modes and counters (README "Security model"). */
  security: {
    localSide: string;
    portSecurity: string;
    macMoves: string;
    /** MACs in the coordinator's guest list (null: none given). */
    guestMacs: number | null;
    portSecurityDrops: Record<string, number>;
    ownershipDrops: Record<string, number>;
    dhcpSnoopingDrops: Record<string, number>;
    inspectionDrops: Record<string, number>;
    stormDrops: Record<string, number>;
    handshakeGuard: Record<string, number>;
    arpSuppressed: number;
    bindings: number;
  };
  handshakes: Record<string, number>;
  mobility: Record<string, number>;
  /** Introductions by result (sent, accepted, withdrawn, dropped...). */
  introductions: Record<string, number>;
  /** Hole punching attempts by result. */
  punches: Record<string, number>;
  /** What this node relayed, per pair of sites (relay: true). */
  relayed: RelayedStatus[];
  /** TCP links (listen_tcp, endpoint_tcp). */
  tcp: Record<string, number>;
  /** This host's overlay address (host_address, or the bridge's lease), if any. */
  hostAddress: string | null;
  dhcp: { leases: DhcpLeaseInfo[]; active: number } | null;
  agent: AgentStatus | null;
  /** The underlay socket's receive path and counters (absent for sockets that keep none). */
  udp?: UdpStats;
  /** The express path (src/express.ts): frames it carried each way without JavaScript, and its table. */
  express: ReturnType<Express['report']>;
  /** Debug (HOMEWIRE_TRACE_LATENCY=1): per-stage time histograms, see src/trace.ts. */
  latency?: Record<string, HistogramSummary>;
}

/** What the host agent reports about the mesh: this daemon's endpoint and how it sees its peers. */
export function meshReport(s: Pick<StatusReport, 'listen' | 'peers'>): MeshReport {
  return {
    endpoint: s.listen,
    peers: s.peers.map((p) => ({ name: p.name, endpoint: p.endpoint, up: p.up, rtt_ms: p.rttMs })),
  };
}

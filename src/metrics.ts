// Prometheus exposition for a daemon. The data path only increments plain fields; every metric here reads
// them in collect() at scrape time. Labels are bounded: peers come from the config, MACs are the guests on
// this host's local side (at most PORT_SERIES_MAX).
import http from 'node:http';
import client from 'prom-client';
import type { Endpoint, Peer } from './mesh/peer.ts';
import type { Daemon } from './daemon.ts';
import { macString } from './addr.ts';
import { registerAgentMetrics } from './agent/metrics.ts';

const PORT_SERIES_MAX = 256;

export function daemonRegistry(d: Daemon): client.Registry {
  const register = new client.Registry();
  client.collectDefaultMetrics({ register, prefix: 'homewire_' });
  // prom-client names these gauges *_total, which Prometheus conventions (and promtool) reserve for counters.
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) {
    register.removeSingleMetric(`homewire_${name}`);
  }
  const peers = () => d.mesh.peers;
  registerAgentMetrics(register, () => d.hostAgent);

  // A counter or gauge per peer; read() < 0 means "no value" (the series is left out).
  const perPeer = (name: string, help: string, read: (p: Peer) => number, type: 'counter' | 'gauge') => {
    const values = function* () {
      for (const p of peers()) {
        const v = read(p);
        if (v >= 0) yield [{ peer: p.name }, v] as const;
      }
    };
    const cfg = { name, help, labelNames: ['peer'] as const, registers: [register] };
    if (type === 'counter') {
      new client.Counter({
        ...cfg,
        collect() {
          this.reset();
          for (const [labels, v] of values()) this.inc(labels, v);
        },
      });
    } else {
      new client.Gauge({
        ...cfg,
        collect() {
          this.reset();
          for (const [labels, v] of values()) this.set(labels, v);
        },
      });
    }
  };
  perPeer(
    'homewire_peer_rx_bytes_total',
    'Payload bytes received from the peer (decrypted frames).',
    (p) => p.stats.rxBytes,
    'counter',
  );
  perPeer('homewire_peer_tx_bytes_total', 'Payload bytes sent to the peer.', (p) => p.stats.txBytes, 'counter');
  perPeer('homewire_peer_rx_packets_total', 'Frames received from the peer.', (p) => p.stats.rxPackets, 'counter');
  perPeer('homewire_peer_tx_packets_total', 'Frames sent to the peer.', (p) => p.stats.txPackets, 'counter');
  perPeer(
    'homewire_peer_roams_total',
    "Times the peer's endpoint moved (authenticated packets from a new address).",
    (p) => p.stats.roams,
    'counter',
  );
  perPeer(
    'homewire_peer_up',
    '1 if an authenticated packet arrived from the peer recently.',
    (p) => (p.up ? 1 : 0),
    'gauge',
  );
  perPeer(
    'homewire_peer_last_handshake_timestamp_seconds',
    'Unix time of the last completed handshake (0: never).',
    (p) => p.lastHandshakeMs / 1000,
    'gauge',
  );
  perPeer(
    'homewire_peer_rtt_seconds',
    'Round trip of the last handshake this node initiated.',
    (p) => (p.rttMs < 0 ? -1 : p.rttMs / 1000),
    'gauge',
  );

  new client.Gauge({
    name: 'homewire_peer_path',
    help: 'The path frames to the peer take now: 1 for the one in use (direct, relay, tcp).',
    labelNames: ['peer', 'path'] as const,
    registers: [register],
    collect() {
      this.reset();
      for (const p of peers()) {
        const now = d.mesh.pathOf(p);
        for (const path of ['direct', 'relay', 'tcp'] as const) this.set({ peer: p.name, path }, now === path ? 1 : 0);
      }
    },
  });
  for (const [field, help] of [
    ['packets', 'Packets this relay forwarded from one site to another.'],
    ['bytes', 'Payload bytes this relay forwarded from one site to another.'],
  ] as const) {
    new client.Counter({
      name: `homewire_relayed_${field}_total`,
      help,
      labelNames: ['from', 'to'] as const,
      registers: [register],
      collect() {
        this.reset();
        for (const r of d.relayed()) this.inc({ from: r.from, to: r.to }, r[field]);
      },
    });
  }
  counterFrom(register, 'homewire_punch_attempts_total', 'Hole punching attempts by result.', 'result', () => ({
    ...d.mesh.paths.punches,
  }));
  counterFrom(register, 'homewire_introductions_total', 'Introductions by result.', 'result', () => ({
    ...d.mesh.introStats,
  }));
  counterFrom(register, 'homewire_tcp_links_total', 'TCP fallback link events.', 'event', () => ({
    ...d.underlay.links.stats,
  }));
  counterFrom(register, 'homewire_handshakes_total', 'Handshake messages by result.', 'result', () => ({
    ...d.mesh.handshakes,
  }));
  counterFrom(register, 'homewire_dropped_packets_total', 'Packets and frames dropped, by reason.', 'reason', () => {
    const out: Record<string, number> = { ...d.mesh.drops, ...d.sw.drops };
    out.tcp_link_closed = d.underlay.closedLinkDrops;
    const tap = d.tap.stats;
    out.tap_write = tap.txDropped;
    out.tap_ring_full = tap.rxRingDropped ?? 0; // the kernel's, at the TAP's queue towards the daemon
    return out;
  });
  new client.Gauge({
    name: 'homewire_mac_table_entries',
    help: 'MAC addresses in the switch table.',
    registers: [register],
    collect() {
      this.set(d.sw.table.size);
    },
  });
  const local = (field: 'rxBytes' | 'txBytes') =>
    function (this: client.Counter<'mac'>) {
      this.reset();
      let n = 0;
      for (const [mac, e] of d.sw.table) {
        if (e.port !== null || n++ >= PORT_SERIES_MAX) continue;
        this.inc({ mac: macString(mac) }, e[field]);
      }
    };
  new client.Counter({
    name: 'homewire_port_rx_bytes_total',
    help: 'Bytes from each local guest MAC into the overlay.',
    labelNames: ['mac'],
    registers: [register],
    collect: local('rxBytes'),
  });
  new client.Counter({
    name: 'homewire_port_tx_bytes_total',
    help: 'Bytes from the overlay to each local guest MAC.',
    labelNames: ['mac'],
    registers: [register],
    collect: local('txBytes'),
  });
  single(register, 'homewire_mac_moves_total', 'MAC addresses that moved between hosts.', () => d.sw.mobility.moves);
  single(register, 'homewire_mac_move_announcements_total', 'Move announcements sent.', () => d.sw.mobility.announced);
  single(
    register,
    'homewire_mac_forwarded_after_move_total',
    "Frames the old host forwarded to a moved MAC's new host.",
    () => d.sw.mobility.forwardedAfterMove,
  );
  single(
    register,
    'homewire_mac_flap_holddowns_total',
    'MACs held down for flapping between hosts.',
    () => d.sw.mobility.flapHolddowns,
  );
  single(register, 'homewire_tap_rx_frames_total', 'Frames read from the TAP.', () => d.tap.stats.rxFrames);
  single(register, 'homewire_tap_tx_frames_total', 'Frames written to the TAP.', () => d.tap.stats.txFrames);
  counterFrom(
    register,
    'homewire_express_frames_total',
    'Frames the express path carried without JavaScript (tx: TAP to mesh, rx: mesh to TAP), and those it handed to JavaScript.',
    'path',
    () => {
      const x = d.sw.express.report();
      return { tx: x.txFrames, rx: x.rxFrames, tx_to_js: x.txToJs, rx_to_js: x.rxToJs };
    },
  );

  // Security (README "Security model"): drops by reason per defence, and the handshake guard.
  const sec = d.sw.security;
  counterFrom(
    register,
    'homewire_port_security_drops_total',
    'Frames from the local side refused by port security, by reason.',
    'reason',
    () => ({ ...sec.portSecurity }),
  );
  counterFrom(
    register,
    'homewire_mac_ownership_drops_total',
    'Frames, move announcements and EXPECTs from peers refused by MAC ownership, by reason.',
    'reason',
    () => ({ ...sec.ownership }),
  );
  counterFrom(
    register,
    'homewire_dhcp_snooping_drops_total',
    'DHCP frames not passed on by DHCP snooping, by reason.',
    'reason',
    () => ({ ...sec.snooping }),
  );
  counterFrom(
    register,
    'homewire_arp_inspection_drops_total',
    'ARP and neighbour-discovery frames dropped by inspection or RA guard, by reason.',
    'reason',
    () => ({ ...sec.inspection }),
  );
  counterFrom(
    register,
    'homewire_storm_drops_total',
    'Flooded frames over security.flood_pps, by kind.',
    'kind',
    () => ({ ...sec.storm.drops }),
  );
  single(
    register,
    'homewire_arp_suppressed_total',
    'ARP requests answered (or kept) locally instead of flooded over the mesh.',
    () => sec.stats.arpSuppressed,
  );
  const guard = d.mesh.guard.stats;
  single(
    register,
    'homewire_handshake_cookies_sent_total',
    'Cookie replies sent under load instead of processing a handshake.',
    () => guard.cookies_sent,
  );
  single(
    register,
    'homewire_handshake_rate_limited_total',
    "Handshakes dropped by their source's token bucket under load.",
    () => guard.rate_limited,
  );
  counterFrom(
    register,
    'homewire_handshake_guard_total',
    'Handshake guard events: mac1_invalid, cookies_sent, rate_limited, cookie_replies_accepted, cookie_replies_invalid, under_load.',
    'event',
    () => ({ ...guard }),
  );

  const dhcp = d.dhcp;
  if (dhcp) {
    counterFrom(register, 'homewire_dhcp_messages_total', 'DHCP messages received and sent, by type.', 'type', () => ({
      ...dhcp.stats.messages,
    }));
    counterFrom(register, 'homewire_dhcp_dropped_total', 'DHCP messages dropped, by reason.', 'reason', () => ({
      ...dhcp.stats.dropped,
    }));
    single(
      register,
      'homewire_dhcp_foreign_offers_total',
      'OFFERs from another DHCP server seen on the segment.',
      () => dhcp.stats.foreignOffers,
    );
    new client.Gauge({
      name: 'homewire_dhcp_leases_active',
      help: 'Active DHCP leases.',
      registers: [register],
      collect() {
        this.set(dhcp.stats.leasesActive);
      },
    });
  }
  return register;
}

function counterFrom(
  register: client.Registry,
  name: string,
  help: string,
  label: string,
  read: () => Record<string, number>,
): void {
  new client.Counter({
    name,
    help,
    labelNames: [label],
    registers: [register],
    collect() {
      this.reset();
      for (const [k, v] of Object.entries(read())) if (typeof v === 'number') this.inc({ [label]: k }, v);
    },
  });
}

function single(register: client.Registry, name: string, help: string, read: () => number): void {
  new client.Counter({
    name,
    help,
    registers: [register],
    collect() {
      this.reset();
      this.inc(read());
    },
  });
}

/** Serves GET /metrics; resolves once listening. */
export function serveMetrics(register: client.Registry, listen: Endpoint): Promise<http.Server> {
  const server = http.createServer(async (req, res) => {
    if (req.url !== '/metrics' && !req.url?.startsWith('/metrics?')) {
      res.writeHead(404).end('see /metrics\n');
      return;
    }
    try {
      const body = await register.metrics();
      res.writeHead(200, { 'content-type': register.contentType }).end(body);
    } catch (err) {
      res.writeHead(500).end(String(err));
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.address, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

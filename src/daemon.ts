// The per-host daemon: TAP ↔ switch ↔ mesh ↔ UDP, built from a Config, with one tick for all ageing.
// Lifecycle: fromConfig → start → reload (SIGHUP) → stop (idempotent). I/O comes in through the TapDevice
// and UdpSocket seams, so tests run whole meshes in one process with the in-memory twins.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import type http from 'node:http';
import os from 'node:os';
import { maxFrameBytes, TICK_MS } from './constants.ts';
import { type Config, loadConfig } from './config.ts';
import { defaultControlSocket, serveControl } from './control.ts';
import { DhcpServer } from './dhcp/server.ts';
import type { HostAgent } from './agent/agent.ts';
import type { Logger } from './log.ts';
import { parseIPv4 } from './dhcp/ip.ts';
import { decodeKey, encodeKey } from './mesh/keys.ts';
import { Mesh } from './mesh/mesh.ts';
import type { PeerConfig } from './mesh/peer.ts';
import { formatEndpoint, macNumber, macString } from './addr.ts';
import { meshReport, type StatusReport } from './status.ts';
import { OperatorError } from './errors.ts';
import { LOCAL, Switch } from './switch.ts';
import type { TapDevice } from './tap/device.ts';
import type { NativeTap } from './tap/native.ts';
import { addonOrNull } from './addon.ts';
import { Express, type ExpressSink } from './express.ts';
import { latencyReport } from './trace.ts';
import { DgramSocket } from './udp/dgram.ts';
import type { UdpSocket } from './udp/socket.ts';
import { type Connect, TcpLinks, Underlay } from './udp/tcp.ts';
import type { Lookup } from './mesh/resolver.ts';
import type { Endpoint } from './mesh/peer.ts';

const INFRA_MACS_REFRESH_MS = 5_000;
/** Read the TAP right after writing a receive batch to it (default on; HOMEWIRE_TAP_READ_AFTER_WRITE=0: off, for A/B). */
const READ_TAP_AFTER_WRITE = process.env.HOMEWIRE_TAP_READ_AFTER_WRITE !== '0';
/** The express path (default on; HOMEWIRE_EXPRESS=0: off, for A/B). */
const EXPRESS = process.env.HOMEWIRE_EXPRESS !== '0';

export interface DaemonDeps {
  tap?: TapDevice;
  socket?: UdpSocket;
  log: Logger;
  now?: () => number;
  /** Serve the control socket and metrics (the real daemon does; in-process tests do not). */
  services?: boolean;
  /** DNS lookups for host-name endpoints (default: getaddrinfo). */
  lookup?: Lookup;
  /** This host's addresses offered as direct-path candidates (default: its interfaces'). */
  localAddresses?: () => string[];
  /** TCP links: how to connect, and how to listen on listen_tcp (default: real TCP). */
  tcp?: { connect: Connect; listen(links: TcpLinks, at: Endpoint): Promise<void> };
}

export class Daemon {
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private servers: http.Server[] = [];
  private agent: HostAgent | null = null;
  private infraReadMs = 0;
  readonly startedMs: number;
  /** Where what the express path carried goes: the mesh's peers and drops, the switch's MAC entries. */
  private readonly expressSink: ExpressSink = {
    peer: (id) => this.mesh.peerById(id),
    entry: (mac) => this.sw.table.get(mac),
    authFailed: (n) => {
      this.mesh.drops.auth_failed += n;
    },
  };

  /** The host agent, when this daemon joins a coordinator (metrics read its counters). */
  get hostAgent(): HostAgent | null {
    return this.agent;
  }

  private constructor(
    public config: Config,
    readonly tap: TapDevice,
    readonly mesh: Mesh,
    readonly sw: Switch,
    readonly log: Logger,
    private readonly now: () => number,
    readonly dhcp: DhcpServer | null,
    private readonly services: boolean,
  ) {
    this.startedMs = now();
  }

  /** Validates everything, binds the UDP socket (fails fast if the port is taken), then creates the TAP. */
  static async fromConfig(cfg: Config, deps: DaemonDeps): Promise<Daemon> {
    const now = deps.now ?? Date.now;
    const dhcpConfig = cfg.dhcp ?? null;
    const udp = deps.socket ?? (await DgramSocket.bind(cfg.listen.address, cfg.listen.port));
    // TCP links beside UDP: dialed for a peer's endpoint_tcp, accepted on listen_tcp.
    const links = new TcpLinks(deps.tcp?.connect, now);
    const socket = new Underlay(udp, links);
    if (cfg.listenTcp) {
      try {
        if (deps.tcp) await deps.tcp.listen(links, cfg.listenTcp);
        else await links.listen(cfg.listenTcp.address, cfg.listenTcp.port);
      } catch (err) {
        await socket.close();
        throw err;
      }
    }
    let tap: TapDevice;
    let nativeTap: NativeTap | null = null;
    if (deps.tap) {
      tap = deps.tap;
    } else {
      try {
        const { NativeTap } = await import('./tap/native.ts');
        tap = nativeTap = NativeTap.open({ name: cfg.tap.name, mtu: cfg.tap.mtu, bridge: cfg.tap.bridge });
        nativeTap.readBetween = READ_TAP_AFTER_WRITE; // an echo written ahead of bulk is answered ahead of it
      } catch (err) {
        await socket.close();
        throw err;
      }
    }
    if (cfg.tap.bridge && !deps.tap) {
      const pinned = await pinBridgeMac(cfg.tap.bridge);
      if (pinned !== null) deps.log.warn({ bridge: cfg.tap.bridge }, pinned);
    }
    if (cfg.hostAddress && !deps.tap) {
      try {
        await addBridgeAddress(cfg.tap.bridge!, cfg.hostAddress);
      } catch (err) {
        tap.close();
        await socket.close();
        throw err;
      }
    }
    const mesh = new Mesh({ publicKey: cfg.publicKey, secretKey: cfg.privateKey }, socket, cfg.peers, deps.log, now, {
      introduce: cfg.introduce,
      relay: cfg.relay,
      lookup: deps.lookup,
      localAddresses: deps.localAddresses,
      overlayInterfaces: [tap.name, ...(cfg.tap.bridge ? [cfg.tap.bridge] : [])],
    });
    let dhcp: DhcpServer | null = null;
    let sw: Switch | null = null;
    if (dhcpConfig) {
      try {
        dhcp = DhcpServer.open(dhcpConfig, {
          mtu: tap.mtu,
          now,
          log: deps.log.child({ part: 'dhcp' }),
          send: (frame, to) => sw!.sendTo(to, frame),
          macPort: (mac) => {
            const entry = sw?.table.get(macNumber(mac));
            return entry === undefined ? null : (entry.port?.name ?? LOCAL);
          },
        });
      } catch (err) {
        tap.close();
        await mesh.close();
        throw err;
      }
    }
    sw = new Switch(
      tap,
      mesh,
      maxFrameBytes(cfg.listen.family),
      cfg.publicKey.toString('hex'),
      deps.log.child({ part: 'security' }),
      dhcp,
      cfg.security,
    );
    sw.announceMoves = cfg.mobility.announceMoves;
    // The express path: established flows without JavaScript (src/express.ts). It needs the
    // addon's TAP and UDP receiver (not the in-memory twins).
    if (EXPRESS && nativeTap !== null && udp instanceof DgramSocket) {
      const express = Express.open(addonOrNull(), maxFrameBytes(cfg.listen.family), READ_TAP_AFTER_WRITE);
      if (express.native !== null && udp.attachExpress(express.native)) {
        nativeTap.attachExpress(express);
        mesh.express = express;
        sw.express = express;
      }
    }
    return new Daemon(cfg, tap, mesh, sw, deps.log, now, dhcp, deps.services ?? false);
  }

  async start(): Promise<void> {
    const { sw, mesh, log } = this;
    mesh.start({
      frame: (peer, frame) => {
        this.tap.holdFlush?.(); // batchEnd below flushes
        sw.fromPeer(peer, frame);
      },
      signal: (peer, payload) => sw.onSignal(peer, payload),
      peerState: (peer, up) => log.info({ peer: peer.name, endpoint: peer.endpoint }, up ? 'peer up' : 'peer down'),
      batchEnd: () => {
        this.tap.flush?.(); // a lone frame (a ping) goes to the TAP at once
        if (READ_TAP_AFTER_WRITE) this.tap.readNow?.(); // and the kernel's answer to it leaves in this turn
      },
    });
    this.tap.start({
      frame: (frame) => {
        mesh.holdFlush(); // batchEnd flushes
        sw.fromTap(frame);
      },
      batchEnd: () => mesh.flush(),
    });
    this.readInfraMacs(this.now());
    this.timer = setInterval(() => this.tick(), TICK_MS);
    if (this.services) {
      try {
        await this.startServices();
      } catch (err) {
        await this.stop();
        throw err;
      }
    }
    if (this.config.coordinator) {
      // The host agent: registers with the coordinator, heartbeats, runs its VM commands (in the background).
      const { HostAgent } = await import('./agent/agent.ts');
      const dhcp = this.dhcp;
      this.agent = new HostAgent(this.config.coordinator, {
        name: this.config.name,
        publicKey: encodeKey(this.config.publicKey),
        bridge: this.config.tap.bridge,
        // Migrations come to this host's overlay address (host_address or the bridge's DHCP lease), so their
        // streams ride the mesh; without one, to the listen address.
        address: () => this.overlayAddress() ?? this.config.listen.address,
        expect: (mac) => this.expect(mac),
        log: this.log.child({ part: 'agent' }),
        reservations: dhcp ? (list) => dhcp.setExtraReservations(list) : undefined,
        leases: dhcp
          ? () => dhcp.leases().flatMap((l) => (l.state === 'bound' ? [{ mac: l.mac, ip: l.ip }] : []))
          : undefined,
        authorizeMove: (mac, siteKey, untilMs) => this.authorizeMove(mac, siteKey, untilMs),
        setGuestMacs: (list) => this.setGuestMacs(list),
        mesh: () => meshReport(this.status()),
      });
      await this.agent.start();
    }
    log.info(
      {
        node: this.config.name,
        listen: `${this.mesh.socket.address}:${this.mesh.socket.port}`,
        tap: this.tap.name,
        mtu: this.tap.mtu,
        peers: this.mesh.peers.map((p) => p.name),
        dhcp: this.dhcp !== null,
        security: {
          localSide: this.config.security.localSide,
          portSecurity: this.config.security.portSecurity,
          macMoves: this.config.security.macMoves,
          arpInspection: this.config.security.arpInspection,
        },
      },
      'homewire up',
    );
    const sec = this.config.security;
    if (sec.localSide === 'guests' && sec.dhcpSnooping && sec.dhcpServers === null && this.dhcp === null) {
      log.info(
        'security.dhcp_servers is not set: DHCP server replies from every peer reach the guests here; list the site that serves DHCP',
      );
    }
  }

  /** This host's address on the overlay: host_address, else an address the bridge has (a DHCP lease). */
  overlayAddress(): string | undefined {
    if (this.config.hostAddress) return this.config.hostAddress.address;
    const bridge = this.config.tap.bridge;
    if (!bridge) return undefined;
    const family = this.config.listen.family === 6 ? 'IPv6' : 'IPv4';
    const found = (os.networkInterfaces()[bridge] ?? []).find(
      (a) => a.family === family && !a.internal && !a.address.startsWith('169.254.') && !a.address.startsWith('fe80:'),
    );
    return found?.address;
  }

  private async startServices(): Promise<void> {
    const socketPath = this.config.control?.socket ?? defaultControlSocket(this.config.name);
    this.servers.push(
      await serveControl(socketPath, {
        status: () => this.status(),
        reload: () => this.reloadFromFile(),
        expect: (mac) => this.expect(mac),
        guests: (list) => this.setGuestMacs(list),
        authorizeMove: (mac, to, untilMs) => this.authorizeMove(mac, to, untilMs),
      }),
    );
    if (this.config.metrics) {
      const { daemonRegistry, serveMetrics } = await import('./metrics.ts');
      this.servers.push(await serveMetrics(daemonRegistry(this), this.config.metrics.listen));
    }
  }

  private tick(): void {
    const now = this.now();
    this.sw.express.collect(this.expressSink); // before the timers read when peers last sent and received
    this.mesh.tick();
    this.sw.tick(now);
    this.dhcp?.tick(now);
    if (now - this.infraReadMs >= INFRA_MACS_REFRESH_MS) this.readInfraMacs(now);
  }

  /** The bridge's and the TAP's own MACs: the host itself may send from them in strict mode (it changes when
   *  bridge ports change, so it is read again now and then). */
  private readInfraMacs(now: number): void {
    this.infraReadMs = now;
    const macs = new Set<number>();
    for (const dev of [this.config.tap.bridge, this.tap.name]) {
      if (!dev) continue;
      try {
        const mac = macNumber(fs.readFileSync(`/sys/class/net/${dev}/address`, 'utf8').trim());
        if (mac >= 0) macs.add(mac);
      } catch {
        /* no such device (in-memory TAP): nothing to allow */
      }
    }
    this.sw.security.infraMacs = macs;
  }

  /**
   * The coordinator's VM records for this host (port security: in strict mode only these MACs, and the
   * host's own bridge, may send into the mesh; their reserved addresses are ARP-inspection bindings).
   * Entries: "aa:bb:cc:dd:ee:ff" or { mac, ip? }.
   */
  setGuestMacs(list: ReadonlyArray<string | { mac: string; ip?: string | null }>): { ok: boolean; error?: string } {
    const guests: Array<{ mac: number; ip: number | null }> = [];
    for (const g of list) {
      const text = typeof g === 'string' ? g : g?.mac;
      const mac = typeof text === 'string' ? macNumber(text) : -1;
      if (mac < 0 || Math.floor(mac / 0x100_0000_0000) & 1)
        return { ok: false, error: `"${String(text)}" is not a unicast MAC address (aa:bb:cc:dd:ee:ff)` };
      let ip: number | null = null;
      if (typeof g === 'object' && g.ip != null) {
        ip = parseIPv4(String(g.ip));
        if (ip === null) return { ok: false, error: `"${g.ip}" (for ${text}) is not an IPv4 address` };
      }
      guests.push({ mac, ip });
    }
    this.sw.security.setGuestMacs(guests);
    this.sw.express.flush();
    this.log.info({ guests: guests.length }, 'guest MACs set: port security allows these on the local side');
    return { ok: true };
  }

  /**
   * A coordinator-announced migration: `mac` may move to the site with public key (base64) or peer name
   * `to` (this site's own key or name: it may arrive here) until `untilMs`. Peers' moves and EXPECTs for a
   * MAC another site holds are refused without one (security.mac_moves: authorized).
   */
  authorizeMove(macText: string, to: string, untilMs: number): { ok: boolean; error?: string } {
    const mac = macNumber(macText);
    if (mac < 0) return { ok: false, error: `"${macText}" is not a MAC address (aa:bb:cc:dd:ee:ff)` };
    let keyHex: string | null = null;
    if (to === this.config.name) keyHex = this.config.publicKey.toString('hex');
    else {
      const peer = this.mesh.peerByName(to);
      if (peer) keyHex = peer.keyHex;
      else keyHex = decodeKey(to)?.toString('hex') ?? null;
    }
    if (keyHex === null) return { ok: false, error: `"${to}" is neither a peer name nor a base64 public key` };
    if (!Number.isFinite(untilMs) || untilMs <= this.now())
      return { ok: false, error: 'the authorization must end in the future (until_ms or seconds)' };
    this.sw.security.authorizeMove(mac, keyHex, untilMs);
    this.log.info({ mac: macText, to, seconds: Math.round((untilMs - this.now()) / 1000) }, 'MAC move authorized');
    return { ok: true };
  }

  expect(macText: string): { ok: boolean; error?: string } {
    const mac = macNumber(macText);
    if (mac < 0) return { ok: false, error: `"${macText}" is not a MAC address (aa:bb:cc:dd:ee:ff)` };
    this.sw.expect(mac);
    this.log.info({ mac: macText }, 'MAC expected here: peers send its frames here too until it arrives');
    return { ok: true };
  }

  /** Re-reads the config file; an invalid one is refused and the running config kept. */
  async reloadFromFile(): Promise<{ ok: boolean; error?: string; changes?: string[] }> {
    let next: Config;
    try {
      next = loadConfig(this.config.file);
    } catch (err) {
      const error = (err as Error).message;
      this.log.error({ error }, 'reload refused: the new config is invalid; keeping the running one');
      return { ok: false, error };
    }
    const changes = this.apply(next);
    this.log.info({ changes }, 'config reloaded');
    return { ok: true, changes };
  }

  /** Applies what can change live: peers (added, removed, re-keyed, new endpoints) and the log level. */
  apply(next: Config): string[] {
    const changes: string[] = [];
    const old = this.config;
    const byName = new Map(next.peers.map((p) => [p.name, p]));
    for (const peer of [...this.mesh.peers]) {
      if (peer.introducedBy !== null) continue; // introduced sites come and go with their introducer
      const want = byName.get(peer.name);
      if (!want?.publicKey.equals(peer.publicKey)) {
        this.mesh.removePeer(peer);
        changes.push(want ? `peer ${peer.name}: new key` : `peer ${peer.name} removed`);
      }
    }
    for (const want of next.peers) {
      const found = this.mesh.peerByName(want.name);
      const peer = found?.introducedBy === null ? found : undefined;
      if (!peer) {
        this.mesh.addPeer(want);
        if (!changes.includes(`peer ${want.name}: new key`)) changes.push(`peer ${want.name} added`);
      } else if (
        !sameEndpoint(
          want,
          old.peers.find((p) => p.name === want.name),
        )
      ) {
        peer.endpoint = want.endpoint ?? peer.endpoint;
        this.mesh.configure(peer, want);
        const text = want.endpoint
          ? formatEndpoint(want.endpoint.address, want.endpoint.port)
          : want.endpointHost
            ? `${want.endpointHost.host}:${want.endpointHost.port}`
            : 'learned';
        changes.push(`peer ${want.name}: endpoint ${text}`);
      } else if (
        !samePeerOptions(
          want,
          old.peers.find((p) => p.name === want.name),
        )
      ) {
        this.mesh.configure(peer, want);
        changes.push(`peer ${want.name}: introducer/endpoint_tcp changed`);
      }
    }
    if (next.relay !== old.relay) {
      this.mesh.relayEnabled = next.relay;
      changes.push(`relay ${old.relay} -> ${next.relay}`);
    }
    if (JSON.stringify(next.security) !== JSON.stringify(old.security)) {
      this.sw.security.reconfigure(next.security);
      this.sw.express.flush();
      changes.push('security');
    }
    if (next.mobility.announceMoves !== old.mobility.announceMoves) {
      this.sw.announceMoves = next.mobility.announceMoves;
      changes.push(`mobility.announce_moves ${old.mobility.announceMoves} -> ${next.mobility.announceMoves}`);
    }
    if (next.logLevel !== old.logLevel) {
      this.log.level = next.logLevel;
      changes.push(`log_level ${old.logLevel} -> ${next.logLevel}`);
    }
    for (const [key, a, b] of [
      ['name', old.name, next.name],
      ['private key', encodeKey(old.privateKey), encodeKey(next.privateKey)],
      ['listen', JSON.stringify(old.listen), JSON.stringify(next.listen)],
      ['tap', JSON.stringify(old.tap), JSON.stringify(next.tap)],
      ['metrics', JSON.stringify(old.metrics), JSON.stringify(next.metrics)],
      ['dhcp', JSON.stringify(old.dhcp), JSON.stringify(next.dhcp)],
      ['control', JSON.stringify(old.control), JSON.stringify(next.control)],
      ['coordinator', JSON.stringify(old.coordinator), JSON.stringify(next.coordinator)],
      ['listen_tcp', JSON.stringify(old.listenTcp), JSON.stringify(next.listenTcp)],
      ['introduce', String(old.introduce), String(next.introduce)],
      ['host_address', JSON.stringify(old.hostAddress), JSON.stringify(next.hostAddress)],
    ] as const) {
      if (a !== b) {
        this.log.warn({ key }, 'this setting changed but applies only after a restart');
        changes.push(`${key}: needs a restart`);
      }
    }
    this.config = {
      ...old,
      peers: next.peers,
      logLevel: next.logLevel,
      mobility: next.mobility,
      relay: next.relay,
      security: next.security,
    };
    this.mesh.tick();
    return changes;
  }

  status(): StatusReport {
    const now = this.now();
    const sock = this.mesh.socket;
    return {
      name: this.config.name,
      publicKey: encodeKey(this.config.publicKey),
      listen: formatEndpoint(sock.address, sock.port),
      tap: { name: this.tap.name, mtu: this.tap.mtu, ...this.tap.stats, ...this.tap.detail },
      uptimeSeconds: Math.round((now - this.startedMs) / 1000),
      peers: this.mesh.peers.map((p) => ({
        name: p.name,
        publicKey: encodeKey(p.publicKey),
        endpoint: p.endpoint ? this.mesh.describe(p.endpoint) : null,
        up: p.up || (p.introducedBy !== null && this.mesh.pathOf(p) === 'relay'), // reachable, if through home
        lastHandshakeSecondsAgo: p.lastHandshakeMs ? Math.round((now - p.lastHandshakeMs) / 1000) : null,
        rttMs: p.rttMs < 0 ? null : p.rttMs,
        ...p.stats,
        path: this.mesh.pathOf(p),
        via: p.introducedBy?.name ?? null,
        learned: p.learned,
        introduced_by: p.introducedBy?.name ?? null,
        siteId: p.siteId || null,
        candidates: p.candidates.map((e) => this.mesh.describe(e)),
      })),
      macs: [...this.sw.table].map(([mac, e]) => ({
        mac: macString(mac),
        port: e.port?.name ?? LOCAL,
        ageSeconds: Math.round((now - e.seenMs) / 1000),
        seq: e.seq,
      })),
      drops: { ...this.mesh.drops, ...this.sw.drops, tcp_link_closed: this.underlay.closedLinkDrops },
      security: this.securityReport(),
      handshakes: { ...this.mesh.handshakes },
      mobility: { ...this.sw.mobility },
      introductions: { ...this.mesh.introStats },
      punches: { ...this.mesh.paths.punches },
      relayed: this.relayed(),
      tcp: { ...this.underlay.links.stats, links: this.underlay.links.size },
      hostAddress: this.overlayAddress() ?? null,
      dhcp: this.dhcp ? { leases: this.dhcp.leases(), active: this.dhcp.stats.leasesActive } : null,
      agent: this.agent?.status() ?? null,
      udp: sock.stats,
      express: this.sw.express.report(),
      latency: latencyReport() ?? undefined,
    };
  }

  /** Security counters by group, for status and metrics. */
  securityReport(): StatusReport['security'] {
    const s = this.sw.security;
    return {
      localSide: s.cfg.localSide,
      portSecurity: s.cfg.portSecurity,
      macMoves: s.cfg.macMoves,
      guestMacs: s.guestMacs === null ? null : s.guestMacs.size,
      portSecurityDrops: { ...s.portSecurity },
      ownershipDrops: { ...s.ownership },
      dhcpSnoopingDrops: { ...s.snooping },
      inspectionDrops: { ...s.inspection },
      stormDrops: { ...s.storm.drops },
      handshakeGuard: { ...this.mesh.guard.stats },
      arpSuppressed: s.stats.arpSuppressed,
      bindings: s.bindings.size,
    };
  }

  /** What this node relayed, per (from, to) pair. */
  relayed(): { from: string; to: string; packets: number; bytes: number }[] {
    const out: { from: string; to: string; packets: number; bytes: number }[] = [];
    for (const p of this.mesh.peers) {
      if (p.relayedTo === null) continue;
      for (const [to, c] of p.relayedTo) if (!to.removed) out.push({ from: p.name, to: to.name, ...c });
    }
    return out;
  }

  get underlay(): Underlay {
    return this.mesh.socket as Underlay;
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await this.agent?.stop();
    for (const s of this.servers) s.close();
    this.tap.close();
    this.dhcp?.close();
    await this.mesh.close();
    this.log.info('homewire stopped');
  }
}

function sameEndpoint(a: PeerConfig, b: PeerConfig | undefined): boolean {
  return (
    a.endpoint?.address === b?.endpoint?.address &&
    a.endpoint?.port === b?.endpoint?.port &&
    a.endpointHost?.host === b?.endpointHost?.host &&
    a.endpointHost?.port === b?.endpointHost?.port
  );
}

function samePeerOptions(a: PeerConfig, b: PeerConfig | undefined): boolean {
  return (
    (a.introducer ?? false) === (b?.introducer ?? false) &&
    a.endpointTcp?.host === b?.endpointTcp?.host &&
    a.endpointTcp?.port === b?.endpointTcp?.port
  );
}

/**
 * Fixes the bridge's MAC where it is now. A Linux bridge whose MAC was never set takes the lowest MAC of its
 * ports, so it changes whenever a VM's TAP joins or leaves; the host's overlay address (host_address, a lease)
 * then answers from a new MAC while peers' ARP caches and switch tables hold the old one, and unicast to the
 * host is lost until they time out (the likely cause of a migration stream to a host address stuck in SYN-SENT).
 * Setting the same MAC explicitly makes the kernel keep it. Returns null, or what went wrong (not fatal).
 */
async function pinBridgeMac(bridge: string): Promise<string | null> {
  const sys = `/sys/class/net/${bridge}`;
  let mac: string;
  try {
    if (fs.readFileSync(`${sys}/addr_assign_type`, 'utf8').trim() === NET_ADDR_SET) return null;
    mac = fs.readFileSync(`${sys}/address`, 'utf8').trim();
  } catch (err) {
    return `cannot read ${bridge}'s MAC: ${(err as Error).message}`;
  }
  const err = await ipCommand(['link', 'set', 'dev', bridge, 'address', mac]);
  return err === null
    ? null
    : `cannot fix ${bridge}'s MAC at ${mac}: ${err}; it will follow its ports' MACs ` +
        `(set it yourself: ip link set dev ${bridge} address ${mac})`;
}

/** /sys/class/net/DEV/addr_assign_type: the MAC was set by user space (NET_ADDR_SET). */
const NET_ADDR_SET = '3';

/** Puts the host's overlay address on its bridge (`ip addr replace`: idempotent across restarts). */
async function addBridgeAddress(bridge: string, a: { address: string; prefixLength: number }): Promise<void> {
  const family = a.address.includes(':') ? '-6' : '-4';
  const err = await ipCommand([family, 'addr', 'replace', `${a.address}/${a.prefixLength}`, 'dev', bridge]);
  if (err === null) return;
  throw new OperatorError(
    'EHOSTADDR',
    `cannot put host_address ${a.address}/${a.prefixLength} on ${bridge}: ${err} (needs iproute2 and CAP_NET_ADMIN)`,
  );
}

/** Runs iproute2's `ip` with these arguments: null, or what it said went wrong. */
function ipCommand(args: string[]): Promise<string | null> {
  return new Promise((resolve) => {
    execFile('ip', args, { timeout: 5000 }, (err, _out, stderr) =>
      resolve(err ? (stderr || err.message).trim() : null),
    );
  });
}

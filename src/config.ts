// The daemon's YAML config: parsed, validated and resolved in one place. Every error names the file, the key
// path and what to do. See README "Config reference".
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { defaultTapMtu } from './constants.ts';
import { type AgentConfig, parseAgentConfig } from './agent/config.ts';
import { type DhcpConfig, parseDhcpConfig } from './dhcp/config.ts';
import { Checker, LOG_LEVELS, parseYaml, readConfigFile } from './checker.ts';
import { decodeKey, publicKeyOf } from './mesh/keys.ts';
import type { Endpoint, PeerConfig } from './mesh/peer.ts';
import { parseSecurityConfig, type SecurityConfig } from './security/config.ts';

export interface TapConfig {
  name: string;
  mtu: number;
  bridge?: string;
}

export interface Config {
  file: string;
  name: string;
  privateKey: Buffer;
  publicKey: Buffer;
  listen: Endpoint & { family: 4 | 6 };
  tap: TapConfig;
  peers: PeerConfig[];
  metrics?: { listen: Endpoint };
  logLevel: string;
  /** This site serves DHCP for the overlay (validated by the DHCP module). */
  dhcp?: DhcpConfig;
  control?: { socket: string };
  /** MAC mobility: announce guests that arrive here to every peer (default true). */
  mobility: { announceMoves: boolean };
  /** This host joins a lifecycle coordinator (validated by the agent module). */
  coordinator?: AgentConfig;
  /** TCP fallback: accept the mesh's datagrams over TCP here (for sites whose UDP is blocked). */
  listenTcp?: Endpoint;
  /** Introduce every peer to the others (names, keys, observed endpoints). */
  introduce: boolean;
  /** Forward frames between two peers that have no direct path (one hop). */
  relay: boolean;
  /** This host's address on the overlay, put on tap.bridge (live migrations ride the mesh to it). */
  hostAddress?: { address: string; prefixLength: number };
  /** Port security, MAC ownership, snooping, inspection, storm control (README "Security model"). */
  security: SecurityConfig;
}

const TOP_KEYS = [
  'name',
  'private_key',
  'private_key_file',
  'listen',
  'tap',
  'peers',
  'metrics',
  'log_level',
  'dhcp',
  'control',
  'coordinator',
  'mobility',
  'listen_tcp',
  'introduce',
  'relay',
  'host_address',
  'security',
];
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$/;
const IFNAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,14}$/;

export function loadConfig(file: string): Config {
  return parseConfig(readConfigFile(file), file);
}

export function parseConfig(text: string, file: string): Config {
  const raw = parseYaml(text, file);
  const c = new Checker(file);
  const top = c.object(raw, '');
  c.onlyKeys(top, TOP_KEYS, '');

  const name = c.string(top.name, 'name');
  if (!NAME_RE.test(name))
    c.fail('name', `"${name}" is not a valid node name: use 1-32 letters, digits, '.', '_' or '-'`);

  const privateKey = readPrivateKey(c, top, file);
  const publicKey = publicKeyOf(privateKey);

  const listen = c.endpoint(top.listen, 'listen', true);
  const family = listen.address.includes(':') ? 6 : 4;

  const tapRaw = c.object(top.tap, 'tap');
  c.onlyKeys(tapRaw, ['name', 'mtu', 'bridge'], 'tap');
  const tapName = c.string(tapRaw.name, 'tap.name');
  if (!IFNAME_RE.test(tapName))
    c.fail('tap.name', `"${tapName}" is not a valid interface name: 1-15 letters, digits, '.', '_' or '-'`);
  const maxMtu = defaultTapMtu(family);
  let mtu = maxMtu;
  if (tapRaw.mtu !== undefined) {
    mtu = c.integer(tapRaw.mtu, 'tap.mtu', 576, 9000);
    if (mtu > maxMtu) {
      c.fail(
        'tap.mtu',
        `${mtu} does not fit a 1500-byte underlay without fragmentation over IPv${family}: use at most ${maxMtu} (the default)`,
      );
    }
  }
  let bridge: string | undefined;
  if (tapRaw.bridge !== undefined) {
    bridge = c.string(tapRaw.bridge, 'tap.bridge');
    if (!IFNAME_RE.test(bridge)) c.fail('tap.bridge', `"${bridge}" is not a valid interface name`);
  }

  const peers: PeerConfig[] = [];
  const peersRaw = c.list(top.peers, 'peers', 'of peers (- name: ..., public_key: ...)');
  const names = new Set<string>();
  const keys = new Map<string, string>();
  peersRaw.forEach((p: unknown, i: number) => {
    const at = `peers[${i}]`;
    const o = c.object(p, at);
    c.onlyKeys(o, ['name', 'public_key', 'endpoint', 'endpoint_tcp', 'introducer'], at);
    const pname = c.string(o.name, `${at}.name`);
    if (!NAME_RE.test(pname))
      c.fail(`${at}.name`, `"${pname}" is not a valid peer name: use 1-32 letters, digits, '.', '_' or '-'`);
    if (names.has(pname)) c.fail(`${at}.name`, `duplicate peer name "${pname}": each peer needs its own name`);
    if (pname === name) c.fail(`${at}.name`, `"${pname}" is this node's own name`);
    names.add(pname);
    const keyText = c.string(o.public_key, `${at}.public_key`);
    const key = decodeKey(keyText);
    if (!key)
      c.fail(`${at}.public_key`, 'not a base64 Curve25519 public key (44 characters, as printed by `homewire pubkey`)');
    const hex = key!.toString('hex');
    if (keys.has(hex))
      c.fail(`${at}.public_key`, `duplicate peer key: peer "${keys.get(hex)}" has the same public key`);
    if (key!.equals(publicKey)) c.fail(`${at}.public_key`, "is this node's own public key: list the other sites' keys");
    keys.set(hex, pname);
    const peer: PeerConfig = { name: pname, publicKey: key! };
    if (o.endpoint !== undefined) {
      const hp = c.hostEndpoint(o.endpoint, `${at}.endpoint`);
      const epFamily = net.isIP(hp.host);
      if (epFamily === 0)
        peer.endpointHost = hp; // a DNS name: resolved at run time (mesh/resolver.ts)
      else if (epFamily !== family) {
        c.fail(
          `${at}.endpoint`,
          `is IPv${epFamily} but 'listen' is IPv${family}: the underlay socket can only reach IPv${family} endpoints`,
        );
      } else peer.endpoint = { address: hp.host, port: hp.port };
    }
    if (o.endpoint_tcp !== undefined) {
      peer.endpointTcp = c.hostEndpoint(o.endpoint_tcp, `${at}.endpoint_tcp`);
      const tcpFamily = net.isIP(peer.endpointTcp.host);
      if (tcpFamily !== 0 && tcpFamily !== family)
        c.fail(`${at}.endpoint_tcp`, `is IPv${tcpFamily} but 'listen' is IPv${family}: use an IPv${family} address`);
    }
    if (o.introducer !== undefined) peer.introducer = c.boolean(o.introducer, `${at}.introducer`);
    peers.push(peer);
  });

  let metrics: Config['metrics'];
  if (top.metrics !== undefined) {
    const m = c.object(top.metrics, 'metrics');
    c.onlyKeys(m, ['listen'], 'metrics');
    metrics = { listen: c.endpoint(m.listen, 'metrics.listen', false) };
  }
  let control: Config['control'];
  if (top.control !== undefined) {
    const m = c.object(top.control, 'control');
    c.onlyKeys(m, ['socket'], 'control');
    control = { socket: path.resolve(path.dirname(file), c.string(m.socket, 'control.socket')) };
  }
  let announceMoves = true;
  if (top.mobility !== undefined) {
    const m = c.object(top.mobility, 'mobility');
    c.onlyKeys(m, ['announce_moves'], 'mobility');
    if (m.announce_moves !== undefined) announceMoves = c.boolean(m.announce_moves, 'mobility.announce_moves');
  }
  let listenTcp: Endpoint | undefined;
  if (top.listen_tcp !== undefined) {
    listenTcp = c.endpoint(top.listen_tcp, 'listen_tcp', false);
    if ((listenTcp.address.includes(':') ? 6 : 4) !== family)
      c.fail('listen_tcp', `must be IPv${family} like 'listen' (the mesh has one address family)`);
  }
  const introduce = top.introduce === undefined ? false : c.boolean(top.introduce, 'introduce');
  const relay = top.relay === undefined ? false : c.boolean(top.relay, 'relay');
  if (relay && !introduce)
    c.fail('relay', 'relay: true needs introduce: true (sites accept relayed frames only from sites we introduced)');
  if (introduce && peers.some((p) => p.introducer))
    c.fail('introduce', 'a node that introduces others cannot also take introductions: drop introducer: true');
  let hostAddress: Config['hostAddress'];
  if (top.host_address !== undefined) {
    const text = c.string(top.host_address, 'host_address');
    const m = /^([^/]+)\/(\d{1,3})$/.exec(text);
    const ipFamily = m ? net.isIP(m[1]) : 0;
    if (!m || ipFamily === 0 || Number(m[2]) > (ipFamily === 4 ? 32 : 128))
      c.fail('host_address', `"${text}" is not ADDRESS/PREFIX (e.g. 198.51.100.20/24, in the home LAN's subnet)`);
    if (!bridge) c.fail('host_address', 'needs tap.bridge: the host address goes on the bridge the TAP joins');
    hostAddress = { address: m![1], prefixLength: Number(m![2]) };
  }
  let logLevel = 'info';
  if (top.log_level !== undefined) {
    logLevel = c.string(top.log_level, 'log_level');
    if (!LOG_LEVELS.includes(logLevel)) c.fail('log_level', `"${logLevel}" is not one of ${LOG_LEVELS.join(', ')}`);
  }

  return {
    file,
    name,
    privateKey,
    publicKey,
    listen: { ...listen, family },
    tap: { name: tapName, mtu, bridge },
    peers,
    metrics,
    logLevel,
    dhcp: top.dhcp === undefined ? undefined : parseDhcpConfig(top.dhcp, file),
    control,
    mobility: { announceMoves },
    coordinator:
      top.coordinator === undefined ? undefined : parseAgentConfig(top.coordinator, file, 'coordinator', name),
    listenTcp,
    introduce,
    relay,
    hostAddress,
    // A site that serves DHCP, introduces or relays is the home site: its local side is the home LAN.
    security: parseSecurityConfig(
      top.security,
      file,
      top.dhcp !== undefined || introduce || relay,
      peers.map((p) => p.name),
    ),
  };
}

function readPrivateKey(c: Checker, top: Record<string, unknown>, file: string): Buffer {
  if (top.private_key !== undefined && top.private_key_file !== undefined) {
    c.fail('private_key', 'give either private_key or private_key_file, not both');
  }
  if (top.private_key !== undefined) {
    const key = decodeKey(c.string(top.private_key, 'private_key'));
    if (!key) c.fail('private_key', 'not a base64 Curve25519 private key (create one with `homewire genkey`)');
    return key!;
  }
  if (top.private_key_file === undefined) {
    c.fail(
      'private_key_file',
      'missing: set private_key_file (a file made by `homewire genkey > FILE`) or private_key',
    );
  }
  const keyFile = path.resolve(path.dirname(file), c.string(top.private_key_file, 'private_key_file'));
  let text: string;
  try {
    text = fs.readFileSync(keyFile, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    c.fail(
      'private_key_file',
      code === 'ENOENT'
        ? `${keyFile} does not exist: create it with \`homewire genkey > ${keyFile}\` (mode 600)`
        : `cannot read ${keyFile} (${code}): check its permissions`,
    );
  }
  const key = decodeKey(text!);
  if (!key)
    c.fail(
      'private_key_file',
      `${keyFile} does not hold a base64 Curve25519 private key (create one with \`homewire genkey\`)`,
    );
  return key!;
}

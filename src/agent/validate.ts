// The host agent checks every command itself before anything reaches QEMU's argv, a path or the daemon: the
// coordinator is trusted to decide, not to be free of bugs, and a command that arrives here is input. Names,
// MACs, sizes, the kernel command line, image locations and checksums, migration URIs and keys are checked
// against one definition each; anything else is refused with a reason that is counted
// (homewire_agent_commands_refused_total{reason}) and logged at most once per reason every ten seconds.
import { NAME_RE } from '../coordinator/images.ts';
import { parseImageSource } from '../coordinator/image-sources.ts';
import {
  checkNbdEndpoint,
  DISK_COPY_EXPORT,
  NBD_EXPORT,
  parseMigrationUri,
  sameAddress,
  TLS_PSK_RE,
} from '../coordinator/migration.ts';
import { DISK_GIB_MAX } from '../coordinator/requests.ts';
import type { Command, ImageRecord, LaunchSpec } from '../coordinator/types.ts';
import {
  AUTHORIZE_MOVE_TTL_MAX_MS,
  CMDLINE_MAX_CHARS,
  IMAGE_FILE_MAX_BYTES,
  IMAGE_SOURCES_MAX,
  VM_MEMORY_MIB_MIN,
} from '../coordinator/constants.ts';

export const REFUSAL_REASONS = [
  'bad_command', // not a known command shape (type, id, unknown keys)
  'bad_name', // a VM or image name outside [A-Za-z0-9._-]{1,63}
  'bad_mac', // not a unicast MAC aa:bb:cc:dd:ee:ff
  'bad_size', // CPUs or memory out of range, or more than this host offers
  'bad_cmdline', // a kernel command line with control or non-ASCII characters, or too long
  'bad_image', // malformed image locations or checksums
  'image_source', // an image URL not allowed, or one that resolves to an address not allowed
  'local_image', // a path on this host while allow_local_images is false
  'bad_uri', // a migration URI that is not exactly tcp:IP:PORT (or not this host's, for incoming)
  'bad_key', // a malformed TLS pre-shared key or site key
] as const;
export type RefusalReason = (typeof REFUSAL_REASONS)[number];

/** A command (or a part of it) the agent will not run; `reason` is the metric label. */
export class CommandRefused extends Error {
  constructor(
    readonly reason: RefusalReason,
    message: string,
  ) {
    super(message);
  }
}

export interface HostLimits {
  cpus: number;
  memoryMib: number;
  /** This host's migration address and ports: an incoming URI must be one of them. */
  migrationAddress: string | null;
  migrationPorts: [number, number];
}

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const SHA256_RE = /^[0-9a-f]{64}$/;
const ID_RE = /^[A-Za-z0-9-]{1,64}$/;
const TOKEN_RE = /^[A-Za-z0-9_-]{1,64}$/; // console session and stream ids (URL-safe)
const KEY_RE = /^[A-Za-z0-9+/]{43}=$/;
const CMDLINE_RE = /^[\x20-\x7e]*$/;
const LOCATION_MAX_CHARS = 2048;

const KEYS: Record<Command['type'], readonly string[]> = {
  start: ['id', 'type', 'vm', 'disk_from', 'tls_psk'],
  incoming: ['id', 'type', 'vm', 'uri', 'tls_psk', 'nbd_port'],
  expect: ['id', 'type', 'mac'],
  'authorize-move': ['id', 'type', 'mac', 'site_key', 'ttl_ms'],
  migrate: ['id', 'type', 'name', 'uri', 'tls_psk', 'nbd'],
  confirm: ['id', 'type', 'name', 'resume', 'wait'],
  stop: ['id', 'type', 'name', 'discard'],
  export_disk: ['id', 'type', 'name', 'tls_psk', 'port'],
  snapshot: ['id', 'type', 'name', 'image'],
  console: ['id', 'type', 'name', 'session', 'stream', 'from'],
};

/** A value in an error message, bounded: a command is input, and messages end up in logs and results. */
function show(v: unknown): string {
  const text = JSON.stringify(v) ?? String(v);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function refuse(reason: RefusalReason, message: string): never {
  throw new CommandRefused(reason, message);
}

function object(v: unknown, what: string): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) refuse('bad_command', `${what} is not an object`);
  return v as Record<string, unknown>;
}

function onlyKeys(o: Record<string, unknown>, keys: readonly string[], what: string): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) refuse('bad_command', `${what}: unknown key "${k}"`);
}

export function checkVmName(v: unknown): string {
  if (typeof v !== 'string' || !NAME_RE.test(v)) refuse('bad_name', `vm name ${show(v)} is not valid`);
  return v as string;
}

export function checkMac(v: unknown): string {
  if (typeof v !== 'string' || !MAC_RE.test(v)) refuse('bad_mac', `${show(v)} is not a MAC like 02:68:77:00:00:01`);
  const mac = v as string;
  if (parseInt(mac.slice(0, 2), 16) & 1) refuse('bad_mac', `${mac} is a multicast MAC`);
  if (mac === '00:00:00:00:00:00') refuse('bad_mac', 'the all-zero MAC');
  return mac;
}

export function checkCmdline(v: unknown): string {
  if (typeof v !== 'string' || v.length > CMDLINE_MAX_CHARS || !CMDLINE_RE.test(v))
    refuse('bad_cmdline', `a kernel command line is printable ASCII of at most ${CMDLINE_MAX_CHARS} characters`);
  return v as string;
}

function int(v: unknown, what: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
    refuse('bad_size', `${what} ${show(v)} is not a whole number from ${min} to ${max}`);
  return v as number;
}

function checkImage(v: unknown): ImageRecord {
  const o = object(v, 'image');
  onlyKeys(o, ['name', 'kernel', 'initrd', 'disk', 'sha256', 'cmdline', 'warm', 'created_at'], 'image');
  if (typeof o.name !== 'string' || !NAME_RE.test(o.name)) refuse('bad_name', `image name ${show(o.name)}`);
  const sums = object(o.sha256, 'image sha256');
  onlyKeys(sums, ['kernel', 'initrd', 'disk'], 'image sha256');
  for (const f of ['kernel', 'initrd', 'disk'] as const) {
    if (f === 'disk' && o.disk === undefined && sums.disk === undefined) continue;
    const loc = o[f];
    if (typeof loc !== 'string' || loc.length === 0 || loc.length > LOCATION_MAX_CHARS)
      refuse('bad_image', `image ${o.name}: ${f} is not a location`);
    if (typeof sums[f] !== 'string' || !SHA256_RE.test(sums[f] as string))
      refuse('bad_image', `image ${o.name}: sha256.${f} is not 64 lower-case hex digits`);
  }
  if (o.cmdline !== undefined) checkCmdline(o.cmdline);
  if (o.warm !== undefined) checkWarm(o.warm, o.name as string);
  return o as unknown as ImageRecord;
}

const MANIFEST_TEXT_RE = /^[A-Za-z0-9._+-]{1,64}$/;

function checkBlobRef(v: unknown, what: string): void {
  const o = object(v, what);
  onlyKeys(o, ['sha256', 'bytes'], what);
  if (typeof o.sha256 !== 'string' || !SHA256_RE.test(o.sha256)) refuse('bad_image', `${what}: sha256`);
  int(o.bytes, `${what} bytes`, 0, IMAGE_FILE_MAX_BYTES);
}

/** A warm image's part of an image: blob hashes, the MAC in its memory and the manifest QEMU must match. */
function checkWarm(v: unknown, image: string): void {
  const w = object(v, `image ${image} warm`);
  onlyKeys(w, ['state', 'overlay', 'disk_gib', 'mac', 'source_vm', 'manifest'], `image ${image} warm`);
  checkBlobRef(w.state, `image ${image} warm state`);
  if (w.overlay !== null) checkBlobRef(w.overlay, `image ${image} warm overlay`);
  if (w.disk_gib !== null) int(w.disk_gib, 'disk_gib', 1, DISK_GIB_MAX);
  checkMac(w.mac);
  checkVmName(w.source_vm);
  const m = object(w.manifest, `image ${image} manifest`);
  onlyKeys(m, ['qemu', 'machine', 'cpu', 'accel', 'memory_mib', 'cpus', 'devices'], `image ${image} manifest`);
  for (const k of ['qemu', 'machine', 'cpu'] as const)
    if (typeof m[k] !== 'string' || !MANIFEST_TEXT_RE.test(m[k] as string)) refuse('bad_image', `manifest ${k}`);
  if (m.accel !== 'kvm' && m.accel !== 'tcg') refuse('bad_image', 'manifest accel');
  int(m.memory_mib, 'manifest memory_mib', VM_MEMORY_MIB_MIN, Number.MAX_SAFE_INTEGER);
  int(m.cpus, 'manifest cpus', 1, 1024);
  if (
    !Array.isArray(m.devices) ||
    m.devices.length > 16 ||
    m.devices.some((d) => typeof d !== 'string' || !MANIFEST_TEXT_RE.test(d))
  )
    refuse('bad_image', 'manifest devices');
}

function checkSpec(v: unknown, limits: HostLimits): LaunchSpec {
  const o = object(v, 'vm');
  onlyKeys(o, ['name', 'mac', 'cpus', 'memory_mib', 'image', 'image_sources', 'disk', 'clone'], 'vm');
  checkVmName(o.name);
  checkMac(o.mac);
  if (o.disk !== undefined && o.disk !== null) {
    const d = object(o.disk, 'vm disk');
    onlyKeys(d, ['gib'], 'vm disk');
    if (d.gib !== null) int(d.gib, 'disk gib', 1, DISK_GIB_MAX);
  }
  if (o.clone !== undefined && typeof o.clone !== 'boolean') refuse('bad_command', 'clone must be a boolean');
  int(o.cpus, 'cpus', 1, Math.max(1, limits.cpus));
  int(o.memory_mib, 'memory_mib', VM_MEMORY_MIB_MIN, Math.max(VM_MEMORY_MIB_MIN, limits.memoryMib));
  checkImage(o.image);
  if (!Array.isArray(o.image_sources) || o.image_sources.length > IMAGE_SOURCES_MAX)
    refuse('bad_image', `image_sources must be a list of at most ${IMAGE_SOURCES_MAX} entries`);
  for (const s of o.image_sources as unknown[]) {
    try {
      if (typeof s !== 'string') throw new Error('not a string');
      parseImageSource(s);
    } catch (err) {
      refuse('bad_image', `image_sources: ${(err as Error).message}`);
    }
  }
  return o as unknown as LaunchSpec;
}

function checkPsk(v: unknown): string {
  if (typeof v !== 'string' || !TLS_PSK_RE.test(v)) refuse('bad_key', 'tls_psk is not 64 lower-case hex digits');
  return v as string;
}

function checkUri(v: unknown): { address: string; port: number } {
  const p = parseMigrationUri(v);
  if (!p) refuse('bad_uri', `migration URI ${show(v)} is not tcp:IP:PORT`);
  return p!;
}

/** The command, checked; throws CommandRefused. */
export function checkCommand(raw: unknown, limits: HostLimits): Command {
  const o = object(raw, 'command');
  const type = o.type as Command['type'];
  if (typeof type !== 'string' || !Object.hasOwn(KEYS, type))
    refuse('bad_command', `unknown command type ${show(o.type)}`);
  onlyKeys(o, KEYS[type], `command ${type}`);
  if (typeof o.id !== 'string' || !ID_RE.test(o.id)) refuse('bad_command', 'command id');
  const [lo, hi] = limits.migrationPorts;
  switch (type) {
    case 'start':
      checkSpec(o.vm, limits);
      if (o.disk_from !== undefined) {
        // A cold copy: from another host's export of the overlay file, with this operation's key.
        const from = object(o.disk_from, 'disk_from');
        onlyKeys(from, ['host', 'port', 'export', 'bytes', 'sha256'], 'disk_from');
        if (!checkNbdEndpoint(from, [DISK_COPY_EXPORT])) refuse('bad_uri', 'disk_from is not IP, port and export');
        int(from.bytes, 'disk_from bytes', 0, IMAGE_FILE_MAX_BYTES);
        if (typeof from.sha256 !== 'string' || !SHA256_RE.test(from.sha256)) refuse('bad_image', 'disk_from sha256');
        checkPsk(o.tls_psk);
      } else if (o.tls_psk !== undefined) refuse('bad_command', 'tls_psk without disk_from');
      break;
    case 'incoming': {
      checkSpec(o.vm, limits);
      const { address, port } = checkUri(o.uri);
      if (limits.migrationAddress === null || !sameAddress(address, limits.migrationAddress) || port < lo || port > hi)
        refuse(
          'bad_uri',
          `incoming URI ${o.uri} is not this host's migration address ${limits.migrationAddress ?? '(none)'} with a port in ${lo}-${hi}`,
        );
      if (o.nbd_port !== undefined) {
        // The disk's mirror: the same address, another port of the range.
        const p = int(o.nbd_port, 'nbd_port', lo, hi);
        if (p === port) refuse('bad_uri', 'nbd_port is the migration port');
      }
      checkPsk(o.tls_psk);
      break;
    }
    case 'migrate':
      checkVmName(o.name);
      checkUri(o.uri);
      checkPsk(o.tls_psk);
      if (o.nbd !== undefined) {
        const nbd = checkNbdEndpoint(o.nbd, [NBD_EXPORT]);
        if (!nbd) refuse('bad_uri', 'nbd is not IP, port and export');
        onlyKeys(o.nbd as Record<string, unknown>, ['host', 'port', 'export'], 'nbd');
        if (!sameAddress(nbd!.host, checkUri(o.uri).address))
          refuse('bad_uri', "the disk's mirror must go where the migration goes");
      }
      break;
    case 'export_disk':
      checkVmName(o.name);
      checkPsk(o.tls_psk);
      int(o.port, 'port', lo, hi);
      break;
    case 'snapshot':
      checkVmName(o.name);
      if (typeof o.image !== 'string' || !NAME_RE.test(o.image)) refuse('bad_name', `image name ${show(o.image)}`);
      break;
    case 'expect':
      checkMac(o.mac);
      break;
    case 'authorize-move':
      checkMac(o.mac);
      if (typeof o.site_key !== 'string' || !KEY_RE.test(o.site_key) || Buffer.from(o.site_key, 'base64').length !== 32)
        refuse('bad_key', 'site_key is not a base64 Curve25519 public key');
      int(o.ttl_ms, 'ttl_ms', 1, AUTHORIZE_MOVE_TTL_MAX_MS);
      break;
    case 'confirm':
      checkVmName(o.name);
      if (o.resume !== undefined && typeof o.resume !== 'boolean') refuse('bad_command', 'resume must be a boolean');
      if (o.wait !== undefined && typeof o.wait !== 'boolean') refuse('bad_command', 'wait must be a boolean');
      break;
    case 'stop':
      checkVmName(o.name);
      if (o.discard !== undefined && typeof o.discard !== 'boolean') refuse('bad_command', 'discard must be a boolean');
      break;
    case 'console':
      checkVmName(o.name);
      if (typeof o.session !== 'string' || !TOKEN_RE.test(o.session)) refuse('bad_command', 'console session');
      if (o.stream !== undefined && (typeof o.stream !== 'string' || !TOKEN_RE.test(o.stream)))
        refuse('bad_command', 'console stream');
      if (o.from !== undefined) int(o.from, 'from', 0, Number.MAX_SAFE_INTEGER);
      break;
  }
  return o as unknown as Command;
}

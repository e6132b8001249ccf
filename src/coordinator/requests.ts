// Validation of VM requests (POST /v1/vms): shapes, ranges and formats, before anything is looked up. Every
// error is a 400 that names the key and says what a good value looks like.
import net from 'node:net';
import {
  VM_CPUS_MAX,
  VM_DEFAULT_CPUS,
  VM_DEFAULT_MEMORY_MIB,
  VM_MEMORY_MIB_MAX,
  VM_MEMORY_MIB_MIN,
} from './constants.ts';
import { checkCmdline, checkName } from './images.ts';
import { ApiError, type VmRecord } from './types.ts';

const CREATE_KEYS = [
  'name',
  'image',
  'cpus',
  'memory_mib',
  'mac',
  'ip',
  'host',
  'site',
  'labels',
  'cmdline',
  'disk_gib',
  'clone',
];
export const DISK_GIB_MAX = 65536;
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** A checked create request; `mac` and `ip` are still to be checked against the other VMs. */
export interface CreateRequest {
  name: string;
  image: string;
  cpus: number;
  memoryMib: number;
  placement: VmRecord['placement'];
  /** host: the VM starts there (until it is stopped and started elsewhere). */
  pinned?: string;
  cmdline?: string;
  mac?: string;
  ip?: string;
  /** Writable disk size in GiB; undefined: not asked (the image's base decides). */
  diskGib?: number;
  /** A warm image resumed as a second VM: a new MAC. */
  clone?: boolean;
}

export function parseCreate(body: unknown): CreateRequest {
  if (body === null || typeof body !== 'object' || Array.isArray(body))
    bad('the body must be a JSON object { name, image, ... }');
  const o = body as Record<string, unknown>;
  for (const k of Object.keys(o))
    if (!CREATE_KEYS.includes(k)) bad(`unknown key "${k}"; allowed: ${CREATE_KEYS.join(', ')}`);
  const placement: VmRecord['placement'] = {};
  if (o.site !== undefined) placement.site = str(o.site, 'site');
  if (o.labels !== undefined) placement.labels = labels(o.labels);
  return {
    name: checkName(o.name, 'vm'),
    image: checkName(o.image, 'image'),
    cpus: o.cpus === undefined ? VM_DEFAULT_CPUS : int(o.cpus, 'cpus', 1, VM_CPUS_MAX),
    memoryMib:
      o.memory_mib === undefined
        ? VM_DEFAULT_MEMORY_MIB
        : int(o.memory_mib, 'memory_mib', VM_MEMORY_MIB_MIN, VM_MEMORY_MIB_MAX),
    placement,
    ...(o.host === undefined ? {} : { pinned: str(o.host, 'host') }),
    ...(o.cmdline === undefined ? {} : { cmdline: checkCmdline(o.cmdline, 'cmdline') }),
    ...(o.mac === undefined ? {} : { mac: checkMac(o.mac) }),
    ...(o.ip === undefined || o.ip === null ? {} : { ip: checkIp(o.ip) }),
    ...(o.disk_gib === undefined || o.disk_gib === null
      ? {}
      : { diskGib: int(o.disk_gib, 'disk_gib', 1, DISK_GIB_MAX) }),
    ...(o.clone === undefined ? {} : { clone: bool(o.clone, 'clone') }),
  };
}

function bool(v: unknown, key: string): boolean {
  if (typeof v !== 'boolean') bad(`${key} must be true or false`);
  return v as boolean;
}

function bad(message: string): never {
  throw new ApiError(400, 'bad_request', message);
}

function int(v: unknown, key: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
    bad(`${key} must be a whole number from ${min} to ${max}`);
  return v as number;
}

function str(v: unknown, key: string): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > 1024) bad(`${key} must be a non-empty string`);
  return v as string;
}

function labels(v: unknown): Record<string, string> {
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    bad('labels must be an object of strings { "gpu": "yes" }');
  const out: Record<string, string> = {};
  for (const [k, x] of Object.entries(v as object)) out[k] = str(x, `labels.${k}`);
  return out;
}

/** A unicast MAC in lower case with colons ("02-68-..." is accepted). */
function checkMac(v: unknown): string {
  const mac = typeof v === 'string' ? v.toLowerCase().replace(/-/g, ':') : '';
  if (!MAC_RE.test(mac)) bad(`mac ${JSON.stringify(v)} is not a MAC address like 02:68:77:00:00:01`);
  if (parseInt(mac.slice(0, 2), 16) & 1) bad(`mac ${mac} is a multicast address: the first octet must be even`);
  return mac;
}

function checkIp(v: unknown): string {
  if (typeof v !== 'string' || net.isIPv4(v) === false)
    bad(`ip ${JSON.stringify(v)} is not an IPv4 address: give the home-network address to reserve`);
  return v as string;
}

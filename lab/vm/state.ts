// Reading a lab guest's state from outside, over the network (lab/guest-image.ts serves it with busybox httpd):
//   GET /cgi-bin/disk    the disk test re-read from the virtual disk (O_DIRECT): data SHA-256 vs the stored one,
//                        the counter's records and how many of them do not hold their number (gaps)
//   GET /cgi-bin/uptime  /proc/uptime's first field: seconds since the guest booted (a resumed guest continues)
// Used by test/vm-state-*.test.ts and bench/vm-state.ts.
import { DISK_MARK } from '../guest-image.ts';
import type { Lab } from '../topology.ts';

export interface DiskCheck {
  sha256: string;
  stored: string;
  mib: number;
  count: number;
  records: number;
  gaps: number;
}

export function parseDiskCheck(text: string): DiskCheck | null {
  const kv = Object.fromEntries([...text.matchAll(/(\w+)=(\S*)/g)].map((m) => [m[1], m[2]]));
  if (kv.sha256 === undefined || kv.gaps === undefined) return null;
  return {
    sha256: kv.sha256,
    stored: kv.stored ?? '',
    mib: Number(kv.mib),
    count: Number(kv.count),
    records: Number(kv.records),
    gaps: Number(kv.gaps),
  };
}

/** GET http://ip/cgi-bin/NAME from a namespace (curl); throws with what came back if it failed. */
export async function guestGet(lab: Lab, ns: string, ip: string, name: string, timeoutS = 120): Promise<string> {
  const r = await lab.exec(ns, ['curl', '-sS', '--max-time', String(timeoutS), `http://${ip}/cgi-bin/${name}`], {
    timeoutMs: (timeoutS + 5) * 1000,
  });
  if (r.code !== 0) throw new Error(`GET /cgi-bin/${name} on ${ip} from ${ns} failed: ${r.stderr.trim() || r.stdout}`);
  return r.stdout.trim();
}

export async function diskCheck(lab: Lab, ns: string, ip: string): Promise<DiskCheck> {
  const text = await guestGet(lab, ns, ip, 'disk');
  const c = parseDiskCheck(text);
  if (!c) throw new Error(`the guest's disk check answered ${JSON.stringify(text)}`);
  return c;
}

export async function guestUptime(lab: Lab, ns: string, ip: string): Promise<number> {
  const text = await guestGet(lab, ns, ip, 'uptime', 20);
  const s = Number(text);
  if (!Number.isFinite(s)) throw new Error(`the guest's uptime answered ${JSON.stringify(text)}`);
  return s;
}

/** The DISK_MARK line of a serial log: the disk test's data is in place. */
export function diskMark(serial: string): { sha256: string; mib: number; fresh: boolean } | null {
  const m = new RegExp(`${DISK_MARK} sha256=(\\w+) mib=(\\d+) fresh=(\\d)`).exec(serial);
  return m ? { sha256: m[1], mib: Number(m[2]), fresh: m[3] === '1' } : null;
}

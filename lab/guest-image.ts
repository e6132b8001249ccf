// A tiny QEMU guest for the lab: Debian's kernel (as an uncompressed vmlinux, which QEMU boots by PVH) and a
// gzip'd cpio initramfs with busybox-static, the virtio_net module chain and an init script. Built once and
// cached; see ../../shared/notes/vm-testbed.md for why each choice (vmlinux not bzImage, virtio not e1000).
//
//   kernel   apt-get download linux-image-<version>-amd64 (resolved from the linux-image-amd64 metapackage),
//            unpack only /boot/vmlinuz-* and the virtio .ko files, decompress the bzImage payload (xz).
//   initrd   /init (below), /bin/busybox (static), /lib/modules/*.ko, /etc/udhcpc.script, /dev/console.
//
// The guest's init, in order: mount proc/sys/dev, insmod the virtio chain, bring up lo and eth0, then either a
// static address (kernel argument hw.ip=ADDR/LEN) or `udhcpc` until it gets a lease; prints one line
//   HOMEWIRE-LEASE ip=198.51.100.123 mask=24 router=... server=... lease=... mtu=...
// to the serial console (ttyS0), starts its services and prints HOMEWIRE-READY ip=ADDR; then it watches eth0's
// MAC and takes a new lease when a NIC with another MAC appears (a clone; HOMEWIRE-RENEWED). Services for tests:
// the kernel answers ping; TCP port 7 echoes (busybox nc -ll -e cat), so a connection can be held through a
// live migration; TCP port 80 serves one page (busybox httpd). Then it runs a shell on ttyS0 with the prompt
// GUEST_PROMPT (the serial console tests type into it).
//
// Cache: /var/cache/homewire-lab (root) or <tmpdir>/homewire-lab, one directory per kernel package and content
// hash, written to a temporary name and renamed, so concurrent builders never see a half-written image.
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';

/** Load order of the virtio NIC modules (`modprobe --show-depends virtio_net virtio_pci`), each a .ko file. */
export const VIRTIO_MODULES = [
  'virtio_ring',
  'virtio',
  'failover',
  'net_failover',
  'virtio_net',
  'virtio_pci_modern_dev',
  'virtio_pci_legacy_dev',
  'virtio_pci',
] as const;
/** The virtio disk driver (after the chain above: it needs virtio and virtio_ring). */
export const DISK_MODULES = ['virtio_blk'] as const;
const ALL_MODULES = [...VIRTIO_MODULES, ...DISK_MODULES];

export const GUEST_ECHO_PORT = 7;
export const GUEST_HTTP_PORT = 80;
/** Serial-console markers the init script prints (tests wait for these). */
export const LEASE_MARK = 'HOMEWIRE-LEASE';
export const READY_MARK = 'HOMEWIRE-READY';
/** `HOMEWIRE-RENEWED mac=M`: the guest found a NIC with a new MAC (a clone) and took a new DHCP lease for it. */
export const RENEW_MARK = 'HOMEWIRE-RENEWED';
/** `HOMEWIRE-DISK sha256=HEX mib=N fresh=0|1`: the disk test data is in place and the counter runs. */
export const DISK_MARK = 'HOMEWIRE-DISK';

/**
 * The guest's disk test (kernel argument hw.disk=MIB, a virtio disk of at least 64 + MIB MiB as /dev/vda, raw:
 * no file system): MIB MiB of random data from 64 MiB on, with its SHA-256 in the sector at 16 MiB (written
 * once: a disk that has them already keeps them), then a counter: record i (the number and a newline, one
 * 512-byte sector, O_DIRECT so it reaches the virtual disk at once) at sector 65536 + i (32 MiB on; room for
 * 65,535 records, 11 minutes), one every 10 ms. `GET /cgi-bin/disk` re-reads both from the disk (O_DIRECT)
 * and answers `sha256=HEX stored=HEX mib=N count=N records=N gaps=N` (gaps: records not holding their number).
 */
export const DISK_LAYOUT = { dataMib: 64, sumSector: 32768, counterSector: 65536 } as const;
/** The prompt of the shell the init runs on the serial console after READY_MARK. */
export const GUEST_PROMPT = 'hw-guest# ';

export interface GuestImage {
  kernel: string; // uncompressed vmlinux
  initrd: string; // gzip'd newc cpio
  kernelVersion: string; // "6.1.0-56-amd64"
  dir: string;
}

export interface GuestImageOptions {
  /** Cache directory (default /var/cache/homewire-lab if writable, else <tmpdir>/homewire-lab). */
  cacheDir?: string;
  /** Kernel image package (default: what linux-image-amd64 depends on). */
  kernelPackage?: string;
  busybox?: string; // default /bin/busybox, which must be statically linked (busybox-static)
  log?: (msg: string) => void;
}

const INIT = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /www /usr/bin /sbin /usr/sbin
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in ${ALL_MODULES.join(' ')}; do insmod /lib/modules/$m.ko || echo "HOMEWIRE-ERROR insmod $m"; done
ip link set lo up
n=0
while ! ip link show eth0 >/dev/null 2>&1; do
  n=$((n + 1)); [ $n -gt 100 ] && { echo "HOMEWIRE-ERROR no eth0"; break; }; usleep 20000
done
ip link set eth0 up
static=$(sed -n 's/.*hw\\.ip=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
if [ -n "$static" ]; then
  ip addr add "$static" dev eth0
  echo "${LEASE_MARK} ip=\${static%/*} mask=\${static#*/} static=1"
else
  until udhcpc -i eth0 -f -q -n -t 5 -T 1 -s /etc/udhcpc.script; do echo "HOMEWIRE-DHCP-RETRY"; done
fi
echo "<p>homewire lab guest</p>" > /www/index.html
httpd -p ${GUEST_HTTP_PORT} -h /www
nc -ll -p ${GUEST_ECHO_PORT} -e cat &
addr=$(ip -4 -o addr show dev eth0 | sed -n 's/.* inet \\([0-9.]*\\).*/\\1/p')
echo "${READY_MARK} ip=$addr uptime=$(cut -d" " -f1 /proc/uptime)"
disk=$(sed -n 's/.*hw\\.disk=\\([0-9]*\\).*/\\1/p' /proc/cmdline)
[ -n "$disk" ] && hw-disk boot "$disk" &
# QEMU 7.2 under TCG loses guest writes made through TLB entries that outlive a migration's dirty-bitmap sync
# (fixed in QEMU 9.0); a context switch every 10 ms makes QEMU flush them (a CR3 write flushes its TLB).
(while :; do usleep 10000; done) &
# A NIC with another MAC (a clone of a warm image gets one): renew the lease for it.
if [ -z "$static" ]; then
  (mac=$(cat /sys/class/net/eth0/address 2>/dev/null)
  while :; do
    sleep 1; m=$(cat /sys/class/net/eth0/address 2>/dev/null)
    if [ -n "$m" ] && [ "$m" != "$mac" ]; then
      mac=$m; ip link set eth0 up
      until udhcpc -i eth0 -f -q -n -t 5 -T 1 -s /etc/udhcpc.script; do :; done
      echo "${RENEW_MARK} mac=$m"
    fi
  done) &
fi
# A shell on the serial console (homewire vm console, the web page's terminal), respawned when it exits;
# cttyhack makes ttyS0 its controlling terminal, so Ctrl-C reaches what it runs.
export PS1='${GUEST_PROMPT}'
while :; do setsid cttyhack sh -i; usleep 200000; done
`;

// /bin/hw-disk boot MIB | check: the disk test (DISK_LAYOUT).
const HW_DISK = `#!/bin/sh
D=/dev/vda
DATA_MIB=${DISK_LAYOUT.dataMib}
SUM=${DISK_LAYOUT.sumSector}
CNT=${DISK_LAYOUT.counterSector}
stored() { dd if=$D bs=512 skip=$SUM count=1 iflag=direct 2>/dev/null | tr -d '\\000' | head -n 1; }
case "$1" in
boot)
  n=0; while [ ! -b $D ]; do n=$((n + 1)); [ $n -gt 100 ] && { echo "HOMEWIRE-ERROR no $D"; exit 1; }; usleep 20000; done
  mib=$2
  set -- $(stored)
  if [ "$1" = HWSHA ]; then
    echo "${DISK_MARK} sha256=$2 mib=$3 fresh=0"
  else
    dd if=/dev/urandom of=$D bs=1M count=$mib seek=$DATA_MIB oflag=direct 2>/dev/null
    sha=$(dd if=$D bs=1M count=$mib skip=$DATA_MIB iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
    printf 'HWSHA %s %s\\n' $sha $mib | dd of=$D bs=512 seek=$SUM count=1 conv=sync,notrunc oflag=direct 2>/dev/null
    echo "${DISK_MARK} sha256=$sha mib=$mib fresh=1"
  fi
  i=0
  while [ $i -lt 65535 ]; do
    i=$((i + 1))
    printf '%d\\n' $i | dd of=$D bs=512 seek=$((CNT + i)) count=1 conv=sync,notrunc oflag=direct 2>/dev/null
    echo $i > /run/counter
    usleep 10000
  done ;;
check)
  set -- $(stored)
  sha=$(dd if=$D bs=1M count=$3 skip=$DATA_MIB iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
  n=$(cat /run/counter 2>/dev/null || echo 0)
  r=$(dd if=$D bs=512 skip=$((CNT + 1)) count=$n iflag=direct 2>/dev/null | tr -d '\\000' |
    awk 'BEGIN { bad = 0 } { if ($1 != NR) bad++ } END { print NR, bad }')
  echo "sha256=$sha stored=$2 mib=$3 count=$n records=\${r% *} gaps=\${r#* }" ;;
esac
`;

const CGI_UPTIME = '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n"\ncut -d" " -f1 /proc/uptime\n';
const CGI_DISK = '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n"\nexec hw-disk check\n';

// udhcpc calls this with $1 = deconfig|bound|renew|nak and the lease in the environment ($ip, $mask, ...).
const UDHCPC_SCRIPT = `#!/bin/sh
case "$1" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/\${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "\${router%% *}" dev "$interface"
    echo "${LEASE_MARK} ip=$ip mask=\${mask:-24} router=\${router:-none} server=\${serverid:-none} lease=\${lease:-0} mtu=\${mtu:-default}" > /dev/console ;;
esac
exit 0
`;

export function defaultCacheDir(): string {
  const system = '/var/cache/homewire-lab';
  try {
    fs.mkdirSync(system, { recursive: true });
    fs.accessSync(system, fs.constants.W_OK);
    return system;
  } catch {
    return path.join(os.tmpdir(), 'homewire-lab');
  }
}

/** Builds (or finds in the cache) the guest kernel and initramfs. Throws with what to install on failure. */
export function buildGuestImage(opts: GuestImageOptions = {}): GuestImage {
  const log = opts.log ?? (() => {});
  const cacheDir = opts.cacheDir ?? defaultCacheDir();
  fs.mkdirSync(cacheDir, { recursive: true });
  const busybox = opts.busybox ?? '/bin/busybox';
  checkStaticBusybox(busybox);
  const pkg = opts.kernelPackage ?? resolveKernelPackage(cacheDir);
  const kernelDir = path.join(cacheDir, pkg);
  if (!fs.existsSync(path.join(kernelDir, 'vmlinux'))) fetchKernel(pkg, kernelDir, log);
  const kernelVersion = fs.readFileSync(path.join(kernelDir, 'version'), 'utf8').trim();

  if (ALL_MODULES.some((m) => !fs.existsSync(path.join(kernelDir, 'modules', `${m}.ko`))))
    fetchModules(pkg, kernelDir, log); // a kernel cached before the disk driver was needed
  const hash = crypto
    .createHash('sha256')
    .update(INIT)
    .update(UDHCPC_SCRIPT)
    .update(HW_DISK)
    .update(CGI_UPTIME)
    .update(CGI_DISK)
    .update(fs.readFileSync(busybox));
  for (const m of ALL_MODULES) hash.update(fs.readFileSync(path.join(kernelDir, 'modules', `${m}.ko`)));
  const dir = path.join(kernelDir, `initrd-${hash.digest('hex').slice(0, 12)}`);
  const initrd = path.join(dir, 'initrd.cpio.gz');
  if (!fs.existsSync(initrd)) {
    log(`guest image: writing ${initrd}`);
    const cpio = new CpioWriter();
    for (const d of ['bin', 'dev', 'etc', 'lib', 'lib/modules', 'proc', 'sys', 'tmp', 'run', 'www', 'www/cgi-bin'])
      cpio.dir(d);
    cpio.charDevice('dev/console', 5, 1, 0o600);
    cpio.file('init', Buffer.from(INIT), 0o755);
    cpio.file('bin/busybox', fs.readFileSync(busybox), 0o755);
    cpio.symlink('bin/sh', 'busybox');
    cpio.file('etc/udhcpc.script', Buffer.from(UDHCPC_SCRIPT), 0o755);
    cpio.file('bin/hw-disk', Buffer.from(HW_DISK), 0o755);
    cpio.file('www/cgi-bin/uptime', Buffer.from(CGI_UPTIME), 0o755);
    cpio.file('www/cgi-bin/disk', Buffer.from(CGI_DISK), 0o755);
    for (const m of ALL_MODULES)
      cpio.file(`lib/modules/${m}.ko`, fs.readFileSync(path.join(kernelDir, 'modules', `${m}.ko`)), 0o644);
    atomicWrite(initrd, zlib.gzipSync(cpio.end(), { level: 6 }));
  }
  return { kernel: path.join(kernelDir, 'vmlinux'), initrd, kernelVersion, dir };
}

// ---- the kernel ------------------------------------------------------------------------------------

/** linux-image-amd64 → the versioned package it depends on (needs apt lists: apt-get update). */
function resolveKernelPackage(cacheDir: string): string {
  const r = spawnSync('apt-cache', ['depends', 'linux-image-amd64'], { encoding: 'utf8' });
  const m = /Depends:\s*(linux-image-[0-9][^\s]*-amd64)\b/.exec(r.stdout ?? '');
  if (m) return m[1];
  // No apt lists (or no apt): a kernel cached by an earlier run still does.
  const cached = fs.existsSync(cacheDir)
    ? fs
        .readdirSync(cacheDir)
        .filter((d) => d.startsWith('linux-image-') && fs.existsSync(path.join(cacheDir, d, 'vmlinux')))
        .sort()
    : [];
  if (cached.length) return cached[cached.length - 1];
  throw new Error(
    'cannot resolve the Debian kernel package: `apt-cache depends linux-image-amd64` names none (run apt-get update)',
  );
}

function fetchKernel(pkg: string, kernelDir: string, log: (msg: string) => void): void {
  const work = fs.mkdtempSync(path.join(path.dirname(kernelDir), '.fetch-'));
  try {
    log(`guest image: apt-get download ${pkg}`);
    must('apt-get', ['download', '-q', pkg], work);
    const deb = fs.readdirSync(work).find((f) => f.endsWith('.deb'));
    if (!deb) throw new Error(`apt-get download ${pkg} left no .deb in ${work}`);
    // Only what we need: the bzImage and the virtio .ko files (the whole package unpacks to ~400 MB).
    const patterns = ['./boot/vmlinuz-*', ...ALL_MODULES.map((m) => `*/${m}.ko`)];
    must(
      'sh',
      ['-c', `dpkg-deb --fsys-tarfile "$1" | tar -x --wildcards ${patterns.map((p) => `'${p}'`).join(' ')}`, 'sh', deb],
      work,
    );
    const vmlinuz = fs.readdirSync(path.join(work, 'boot')).find((f) => f.startsWith('vmlinuz-'));
    if (!vmlinuz) throw new Error(`${deb} holds no /boot/vmlinuz-*`);
    const version = vmlinuz.slice('vmlinuz-'.length);
    const staging = path.join(work, 'out');
    fs.mkdirSync(path.join(staging, 'modules'), { recursive: true });
    for (const m of ALL_MODULES) {
      const found = findFile(path.join(work, 'lib', 'modules', version), `${m}.ko`);
      if (!found) throw new Error(`${deb} has no ${m}.ko (is it compressed, .ko.xz? then insmod needs it unpacked)`);
      fs.copyFileSync(found, path.join(staging, 'modules', `${m}.ko`));
    }
    log(`guest image: decompressing ${vmlinuz}`);
    fs.writeFileSync(
      path.join(staging, 'vmlinux'),
      extractVmlinux(fs.readFileSync(path.join(work, 'boot', vmlinuz)), work),
    );
    fs.writeFileSync(path.join(staging, 'version'), `${version}\n`);
    try {
      fs.renameSync(staging, kernelDir);
    } catch (err) {
      // Another builder finished first (rename onto a non-empty directory fails): keep theirs, which may be in use.
      if (!fs.existsSync(path.join(kernelDir, 'vmlinux'))) throw err;
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

/** Adds modules missing from a cached kernel directory (each file written under a temporary name, then renamed). */
function fetchModules(pkg: string, kernelDir: string, log: (msg: string) => void): void {
  const version = fs.readFileSync(path.join(kernelDir, 'version'), 'utf8').trim();
  const missing = ALL_MODULES.filter((m) => !fs.existsSync(path.join(kernelDir, 'modules', `${m}.ko`)));
  const work = fs.mkdtempSync(path.join(path.dirname(kernelDir), '.fetch-'));
  try {
    log(`guest image: apt-get download ${pkg} for ${missing.join(', ')}`);
    must('apt-get', ['download', '-q', pkg], work);
    const deb = fs.readdirSync(work).find((f) => f.endsWith('.deb'));
    if (!deb) throw new Error(`apt-get download ${pkg} left no .deb in ${work}`);
    const patterns = missing.map((m) => `'*/${m}.ko'`).join(' ');
    must('sh', ['-c', `dpkg-deb --fsys-tarfile "$1" | tar -x --wildcards ${patterns}`, 'sh', deb], work);
    for (const m of missing) {
      const found = findFile(path.join(work, 'lib', 'modules', version), `${m}.ko`);
      if (!found) throw new Error(`${deb} has no ${m}.ko for kernel ${version}`);
      atomicWrite(path.join(kernelDir, 'modules', `${m}.ko`), fs.readFileSync(found));
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

/**
 * The uncompressed ELF kernel inside a bzImage. The x86 boot header (Documentation/arch/x86/boot.rst) gives
 * the payload's place: it starts payload_offset (0x248) bytes into the protected-mode code, which follows
 * (setup_sects + 1) * 512 bytes of real-mode setup. Debian compresses it with xz (with the x86 BCJ filter,
 * which busybox unxz lacks): Python's lzma, or xz-utils, unpack it.
 */
export function extractVmlinux(bzImage: Buffer, workDir: string): Buffer {
  if (bzImage.length < 0x250 || bzImage.toString('latin1', 0x202, 0x206) !== 'HdrS')
    throw new Error('not a bzImage (no HdrS boot header)');
  const setupSects = bzImage[0x1f1] || 4;
  const start = (setupSects + 1) * 512 + bzImage.readUInt32LE(0x248);
  const payload = bzImage.subarray(start, start + bzImage.readUInt32LE(0x24c));
  const file = path.join(workDir, 'payload');
  fs.writeFileSync(file, payload);
  let out: Buffer | null = null;
  if (payload.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) {
    const py = spawnSync(
      'python3',
      [
        '-c',
        'import lzma,sys; d=lzma.LZMADecompressor(lzma.FORMAT_XZ); sys.stdout.buffer.write(d.decompress(open(sys.argv[1],"rb").read()))',
        file,
      ],
      { maxBuffer: 1 << 30 },
    );
    if (py.status === 0) out = py.stdout;
    else {
      // xz-utils: the payload ends in 4 bytes of uncompressed size, so xz reports "unexpected end" after writing it all.
      const xz = spawnSync('xz', ['-dc', file], { maxBuffer: 1 << 30 });
      if (xz.stdout?.length) out = xz.stdout;
    }
    if (!out) throw new Error('cannot decompress the kernel: install python3 or xz-utils');
  } else if (payload[0] === 0x1f && payload[1] === 0x8b) {
    out = zlib.gunzipSync(payload, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
  } else {
    throw new Error(`unsupported kernel compression (payload magic ${payload.subarray(0, 6).toString('hex')})`);
  }
  if (out.length < 4 || out.readUInt32BE(0) !== 0x7f454c46)
    throw new Error('the decompressed kernel is not an ELF file');
  return out;
}

// ---- the initramfs ---------------------------------------------------------------------------------

/** A newc ("070701") cpio archive writer: enough for an initramfs (files, dirs, symlinks, device nodes). */
export class CpioWriter {
  private readonly parts: Buffer[] = [];
  private ino = 1;

  dir(name: string, mode = 0o755): void {
    this.entry(name, 0o040000 | mode, Buffer.alloc(0));
  }
  file(name: string, data: Buffer, mode = 0o644): void {
    this.entry(name, 0o100000 | mode, data);
  }
  symlink(name: string, target: string): void {
    this.entry(name, 0o120000 | 0o777, Buffer.from(target));
  }
  charDevice(name: string, major: number, minor: number, mode = 0o600): void {
    this.entry(name, 0o020000 | mode, Buffer.alloc(0), major, minor);
  }

  end(): Buffer {
    this.entry('TRAILER!!!', 0, Buffer.alloc(0));
    return Buffer.concat(this.parts);
  }

  private entry(name: string, mode: number, data: Buffer, rdevMajor = 0, rdevMinor = 0): void {
    const nameBytes = Buffer.from(`${name}\0`);
    const fields = [
      this.ino++,
      mode,
      0,
      0,
      (mode & 0o170000) === 0o040000 ? 2 : 1,
      0,
      data.length,
      0,
      0,
      rdevMajor,
      rdevMinor,
      nameBytes.length,
      0,
    ];
    const header = Buffer.from(`070701${fields.map((f) => f.toString(16).padStart(8, '0')).join('')}`, 'latin1');
    this.parts.push(header, nameBytes, pad4(header.length + nameBytes.length), data, pad4(data.length));
  }
}

function pad4(n: number): Buffer {
  return Buffer.alloc((4 - (n % 4)) % 4);
}

// ---- helpers ---------------------------------------------------------------------------------------

function checkStaticBusybox(busybox: string): void {
  if (!fs.existsSync(busybox)) throw new Error(`${busybox} is missing: apt-get install busybox-static`);
  const head = Buffer.alloc(4096);
  const fd = fs.openSync(busybox, 'r');
  try {
    fs.readSync(fd, head, 0, head.length, 0);
  } finally {
    fs.closeSync(fd);
  }
  // A dynamically linked ELF names its interpreter (/lib64/ld-linux-x86-64.so.2) near the start.
  if (head.includes('ld-linux')) throw new Error(`${busybox} is dynamically linked: apt-get install busybox-static`);
}

function must(cmd: string, args: string[], cwd: string): void {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8' });
  if (r.status !== 0)
    throw new Error(`\`${cmd} ${args.join(' ')}\` failed: ${(r.stderr || r.stdout || String(r.error)).trim()}`);
}

function findFile(dir: string, name: string): string | null {
  if (!fs.existsSync(dir)) return null;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) {
      const f = findFile(p, name);
      if (f) return f;
    } else if (e.name === name) return p;
  }
  return null;
}

function atomicWrite(file: string, data: Buffer): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, file);
}

// `npx tsx lab/guest-image.ts`: build (or find) the image and print where it is.
if (import.meta.url === `file://${process.argv[1]}`) {
  const img = buildGuestImage({ log: (m) => process.stderr.write(`${m}\n`) });
  process.stdout.write(`${JSON.stringify(img, null, 2)}\n`);
}

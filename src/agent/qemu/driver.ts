// The QEMU driver of the lab and the coordinator: launch a guest (optionally inside a network namespace, its
// TAP joined to a bridge there), wait for serial-console output, live-migrate it, stop it.
//
//   const vm = await launch({ name, kernel, initrd, mac, tap: 'vmtap0', qmpSocket, serialLog, netns, bridge });
//   await vm.waitSerial(/HOMEWIRE-READY ip=(\S+)/);
//   const dst = await launch({ ...same, incoming: 'tcp:192.0.2.3:4444' });
//   const r = await vm.migrate('tcp:192.0.2.3:4444');   // polls query-migrate until completed
//   await vm.stop();
//   const again = await attach(opts, pid, startTime);  // a QEMU an earlier process launched (detached: true)
//
// Encrypted migration (TLS with a pre-shared key; what the host agent always uses):
//   writePskDir(dir, key)                                  // on both hosts: DIR/keys.psk = "qemu:<hex key>"
//   const dst = await launch({ ...same, incoming: 'defer', tlsPskDir: dir });
//   await dst.incomingTls('tcp:192.0.2.3:4444');           // listens; only a client holding the key gets in
//   await vm.migrate('tcp:192.0.2.3:4444', { tlsPskDir: dir });
//
// Confinement: every QEMU runs under `-sandbox on` (seccomp: obsolete, spawn and resource-control system calls
// denied) and, with runAs, drops to that UID:GID once it has opened its TAP, sockets and files. The sandbox
// keeps set*id allowed only because -runas calls it after the filter is installed (elevateprivileges=deny
// kills QEMU 7.2 with SIGSYS at -runas; measured).
//
// The command shape and its pitfalls are measured in shared/notes/vm-testbed.md: TCG unless the CPU itself has
// vmx/svm (this machine's /dev/kvm is paravirtual and hangs a stock kernel), `-m 128` (64 does not boot), the
// uncompressed vmlinux, virtio-net without an option ROM, and QEMU's output redirected to a file.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { optPath } from './disks.ts';
import { AdoptedQemu, ChildQemu, type QemuProcess } from './process.ts';
import { Qmp, type QmpEvent } from './qmp.ts';

export type Accel = 'kvm' | 'tcg';

export interface LaunchOptions {
  name: string;
  kernel: string;
  initrd: string;
  /** Kernel command line after "console=ttyS0" (default "quiet"). */
  append?: string;
  mac: string;
  /** TAP interface name QEMU creates (at most 15 characters). */
  tap: string;
  memMb?: number; // default 128
  cpus?: number; // default 1
  qmpSocket: string;
  serialLog: string;
  /** Also put the serial port on this unix socket (QEMU listens; one client, e.g. the agent's SerialConsole).
   *  Without it the serial port goes to serialLog only. */
  serialSocket?: string;
  /**
   * Wait for a migration stream instead of booting: 'tcp:ADDR:PORT' or 'unix:PATH', or 'defer' (the stream's
   * URI comes later with QMP migrate-incoming, after capabilities and TLS are set).
   */
  incoming?: string;
  /** -S: do not run the CPUs until QMP cont (a storage migration's destination resumes after nbd-server-stop). */
  paused?: boolean;
  /** Machine type (default pc; the agent pins the versioned type, e.g. pc-i440fx-7.2, for warm images). */
  machine?: string;
  /** CPU model (default: host with KVM, max with TCG). */
  cpu?: string;
  /** A writable qcow2 overlay as virtio disk node "disk0" (or a read-only raw/qcow2 file). */
  disk?: { file: string; format: 'qcow2' | 'raw'; readOnly?: boolean };
  /** TLS credentials (pre-shared key) object "mtls" for migration and NBD streams. */
  tls?: { dir: string; endpoint: 'server' | 'client'; identity: string };
  /** QEMU binary (default qemu-system-x86_64). */
  binary?: string;
  /**
   * The NIC goes nowhere (a TAP "<tap>x" left down) and the TAP waits unplugged: a clone of a warm image loads a NIC with the
   * original's MAC in its state, which must never reach the network; it is replaced by one on the TAP.
   */
  nicDetached?: boolean;
  /** Own session and process group: the guest outlives this process and its signals (the host agent). */
  detached?: boolean;
  /** Destination of an encrypted migration: the directory holding keys.psk (writePskDir; the lab's guests). */
  tlsPskDir?: string;
  /** Seccomp sandbox (default true). */
  sandbox?: boolean;
  /** Drop to this "UID:GID" after setup (QEMU 7.2's -runas; QEMU 9 spells it -run-with user=). */
  runAs?: string;
  /** Run QEMU inside this network namespace (`ip netns exec`), so its TAP is made there. */
  netns?: string;
  /** Join the TAP to this bridge (in netns) and set it up once QEMU has made it. */
  bridge?: string;
  /** MTU of the TAP (set before it joins the bridge). */
  tapMtu?: number;
  accel?: Accel;
  /** QEMU's own stdout/stderr (default: serialLog + '.qemu'). */
  qemuLog?: string;
  extraArgs?: string[];
}

export interface MigrationResult {
  status: string;
  /** QEMU's figures from query-migrate. */
  totalTimeMs: number;
  downtimeMs: number;
  setupTimeMs: number;
  ramTransferredBytes: number;
  /** Wall clock (ms since the epoch) around the migrate command and its completion as polled. */
  startedAtMs: number;
  completedAtMs: number;
  /** The source's STOP event (the guest paused for the last copy), QEMU's timestamp; null if not seen. */
  stoppedAtMs: number | null;
}

let accelCache: Accel | null = null;

/** KVM only when the CPU advertises vmx/svm and /dev/kvm exists; a paravirtual /dev/kvm alone means TCG. */
export function detectAccel(): Accel {
  if (accelCache) return accelCache;
  let flags = '';
  try {
    flags = fs.readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    /* not Linux */
  }
  accelCache = /^flags\s*:.*\b(vmx|svm)\b/m.test(flags) && fs.existsSync('/dev/kvm') ? 'kvm' : 'tcg';
  return accelCache;
}

export function qemuBinary(): string {
  return 'qemu-system-x86_64';
}

/** The node name of a guest's disk (its qcow2 overlay), which mirrors, exports and snapshots address. */
export const DISK_NODE = 'disk0';
/** The id of the TLS credentials object a destination is launched with (argv; it stays in that QEMU). */
export const TLS_OBJECT = 'mtls';
/** The id of the client credentials a source adds for one outgoing migration (object-add, then object-del). */
export const TLS_OUT_OBJECT = 'mtls-out';

/** The CPU model a guest gets on this accelerator unless told otherwise. */
export function defaultCpu(accel: Accel): string {
  return accel === 'kvm' ? 'host' : 'max';
}

/** The QEMU argument list for a guest (without the binary). */
export function qemuArgs(o: LaunchOptions): string[] {
  const accel = o.accel ?? detectAccel();
  const args = [
    '-name',
    o.name,
    '-accel',
    accel,
    '-cpu',
    o.cpu ?? defaultCpu(accel),
    '-M',
    o.machine ?? 'pc',
    '-m',
    String(o.memMb ?? 128),
    '-smp',
    String(o.cpus ?? 1),
    '-display',
    'none',
    '-nodefaults',
    '-no-user-config',
    '-no-reboot',
    ...(o.serialSocket
      ? [
          '-chardev',
          `socket,id=ser0,path=${optPath(o.serialSocket)},server=on,wait=off,logfile=${optPath(o.serialLog)},logappend=on`,
          '-serial',
          'chardev:ser0',
        ]
      : ['-serial', `file:${o.serialLog}`]),
    '-qmp',
    `unix:${o.qmpSocket},server=on,wait=off`,
    '-kernel',
    o.kernel,
    '-initrd',
    o.initrd,
    '-append',
    `console=ttyS0 ${o.append ?? 'quiet'}`,
    '-netdev',
    `tap,id=n0,ifname=${o.tap},script=no,downscript=no`,
    // nicDetached: the NIC sits on a second TAP that stays down and joins no bridge (it must be a TAP: a saved
    // virtio-net needs vnet headers); the real TAP waits for a NIC plugged in later.
    ...(o.nicDetached ? ['-netdev', `tap,id=nx,ifname=${o.tap}x,script=no,downscript=no`] : []),
    '-device',
    `virtio-net-pci,netdev=${o.nicDetached ? 'nx' : 'n0'},mac=${o.mac},romfile=,id=net0`,
  ];
  if (o.disk) {
    // Node names, not -drive: mirrors, NBD exports and snapshots address the format node "disk0".
    args.push(
      '-blockdev',
      `driver=file,filename=${optPath(o.disk.file)},node-name=${DISK_NODE}-file${o.disk.readOnly ? ',read-only=on' : ''}`,
      '-blockdev',
      `driver=${o.disk.format},file=${DISK_NODE}-file,node-name=${DISK_NODE}${o.disk.readOnly ? ',read-only=on' : ''}`,
      '-device',
      `virtio-blk-pci,drive=${DISK_NODE},id=vd0`,
    );
  }
  if (o.tls)
    args.push(
      '-object',
      // The server side takes no username (QEMU refuses one): it looks the client's identity up in keys.psk.
      `tls-creds-psk,id=${TLS_OBJECT},endpoint=${o.tls.endpoint},dir=${optPath(o.tls.dir)}${o.tls.endpoint === 'client' ? `,username=${o.tls.identity}` : ''}`,
    );
  if (o.tlsPskDir)
    args.push('-object', `tls-creds-psk,id=${TLS_SERVER_ID},endpoint=server,dir=${safeOptionValue(o.tlsPskDir)}`);
  if (o.paused) args.push('-S');
  if (o.incoming) args.push('-incoming', o.incoming);
  if (o.sandbox !== false) args.push('-sandbox', 'on,obsolete=deny,spawn=deny,resourcecontrol=deny');
  if (o.runAs) {
    if (!/^[1-9]\d*:[1-9]\d*$/.test(o.runAs)) throw new Error(`runAs "${o.runAs}" is not UID:GID (not root)`);
    args.push('-runas', o.runAs);
  }
  if (o.extraArgs) args.push(...o.extraArgs);
  return args;
}

/** The id of the destination's TLS credentials object (-object tls-creds-psk). */
const TLS_SERVER_ID = 'migtls';
/** The PSK identity both ends use (QEMU's default username). */
const TLS_PSK_USER = 'qemu';

/** A path inside a QEMU option list (-object a=b,c=d): a comma would start another option. */
export function safeOptionValue(v: string): string {
  if (/[,=\s]/.test(v) || !v.startsWith('/'))
    throw new Error(`"${v}" cannot be passed to QEMU (absolute, no , = or spaces)`);
  return v;
}

/**
 * Writes DIR/keys.psk for QEMU's tls-creds-psk: "qemu:<hex key>", DIR 0700 and the file 0600, owned by
 * `owner` (QEMU's UID:GID after -runas), so only QEMU and root can read the key.
 */
export function writePskDir(dir: string, keyHex: string, owner?: { uid: number; gid: number }): void {
  if (!/^[0-9a-f]{64}$/.test(keyHex)) throw new Error('a TLS pre-shared key is 64 hex digits');
  safeOptionValue(dir);
  fs.mkdirSync(dir, { mode: 0o700 });
  const file = `${dir}/keys.psk`;
  fs.writeFileSync(file, `${TLS_PSK_USER}:${keyHex}\n`, { mode: 0o600, flag: 'wx' });
  if (owner) {
    fs.chownSync(dir, owner.uid, owner.gid);
    fs.chownSync(file, owner.uid, owner.gid);
  }
}

export class Vm {
  private stopping: Promise<void> | null = null;
  readonly exited: Promise<void>;

  constructor(
    readonly opts: LaunchOptions,
    readonly proc: QemuProcess,
    readonly qmp: Qmp,
    readonly qemuLog: string,
  ) {
    this.exited = proc.exited;
    // An adopted QEMU is not our child: its QMP connection closing is the first sign that it exited.
    if (proc instanceof AdoptedQemu) qmp.onClose(() => proc.check());
  }

  get name(): string {
    return this.opts.name;
  }
  get pid(): number | undefined {
    return this.proc.pid;
  }
  get running(): boolean {
    return this.proc.running;
  }

  serial(): string {
    try {
      return fs.readFileSync(this.opts.serialLog, 'utf8');
    } catch {
      return '';
    }
  }

  /** Waits until the serial console shows re; returns the match. Throws with the console's tail. */
  async waitSerial(re: RegExp, timeoutMs = 30_000): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.serial().match(re);
      if (m) return m;
      if (!this.running) throw new Error(`${this.name}: QEMU exited before the console showed ${re}:\n${this.tail()}`);
      if (Date.now() > deadline)
        throw new Error(`${this.name}: the console did not show ${re} within ${timeoutMs} ms:\n${this.tail()}`);
      await sleep(25);
    }
  }

  tail(lines = 15): string {
    let q = '';
    try {
      q = fs.readFileSync(this.qemuLog, 'utf8').trim();
    } catch {
      /* none */
    }
    return `--- serial ---\n${this.serial().trimEnd().split('\n').slice(-lines).join('\n')}${q ? `\n--- qemu ---\n${q}` : ''}`;
  }

  async status(): Promise<string> {
    return (await this.qmp.execute<{ status: string }>('query-status')).status;
  }

  /** Waits until query-status says running (a migration destination: after it has loaded the last state). */
  async waitRunning(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const status = await this.status();
      if (status === 'running') return;
      if (Date.now() > deadline) throw new Error(`${this.name}: still ${status} after ${timeoutMs} ms`);
      await sleep(10);
    }
  }

  /** A destination launched with incoming 'defer' and tlsPskDir: starts listening at uri, TLS required. */
  async incomingTls(uri: string): Promise<void> {
    await this.qmp.execute('migrate-set-parameters', { 'tls-creds': TLS_SERVER_ID });
    await this.qmp.execute('migrate-incoming', { uri });
  }

  /**
   * Live-migrates to uri (a destination launched with incoming: uri) and polls query-migrate every pollMs
   * until it completes; throws if it fails or takes longer than timeoutMs (and cancels it then). With
   * tlsPskDir the stream is TLS with the key in that directory (the destination must hold the same key).
   */
  async migrate(
    uri: string,
    o: {
      pollMs?: number;
      timeoutMs?: number;
      maxBandwidthBytes?: number;
      downtimeLimitMs?: number;
      tlsPskDir?: string;
    } = {},
  ): Promise<MigrationResult> {
    const params: Record<string, number | string> = {};
    if (o.maxBandwidthBytes !== undefined) params['max-bandwidth'] = o.maxBandwidthBytes;
    if (o.downtimeLimitMs !== undefined) params['downtime-limit'] = o.downtimeLimitMs;
    const tlsId = o.tlsPskDir ? `migtls${++this.tlsObjects}` : null;
    if (tlsId) {
      await this.qmp.execute('object-add', {
        'qom-type': 'tls-creds-psk',
        id: tlsId,
        endpoint: 'client',
        dir: o.tlsPskDir,
        username: TLS_PSK_USER,
      });
      params['tls-creds'] = tlsId;
    } else {
      // A guest that arrived over TLS keeps its destination's setting (a server object): clear it.
      params['tls-creds'] = '';
    }
    try {
      if (Object.keys(params).length) await this.qmp.execute('migrate-set-parameters', params);
      return await this.migrateNow(uri, o);
    } catch (err) {
      if (tlsId) {
        // The guest stays here: leave no credentials behind for the next attempt.
        await this.qmp.execute('migrate-set-parameters', { 'tls-creds': '' }).catch(() => {});
        await this.qmp.execute('object-del', { id: tlsId }).catch(() => {});
      }
      throw err;
    }
  }

  private tlsObjects = 0;

  private async migrateNow(uri: string, o: { pollMs?: number; timeoutMs?: number }): Promise<MigrationResult> {
    const eventsFrom = this.qmp.events.length;
    const startedAtMs = Date.now();
    await this.qmp.execute('migrate', { uri });
    const deadline = startedAtMs + (o.timeoutMs ?? 60_000);
    for (;;) {
      const info = await this.qmp.execute<MigrateInfo>('query-migrate');
      if (info.status === 'completed') {
        const stop = this.qmp.events.slice(eventsFrom).find((e: QmpEvent) => e.event === 'STOP');
        return {
          status: info.status,
          totalTimeMs: info['total-time'] ?? NaN,
          downtimeMs: info.downtime ?? NaN,
          setupTimeMs: info['setup-time'] ?? NaN,
          ramTransferredBytes: info.ram?.transferred ?? NaN,
          startedAtMs,
          completedAtMs: Date.now(),
          stoppedAtMs: stop?.atMs ?? null,
        };
      }
      if (info.status === 'failed' || info.status === 'cancelled') {
        throw new Error(
          `${this.name}: migration to ${uri} ${info.status}${info['error-desc'] ? `: ${info['error-desc']}` : ''}`,
        );
      }
      if (Date.now() > deadline) {
        await this.qmp.execute('migrate_cancel').catch(() => {});
        throw new Error(
          `${this.name}: migration to ${uri} not completed after ${o.timeoutMs ?? 60_000} ms (status ${info.status})`,
        );
      }
      await sleep(o.pollMs ?? 10);
    }
  }

  /** QMP quit, then SIGTERM, then SIGKILL; idempotent, never throws. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      if (this.running && !this.qmp.isClosed) {
        this.qmp.execute('quit').catch(() => {});
        await Promise.race([this.exited, sleep(1500)]);
      }
      if (this.running) {
        this.proc.kill('SIGTERM');
        await Promise.race([this.exited, sleep(1500)]);
      }
      if (this.running) {
        this.proc.kill('SIGKILL');
        await Promise.race([this.exited, sleep(5000)]);
      }
      this.qmp.close();
      if (this.proc instanceof AdoptedQemu) this.proc.release();
      for (const f of [this.opts.qmpSocket, this.opts.serialSocket]) if (f) fs.rmSync(f, { force: true });
    })();
    return this.stopping;
  }

  /** Lets go of the guest without stopping it (the agent exits; a later agent re-adopts it). */
  detach(): void {
    this.qmp.close();
    if (this.proc instanceof AdoptedQemu) this.proc.release();
    else if (this.proc instanceof ChildQemu) this.proc.child.unref();
  }

  /** For process-exit handlers, where promises no longer run. */
  killSync(): void {
    this.proc.kill('SIGKILL');
  }
}

/** The fields of QMP query-migrate that the driver reads. */
interface MigrateInfo {
  status?: string;
  'total-time'?: number;
  downtime?: number;
  'setup-time'?: number;
  ram?: { transferred?: number };
  'error-desc'?: string;
}

/** Starts QEMU, connects QMP and (with bridge) joins the TAP to the bridge. Throws with QEMU's output. */
export async function launch(o: LaunchOptions): Promise<Vm> {
  const qemuLog = o.qemuLog ?? `${o.serialLog}.qemu`;
  for (const f of [o.qmpSocket, o.serialLog, o.serialSocket]) if (f) fs.rmSync(f, { force: true });
  const argv = [o.binary ?? qemuBinary(), ...qemuArgs(o)];
  const full = o.netns ? ['ip', 'netns', 'exec', o.netns, ...argv] : argv;
  // A background QEMU that inherits a pipe keeps it open: give it a file.
  const fd = fs.openSync(qemuLog, 'a');
  let proc: ChildProcess;
  try {
    proc = spawn(full[0], full.slice(1), { stdio: ['ignore', fd, fd], detached: o.detached ?? false });
  } finally {
    fs.closeSync(fd);
  }
  proc.on('error', () => {});
  const handle = new ChildQemu(proc);
  const early = new Promise<never>((_, reject) =>
    proc.once('exit', (code, sig) => {
      let out = '';
      try {
        out = fs.readFileSync(qemuLog, 'utf8').trim();
      } catch {
        /* none */
      }
      reject(
        new Error(
          `${o.name}: QEMU exited (${sig ?? `code ${code}`}) at start: ${out || '(no output)'}\n  ${full.join(' ')}`,
        ),
      );
    }),
  );
  early.catch(() => {});
  let qmp: Qmp;
  try {
    qmp = await Promise.race([Qmp.connect(o.qmpSocket, 15_000), early]);
  } catch (err) {
    handle.kill('SIGKILL');
    throw err;
  }
  const vm = new Vm(o, handle, qmp, qemuLog);
  try {
    if (o.bridge || o.tapMtu) await attachTap(o);
  } catch (err) {
    await vm.stop();
    throw err;
  }
  return vm;
}

/**
 * Takes over a QEMU that an earlier process launched (detached), known by pid and start time: connects to its
 * QMP socket. Throws if the process is gone or QMP does not answer. The caller checks QMP's answers (name).
 */
export async function attach(o: LaunchOptions, pid: number, startTime: number, timeoutMs = 3000): Promise<Vm> {
  const handle = new AdoptedQemu(pid, startTime);
  if (!handle.running) throw new Error(`${o.name}: QEMU pid ${pid} (start time ${startTime}) is gone`);
  let qmp: Qmp;
  try {
    qmp = await Qmp.connect(o.qmpSocket, timeoutMs);
  } catch (err) {
    handle.release();
    throw err;
  }
  return new Vm(o, handle, qmp, o.qemuLog ?? `${o.serialLog}.qemu`);
}

/** Sets the TAP's MTU, joins it to the bridge and sets it up (QEMU made it before QMP answered). */
async function attachTap(o: LaunchOptions): Promise<void> {
  const ipArgs = (...a: string[]) => (o.netns ? ['-n', o.netns, ...a] : a);
  const run = (...a: string[]) => {
    const r = spawnSync('ip', ipArgs(...a), { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${o.name}: \`ip ${ipArgs(...a).join(' ')}\` failed: ${r.stderr.trim()}`);
  };
  if (o.tapMtu) run('link', 'set', 'dev', o.tap, 'mtu', String(o.tapMtu));
  if (o.bridge) run('link', 'set', 'dev', o.tap, 'master', o.bridge);
  run('link', 'set', 'dev', o.tap, 'up');
}

/** A locally administered unicast MAC in QEMU's 52:54:00 range from a small number. */
export function guestMac(n: number): string {
  const b = [0x52, 0x54, 0x00, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff];
  return b.map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/** Whether QEMU for x86_64 is installed. */
export function hasQemu(binary = qemuBinary()): boolean {
  return spawnSync('sh', ['-c', 'command -v "$1"', 'sh', binary]).status === 0;
}

/** "7.2.22" from `qemu-system-x86_64 --version`, or null. */
export function qemuVersion(binary = qemuBinary()): string | null {
  const r = spawnSync(binary, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  return /version (\d+\.\d+\.\d+)/.exec(r.stdout ?? '')?.[1] ?? null;
}

/** The versioned machine type an alias stands for ("pc" → "pc-i440fx-7.2"), from `-machine help`. */
export function resolveMachine(alias: string, binary = qemuBinary()): string {
  const r = spawnSync(binary, ['-machine', 'help'], { encoding: 'utf8', timeout: 10_000 });
  const line = (r.stdout ?? '').split('\n').find((l) => l.split(/\s+/)[0] === alias);
  return /\(alias of ([^)]+)\)/.exec(line ?? '')?.[1] ?? alias;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// The test bed of the side-by-side benchmark: ONE pair of network namespaces joined by a veth, shared by every
// overlay in turn (one at a time), so each overlay sees the same underlay, the same addresses and the same kernel.
//
//   hwp-a  ul0 192.0.2.1/24 ───veth─── ul0 192.0.2.2/24  hwp-b        underlay: TEST-NET-1
//          <overlay iface> 198.51.100.1/24   <overlay iface> 198.51.100.2/24  inner: TEST-NET-2
//
// The bed tracks every process it starts; destroy() (also on exit, Ctrl-C and uncaught errors, through the
// lab's tearDownOnExit) ends them and deletes every namespace named hwp-*.
import { type ChildProcess, type StdioOptions, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  deleteNamespaces,
  deleteNamespacesSync,
  releaseOnExit,
  running,
  type Teardown,
  tearDownOnExit,
} from '../../lab/netns.ts';
import { run, type RunOptions, type RunResult, runOk, sleep, sleepSync } from '../../lab/run.ts';
import { PROJECT_ROOT } from '../../lab/topology.ts';

/** Namespace prefix: hwp- unless HOMEWIRE_BENCH_PREFIX names another (two benches side by side). */
export const PREFIX = process.env.HOMEWIRE_BENCH_PREFIX ?? 'hwp-';
export type Side = 'a' | 'b';
export const SIDES: readonly Side[] = ['a', 'b'];
export const UNDERLAY_IF = 'ul0';
export const UNDERLAY_LEN = 24;
export const INNER_LEN = 24;

export interface Endpoint {
  ns: string;
  /** Underlay address on ul0 (TEST-NET-1). */
  underlay: string;
  /** The overlay interface's address (TEST-NET-2), the same for every overlay. */
  inner: string;
}

export const PLAN: Record<Side, Endpoint> = {
  a: { ns: `${PREFIX}a`, underlay: '192.0.2.1', inner: '198.51.100.1' },
  b: { ns: `${PREFIX}b`, underlay: '192.0.2.2', inner: '198.51.100.2' },
};

export const other = (s: Side): Side => (s === 'a' ? 'b' : 'a');

export class Bed implements Teardown {
  /** Keys, configs and logs of every overlay (removed by destroy() unless keepDir). */
  readonly dir: string;
  private readonly children = new Set<ChildProcess>();
  /** Extra cleanup steps for files outside dir (wireguard-go's UAPI sockets). */
  private readonly cleanups: (() => void)[] = [];
  private destroying: Promise<void> | null = null;

  private constructor(private readonly keepDir: boolean) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), PREFIX));
  }

  static async create(opts: { keepDir?: boolean } = {}): Promise<Bed> {
    if (process.getuid?.() !== 0) {
      throw new Error('the bench needs root (network namespaces, TUN/TAP devices): sudo npm run bench:peers');
    }
    await deleteNamespaces(PREFIX); // left by an earlier run that was killed hard
    const bed = new Bed(opts.keepDir ?? false);
    tearDownOnExit(bed);
    try {
      for (const s of SIDES) {
        await runOk('ip', ['netns', 'add', PLAN[s].ns]);
        await bed.ip(s, 'link', 'set', 'lo', 'up');
      }
      await bed.ip('a', 'link', 'add', UNDERLAY_IF, 'type', 'veth', 'peer', 'name', UNDERLAY_IF, 'netns', PLAN.b.ns);
      for (const s of SIDES) {
        await bed.ip(s, 'addr', 'add', `${PLAN[s].underlay}/${UNDERLAY_LEN}`, 'dev', UNDERLAY_IF);
        await bed.ip(s, 'link', 'set', UNDERLAY_IF, 'up');
      }
      const r = await bed.exec('a', ['ping', '-n', '-q', '-c', '3', '-i', '0.05', '-W', '1', PLAN.b.underlay]);
      if (r.code !== 0) throw new Error(`the underlay veth does not carry ping: ${r.stdout}${r.stderr}`);
    } catch (err) {
      await bed.destroy();
      throw err;
    }
    return bed;
  }

  /** `ip -n <ns of side> ...`, throwing with ip's message on failure. */
  ip(side: Side, ...args: string[]): Promise<RunResult> {
    return runOk('ip', ['-n', PLAN[side].ns, ...args]);
  }

  exec(side: Side, argv: string[], opts: RunOptions = {}): Promise<RunResult> {
    return run('ip', ['netns', 'exec', PLAN[side].ns, ...argv], { cwd: PROJECT_ROOT, ...opts });
  }

  async execOk(side: Side, argv: string[], opts: RunOptions = {}): Promise<RunResult> {
    const r = await this.exec(side, argv, opts);
    if (r.code !== 0) {
      throw new Error(
        `\`${argv.join(' ')}\` in ${PLAN[side].ns} failed (${r.signal ?? `exit ${r.code}`}): ${(r.stderr || r.stdout).trim()}`,
      );
    }
    return r;
  }

  /**
   * A long-running process in a side's namespace. `ip netns exec` execs the command in place, so the child's
   * pid is the program's own (what /proc/PID/stat is read for). With logFile, stdout and stderr append there.
   */
  spawn(
    side: Side,
    argv: string[],
    opts: { logFile?: string; stdio?: 'ignore' | 'pipe'; env?: Record<string, string> } = {},
  ): ChildProcess {
    const fd = opts.logFile ? fs.openSync(opts.logFile, 'a') : null;
    try {
      const stdio: StdioOptions = fd !== null ? ['ignore', fd, fd] : (opts.stdio ?? 'ignore');
      const env = opts.env ? { ...process.env, ...opts.env } : process.env;
      const child = spawn('ip', ['netns', 'exec', PLAN[side].ns, ...argv], { stdio, cwd: PROJECT_ROOT, env });
      child.on('error', () => {});
      this.children.add(child);
      child.on('exit', () => this.children.delete(child));
      return child;
    } finally {
      if (fd !== null) fs.closeSync(fd);
    }
  }

  /** SIGTERM (or sig), then SIGKILL after timeoutMs; resolves once the process has exited. */
  async stop(child: ChildProcess, o: { signal?: NodeJS.Signals; timeoutMs?: number } = {}): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill(o.signal ?? 'SIGTERM');
    if (await Promise.race([exited.then(() => true), sleep(o.timeoutMs ?? 3000).then(() => false)])) return;
    child.kill('SIGKILL');
    await Promise.race([exited, sleep(2000)]);
  }

  /** Waits until the interface exists in the side's namespace (a daemon has made it). */
  async waitForLink(side: Side, ifname: string, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = await run('ip', ['-n', PLAN[side].ns, 'link', 'show', 'dev', ifname]);
      if (r.code === 0) return;
      if (Date.now() > deadline) throw new Error(`no interface ${ifname} in ${PLAN[side].ns} after ${timeoutMs} ms`);
      await sleep(50);
    }
  }

  async linkMtu(side: Side, ifname: string): Promise<number> {
    const r = await this.ip(side, '-j', 'link', 'show', 'dev', ifname);
    return (JSON.parse(r.stdout) as { mtu: number }[])[0].mtu;
  }

  /** Adds the side's inner address to an interface and brings it up (for overlays that do not do it themselves). */
  async addressInner(side: Side, ifname: string): Promise<void> {
    await this.ip(side, 'addr', 'add', `${PLAN[side].inner}/${INNER_LEN}`, 'dev', ifname);
    await this.ip(side, 'link', 'set', ifname, 'up');
  }

  /** Ends every process the bed started that still runs (SIGTERM, SIGKILL after 3 s). */
  async stopAll(): Promise<void> {
    await Promise.all(this.live().map((p) => this.stop(p)));
  }

  onDestroy(fn: () => void): void {
    this.cleanups.push(fn);
  }

  /** Interfaces in a side's namespace besides lo and the underlay (an overlay's, while it runs). */
  async extraLinks(side: Side): Promise<string[]> {
    const r = await this.ip(side, '-j', 'link', 'show');
    return (JSON.parse(r.stdout) as { ifname: string }[])
      .map((l) => l.ifname)
      .filter((n) => n !== 'lo' && n !== UNDERLAY_IF);
  }

  /**
   * After an overlay went down: its interfaces must be gone (every daemon removes its own on exit). Waits a
   * little, then deletes what is left and says so: the next overlay must start from the same clean bed.
   */
  async ensureClean(): Promise<string[]> {
    const left: string[] = [];
    for (const s of SIDES) {
      let links = await this.extraLinks(s);
      for (let i = 0; i < 20 && links.length > 0; i++) {
        await sleep(100);
        links = await this.extraLinks(s);
      }
      for (const l of links) {
        left.push(`${PLAN[s].ns}/${l}`);
        await run('ip', ['-n', PLAN[s].ns, 'link', 'del', l]);
      }
    }
    return left;
  }

  destroy(): Promise<void> {
    this.destroying ??= (async () => {
      const procs = this.live();
      await Promise.all(procs.map((p) => this.stop(p, { timeoutMs: 2000 })));
      await deleteNamespaces(PREFIX);
      this.finish();
    })();
    return this.destroying;
  }

  destroySync(): void {
    const procs = this.live();
    for (const p of procs) {
      try {
        p.kill('SIGTERM');
      } catch {
        /* gone */
      }
    }
    const deadline = Date.now() + 2000;
    while (procs.some((p) => p.pid && running(p.pid)) && Date.now() < deadline) sleepSync(20);
    for (const p of procs) {
      try {
        if (p.pid && running(p.pid)) p.kill('SIGKILL');
      } catch {
        /* gone */
      }
    }
    deleteNamespacesSync(PREFIX);
    this.finish();
  }

  private finish(): void {
    for (const fn of this.cleanups.splice(0)) {
      try {
        fn();
      } catch {
        /* best effort */
      }
    }
    if (!this.keepDir) fs.rmSync(this.dir, { recursive: true, force: true });
    releaseOnExit(this);
  }

  private live(): ChildProcess[] {
    return [...this.children].filter((p) => p.exitCode === null && p.signalCode === null);
  }
}

/** The last lines of a log file (for errors that must show what a daemon said). */
export function tail(file: string, lines = 12): string {
  if (!fs.existsSync(file)) return '(no log)';
  return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
}

// tinc 1.0 in the side-by-side bench: switch mode (an L2 TAP, like homewire), Debian's defaults otherwise
// (1.0.36: AES-256-CBC, HMAC-SHA256 truncated to 4 bytes, no compression). a ConnectTo b.
//
// tinc sends over its TCP meta connection until its path-MTU discovery has finished, so up() keeps traffic
// flowing and asks both daemons for their node list (SIGUSR2 logs "pmtu X (min X max X)") until each has
// settled on the other's path MTU. The TAP then gets MTU = path MTU − 14 (tinc's MTU counts the Ethernet
// header), so the kernel never hands tinc a frame it would have to fragment or bounce with ICMP.
import fs from 'node:fs';
import path from 'node:path';
import { runOk, sleep } from '../../lab/run.ts';
import { type Bed, other, PLAN, SIDES, type Side, tail } from './bed.ts';
import { type Overlay, program, type Running, versionOf, waitReachable } from './overlay.ts';

const TAP = 'hwp-tinc';
const PORT = 655;
const ETHERNET_HEADER_BYTES = 14;
const PMTU_TIMEOUT_MS = 60_000;

export class Tinc implements Overlay {
  readonly id = 'tinc' as const;
  readonly label = 'tinc 1.0 (L2)';
  private dirs: Record<Side, string> | null = null;

  requirements() {
    return [program('tincd', 'apt-get install tinc')];
  }

  version(): Promise<string> {
    return versionOf('tincd', ['--version']);
  }

  async prepare(bed: Bed): Promise<void> {
    const dirs = { a: path.join(bed.dir, 'tinc-a'), b: path.join(bed.dir, 'tinc-b') };
    for (const s of SIDES) {
      fs.mkdirSync(path.join(dirs[s], 'hosts'), { recursive: true });
      const conf = [`Name = ${s}`, 'Mode = switch', `Interface = ${TAP}`, 'AddressFamily = ipv4', `Port = ${PORT}`];
      if (s === 'a') conf.push('ConnectTo = b');
      fs.writeFileSync(path.join(dirs[s], 'tinc.conf'), `${conf.join('\n')}\n`);
      fs.writeFileSync(path.join(dirs[s], 'hosts', s), `Address = ${PLAN[s].underlay}\nPort = ${PORT}\n`);
      // stdin is not a terminal: tincd writes rsa_key.priv and appends the public key to hosts/<name> unasked.
      await runOk('tincd', ['-c', dirs[s], '-K'], { timeoutMs: 60_000 });
    }
    for (const s of SIDES) fs.copyFileSync(path.join(dirs[s], 'hosts', s), path.join(dirs[other(s)], 'hosts', s));
    this.dirs = dirs;
  }

  async up(bed: Bed): Promise<Running> {
    const dirs = this.dirs;
    if (!dirs) throw new Error('tinc: prepare() first');
    const logs = { a: path.join(dirs.a, 'tincd.log'), b: path.join(dirs.b, 'tincd.log') };
    for (const s of SIDES) fs.writeFileSync(logs[s], ''); // this run's node dumps only
    const start = (s: Side) =>
      bed.spawn(s, ['tincd', '-c', dirs[s], '-D', '-d1', `--pidfile=${path.join(dirs[s], 'tincd.pid')}`], {
        logFile: logs[s],
      });
    // b first: a connects to it, and a refused first attempt would cost tinc's 5-second retry.
    const b = start('b');
    await bed.waitForLink('b', TAP, 10_000).catch((err) => {
      throw new Error(`tinc: ${(err as Error).message}:\n${tail(logs.b)}`);
    });
    await waitListening(bed, 'b', PORT, 5000);
    const r: Running = {
      daemons: { a: start('a'), b },
      logs,
      ifname: { a: TAP, b: TAP },
      mtu: 0,
      underlayPort: PORT,
      facts: {},
    };
    for (const s of SIDES) {
      await bed.waitForLink(s, TAP, 10_000).catch((err) => {
        throw new Error(`tinc: ${(err as Error).message}:\n${tail(logs[s])}`);
      });
      await bed.addressInner(s, TAP);
    }
    r.facts.reachableAfterMs = await waitReachable(bed, r, 20_000);
    const started = Date.now();
    const pmtu = await this.waitPmtu(bed, r);
    r.facts.pmtuDiscoveryMs = Date.now() - started;
    r.facts.pmtu = pmtu;
    r.mtu = Math.min(pmtu.a, pmtu.b) - ETHERNET_HEADER_BYTES;
    for (const s of SIDES) await bed.ip(s, 'link', 'set', TAP, 'mtu', String(r.mtu));
    r.facts.cipher = this.cipherLine(logs.a);
    return r;
  }

  /** Pings (so tinc has a reason to probe) and dumps nodes until both sides report min == max for the other. */
  private async waitPmtu(bed: Bed, r: Running): Promise<Record<Side, number>> {
    const deadline = Date.now() + PMTU_TIMEOUT_MS;
    const settled: Partial<Record<Side, number>> = {};
    for (;;) {
      await bed.exec('a', ['ping', '-n', '-q', '-c', '3', '-i', '0.1', '-W', '1', PLAN.b.inner]);
      for (const s of SIDES) {
        if (settled[s] !== undefined) continue;
        r.daemons[s].kill('SIGUSR2');
      }
      await sleep(100);
      for (const s of SIDES) {
        if (settled[s] !== undefined) continue;
        const p = lastPmtu(r.logs[s], other(s));
        if (p && p.min === p.max && p.min > 0) settled[s] = p.min;
      }
      if (settled.a !== undefined && settled.b !== undefined) return settled as Record<Side, number>;
      if (Date.now() > deadline) {
        throw new Error(
          `tinc: path MTU discovery did not finish in ${PMTU_TIMEOUT_MS} ms (a: ${JSON.stringify(lastPmtu(r.logs.a, 'b'))}, b: ${JSON.stringify(lastPmtu(r.logs.b, 'a'))})\n${tail(r.logs.a)}`,
        );
      }
      await sleep(400);
    }
  }

  private cipherLine(log: string): string | null {
    const m = /^\s*b at \S+ port \d+ (cipher \d+ digest \d+ maclength \d+ compression \d+)/m.exec(
      fs.readFileSync(log, 'utf8'),
    );
    return m ? `${m[1]} (OpenSSL NIDs)` : null;
  }
}

/** Waits until a TCP socket listens on port in the side's namespace (tincd's meta connections). */
async function waitListening(bed: Bed, side: Side, port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const r = await bed.exec(side, ['ss', '-Hltn', `sport = :${port}`]);
    if (r.stdout.trim()) return;
    await sleep(50);
  }
  throw new Error(`tinc: nothing listens on TCP port ${port} in ${PLAN[side].ns} after ${timeoutMs} ms`);
}

/** The last "pmtu X (min Y max Z)" tinc logged for node `peer` in a SIGUSR2 node dump. */
function lastPmtu(log: string, peer: string): { pmtu: number; min: number; max: number } | null {
  if (!fs.existsSync(log)) return null;
  const re = new RegExp(`^\\s*${peer} at .* pmtu (\\d+) \\(min (\\d+) max (\\d+)\\)`, 'gm');
  const text = fs.readFileSync(log, 'utf8');
  let last: RegExpExecArray | null = null;
  for (let m = re.exec(text); m; m = re.exec(text)) last = m;
  return last ? { pmtu: Number(last[1]), min: Number(last[2]), max: Number(last[3]) } : null;
}

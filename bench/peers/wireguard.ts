// wireguard-go in the side-by-side bench: the userspace daemon in the foreground (-f), configured with `wg set`
// once its TUN exists, keys from `wg genkey` / `wg pubkey`, default MTU (1420). wireguard-go's control socket
// is /var/run/wireguard/<interface>.sock, one directory for every namespace, so each side's interface gets a
// name of its own (hwp-wg-a, hwp-wg-b) that nothing else on the machine uses.
import fs from 'node:fs';
import path from 'node:path';
import { runOk } from '../../lab/run.ts';
import { type Bed, other, PLAN, SIDES, type Side, tail } from './bed.ts';
import { type Overlay, program, type Running, versionOf, waitReachable } from './overlay.ts';

const PORT = 51820;
const ifname = (s: Side) => `hwp-wg-${s}`;
const UAPI_DIR = '/var/run/wireguard';

export class WireguardGo implements Overlay {
  readonly id = 'wireguard-go' as const;
  readonly label = 'wireguard-go';
  private keys: Record<Side, { file: string; pub: string }> | null = null;

  requirements() {
    return [program('wireguard-go', 'apt-get install wireguard-go'), program('wg', 'apt-get install wireguard-tools')];
  }

  version(): Promise<string> {
    return versionOf('wireguard-go', ['--version']);
  }

  async prepare(bed: Bed): Promise<void> {
    const dir = path.join(bed.dir, 'wireguard');
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const keys = {} as Record<Side, { file: string; pub: string }>;
    for (const s of SIDES) {
      const key = (await runOk('wg', ['genkey'])).stdout.trim();
      const file = path.join(dir, `${s}.key`);
      fs.writeFileSync(file, `${key}\n`, { mode: 0o600 });
      keys[s] = { file, pub: (await runOk('wg', ['pubkey'], { input: `${key}\n` })).stdout.trim() };
    }
    this.keys = keys;
    bed.onDestroy(() => this.afterDown());
  }

  async up(bed: Bed): Promise<Running> {
    const keys = this.keys;
    if (!keys) throw new Error('wireguard-go: prepare() first');
    const dir = path.join(bed.dir, 'wireguard');
    const logs = { a: path.join(dir, 'a.log'), b: path.join(dir, 'b.log') };
    for (const s of SIDES) fs.writeFileSync(logs[s], '');
    const start = (s: Side) => bed.spawn(s, ['wireguard-go', '-f', ifname(s)], { logFile: logs[s] });
    const r: Running = {
      daemons: { a: start('a'), b: start('b') },
      logs,
      ifname: { a: ifname('a'), b: ifname('b') },
      mtu: 0,
      underlayPort: PORT,
      facts: {},
    };
    for (const s of SIDES) {
      await bed.waitForLink(s, ifname(s), 10_000).catch((err) => {
        throw new Error(`wireguard-go: ${(err as Error).message}:\n${tail(logs[s])}`);
      });
      const o = other(s);
      // The UAPI socket appears just after the TUN; wg set retries are cheap.
      let lastErr: unknown = null;
      for (let i = 0; i < 50; i++) {
        try {
          await bed.execOk(s, [
            'wg',
            'set',
            ifname(s),
            'private-key',
            keys[s].file,
            'listen-port',
            String(PORT),
            'peer',
            keys[o].pub,
            'endpoint',
            `${PLAN[o].underlay}:${PORT}`,
            'allowed-ips',
            `${PLAN[o].inner}/32`,
          ]);
          lastErr = null;
          break;
        } catch (err) {
          lastErr = err;
          await new Promise((res) => setTimeout(res, 50));
        }
      }
      if (lastErr) throw new Error(`wireguard-go: ${(lastErr as Error).message}\n${tail(logs[s])}`);
      await bed.addressInner(s, ifname(s));
    }
    r.facts.reachableAfterMs = await waitReachable(bed, r, 20_000);
    r.mtu = await bed.linkMtu('a', ifname('a'));
    return r;
  }

  /** A SIGKILLed wireguard-go leaves its socket behind; only ours (hwp-wg-*) are touched. */
  afterDown(): void {
    for (const s of SIDES) fs.rmSync(path.join(UAPI_DIR, `${ifname(s)}.sock`), { force: true });
  }
}

// homewire in the side-by-side bench: the real daemon (`homewire up`), one site per namespace, keys made by
// `homewire genkey` / `homewire pubkey`. The TAP itself carries the inner address (no bridge), like tinc's TAP:
// host-to-host traffic enters the daemon straight from the kernel's stack.
import fs from 'node:fs';
import path from 'node:path';
import { runOk } from '../../lab/run.ts';
import { HOMEWIRE_BIN, PROJECT_ROOT } from '../../lab/topology.ts';
import { type Bed, other, PLAN, SIDES, type Side } from './bed.ts';
import { type Overlay, type Running, waitReachable } from './overlay.ts';

const TAP = 'hwp-hw';
const PORT = 51820;
const ADDON = path.join(PROJECT_ROOT, 'build', 'Release', 'homewire_tap.node');

const homewire = (args: string[], input?: string) =>
  runOk(process.execPath, [HOMEWIRE_BIN, ...args], { input, cwd: PROJECT_ROOT, timeoutMs: 30_000 });

export class Homewire implements Overlay {
  readonly id = 'homewire' as const;
  private configs: Record<Side, string> | null = null;

  /** root: the checkout whose `homewire up` runs (default this one; bench/peers-ab.ts runs two); env: extra
   *  environment for the daemons (HOMEWIRE_TRACE_LATENCY=1...). */
  constructor(
    readonly label = 'homewire',
    private readonly root = PROJECT_ROOT,
    private readonly env: Record<string, string> = {},
    private readonly dirName = 'homewire',
  ) {}

  requirements() {
    return [
      {
        what: 'npm dependencies (node_modules/tsx)',
        present: () => fs.existsSync(path.join(PROJECT_ROOT, 'node_modules', 'tsx')),
        install: 'npm ci',
      },
      { what: `the TAP addon ${ADDON}`, present: () => fs.existsSync(ADDON), install: 'npm run build' },
    ];
  }

  async version(): Promise<string> {
    const pkg = JSON.parse(fs.readFileSync(path.join(PROJECT_ROOT, 'package.json'), 'utf8')) as { version: string };
    const rev = await runOk('git', ['-C', PROJECT_ROOT, 'rev-parse', '--short', 'HEAD']).catch(() => null);
    return `homewire ${pkg.version}${rev ? ` (${rev.stdout.trim()})` : ''}`;
  }

  async prepare(bed: Bed): Promise<void> {
    const dir = path.join(bed.dir, this.dirName);
    fs.mkdirSync(dir, { recursive: true });
    const pub: Partial<Record<Side, string>> = {};
    for (const s of SIDES) {
      const key = (await homewire(['genkey'])).stdout.trim();
      fs.writeFileSync(path.join(dir, `${s}.key`), `${key}\n`, { mode: 0o600 });
      pub[s] = (await homewire(['pubkey'], `${key}\n`)).stdout.trim();
    }
    const configs = {} as Record<Side, string>;
    for (const s of SIDES) {
      const o = other(s);
      configs[s] = path.join(dir, `${s}.yaml`);
      const yaml = [
        `# homewire, side-by-side bench, namespace ${PLAN[s].ns}`,
        `name: ${s}`,
        `private_key_file: ${s}.key`,
        `listen: "${PLAN[s].underlay}:${PORT}"`,
        'log_level: info',
        `control: { socket: ${path.join(dir, `${s}.sock`)} }`,
        'tap:',
        `  name: ${TAP}`,
        'peers:',
        `  - name: ${o}`,
        `    public_key: "${pub[o]}"`,
        `    endpoint: "${PLAN[o].underlay}:${PORT}"`,
      ];
      fs.writeFileSync(configs[s], `${yaml.join('\n')}\n`);
      await homewire(['check', '--config', configs[s]]);
    }
    this.configs = configs;
  }

  async up(bed: Bed): Promise<Running> {
    if (!this.configs) throw new Error('homewire: prepare() first');
    const dir = path.join(bed.dir, this.dirName);
    const logs = { a: path.join(dir, 'a.log'), b: path.join(dir, 'b.log') };
    for (const s of SIDES) fs.writeFileSync(logs[s], '');
    const bin = path.join(this.root, 'bin', 'homewire.mjs');
    const start = (s: Side) =>
      bed.spawn(s, [process.execPath, bin, 'up', '--config', this.configs![s]], { logFile: logs[s], env: this.env });
    const daemons = { a: start('a'), b: start('b') };
    const r: Running = {
      daemons,
      logs,
      ifname: { a: TAP, b: TAP },
      mtu: 0,
      underlayPort: PORT,
      facts: {},
    };
    for (const s of SIDES) {
      await bed.waitForLink(s, TAP, 15_000).catch((err) => {
        throw new Error(`homewire: ${(err as Error).message}:\n${fs.readFileSync(logs[s], 'utf8').slice(-1500)}`);
      });
      await bed.addressInner(s, TAP);
    }
    r.facts.reachableAfterMs = await waitReachable(bed, r, 20_000);
    r.mtu = await bed.linkMtu('a', TAP);
    return r;
  }
}

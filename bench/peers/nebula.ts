// nebula in the side-by-side bench: a CA and one certificate per side made with nebula-cert (the inner address
// lives in the certificate), tun MTU 1300 (nebula's default), firewall any/any both ways, no lighthouse: each
// side finds the other through static_host_map. nebula addresses and raises its own TUN.
import fs from 'node:fs';
import path from 'node:path';
import { runOk } from '../../lab/run.ts';
import { type Bed, INNER_LEN, other, PLAN, SIDES, type Side, tail } from './bed.ts';
import { type Overlay, program, type Running, versionOf, waitReachable } from './overlay.ts';

const TUN = 'hwp-neb';
const PORT = 4242;
const TUN_MTU = 1300;

export class Nebula implements Overlay {
  readonly id = 'nebula' as const;
  readonly label = 'nebula';
  private configs: Record<Side, string> | null = null;

  requirements() {
    return [program('nebula', 'apt-get install nebula'), program('nebula-cert', 'apt-get install nebula')];
  }

  version(): Promise<string> {
    return versionOf('nebula', ['-version']).then((v) => `nebula ${v.replace(/^Version:\s*/, '')}`);
  }

  async prepare(bed: Bed): Promise<void> {
    const dir = path.join(bed.dir, 'nebula');
    fs.mkdirSync(dir, { recursive: true });
    const f = (name: string) => path.join(dir, name);
    await runOk('nebula-cert', [
      'ca',
      '-name',
      'homewire peers bench',
      '-out-crt',
      f('ca.crt'),
      '-out-key',
      f('ca.key'),
    ]);
    const configs = {} as Record<Side, string>;
    for (const s of SIDES) {
      await runOk('nebula-cert', [
        'sign',
        '-ca-crt',
        f('ca.crt'),
        '-ca-key',
        f('ca.key'),
        '-name',
        s,
        '-ip',
        `${PLAN[s].inner}/${INNER_LEN}`,
        '-out-crt',
        f(`${s}.crt`),
        '-out-key',
        f(`${s}.key`),
      ]);
      const o = other(s);
      const yaml = [
        `# nebula, side-by-side bench, namespace ${PLAN[s].ns}`,
        'pki:',
        `  ca: ${f('ca.crt')}`,
        `  cert: ${f(`${s}.crt`)}`,
        `  key: ${f(`${s}.key`)}`,
        'static_host_map:',
        `  "${PLAN[o].inner}": ["${PLAN[o].underlay}:${PORT}"]`,
        'lighthouse:',
        '  am_lighthouse: false',
        '  hosts: []',
        'listen:',
        `  host: ${PLAN[s].underlay}`,
        `  port: ${PORT}`,
        'punchy:',
        '  punch: false',
        'tun:',
        '  disabled: false',
        `  dev: ${TUN}`,
        `  mtu: ${TUN_MTU}`,
        'logging:',
        '  level: info',
        '  format: text',
        'firewall:',
        '  outbound:',
        '    - { port: any, proto: any, host: any }',
        '  inbound:',
        '    - { port: any, proto: any, host: any }',
      ];
      configs[s] = f(`${s}.yaml`);
      fs.writeFileSync(configs[s], `${yaml.join('\n')}\n`);
      await runOk('nebula', ['-test', '-config', configs[s]]);
    }
    this.configs = configs;
  }

  async up(bed: Bed): Promise<Running> {
    const configs = this.configs;
    if (!configs) throw new Error('nebula: prepare() first');
    const logs = { a: `${configs.a}.log`, b: `${configs.b}.log` };
    for (const s of SIDES) fs.writeFileSync(logs[s], '');
    const r: Running = {
      daemons: {
        a: bed.spawn('a', ['nebula', '-config', configs.a], { logFile: logs.a }),
        b: bed.spawn('b', ['nebula', '-config', configs.b], { logFile: logs.b }),
      },
      logs,
      ifname: { a: TUN, b: TUN },
      mtu: 0,
      underlayPort: PORT,
      facts: {},
    };
    for (const s of SIDES) {
      await bed.waitForLink(s, TUN, 10_000).catch((err) => {
        throw new Error(`nebula: ${(err as Error).message}:\n${tail(logs[s])}`);
      });
    }
    r.facts.reachableAfterMs = await waitReachable(bed, r, 20_000);
    r.mtu = await bed.linkMtu('a', TUN);
    return r;
  }
}

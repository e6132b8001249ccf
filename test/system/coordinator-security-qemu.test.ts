// Live migration streams of real QEMU guests (TCG) in the namespace lab, watched on the wire with tcpdump
// (README "Security model"):
//   - through the coordinator (host agents beside the daemons): the guest holds a marker string in RAM (its
//     kernel command line); the stream to host-b is TLS with the per-migration key, so the reassembled TCP
//     streams on host-b's underlay carry megabytes of guest RAM but never the marker; QEMU runs as an
//     unprivileged user under -sandbox;
//   - the control: the same kind of guest migrated in clear (QEMU's plain tcp:) shows the marker on the wire,
//     so the capture would have seen it;
//   - a destination without the key (another QEMU listening with a different one) cannot take the stream:
//     the TLS handshake fails, nothing of the guest crosses, the source guest runs on.
// Needs root, QEMU, tcpdump and the guest image packages (test/helpers/vm.ts says what is missing).
import type { ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { launch, type Vm, writePskDir } from '../../src/agent/qemu/driver.ts';
import { GridLab, LAB_QEMU_USER } from '../../lab/coordinator/grid.ts';
import { buildGuestImage, READY_MARK } from '../../lab/guest-image.ts';
import { type Packet, tcpStreams } from '../../lab/pcap.ts';
import { sleep } from '../../lab/run.ts';
import { deleteNamespaces, Lab } from '../../lab/topology.ts';
import { vmSiteConfig } from '../../lab/vm/guests.ts';
import type { VmRecord } from '../../src/coordinator/types.ts';
import { vmTest } from '../helpers/vm.ts';

/** This file's namespace prefix: hwc + 4 hex + '-'. */
const prefix = () => `hwc${crypto.randomBytes(2).toString('hex')}-`;

/** Bytes of guest data in the capture, and how often the marker appears in the reassembled streams. */
function look(packets: Packet[], marker: string): { bytes: number; hits: number } {
  let bytes = 0;
  let hits = 0;
  for (const s of tcpStreams(packets).values()) {
    bytes += s.length;
    for (let i = s.indexOf(marker); i >= 0; i = s.indexOf(marker, i + 1)) hits++;
  }
  return { bytes, hits };
}

vmTest(
  'migration streams are TLS with a per-migration key: no guest RAM in clear on the wire, no stream to a wrong destination',
  async (t: ExecutionContext) => {
    t.timeout(420_000);
    const p = prefix();
    let lab: Lab | null = null;
    const vms: Vm[] = [];
    t.teardown(async () => {
      await Promise.all(vms.map((v) => v.stop()));
      if (lab) await lab.destroy();
      else await deleteNamespaces(p);
    });
    lab = await Lab.create({ prefix: p, siteConfig: vmSiteConfig({ dhcp: true }) });
    const image = buildGuestImage({ log: (m) => t.log(m) });
    const grid = await GridLab.start(lab, image);
    await grid.addImage('tiny');
    const marker = `HWC-GUEST-SECRET-${crypto.randomBytes(6).toString('hex')}`;
    const hostB = lab.site('host-b').underlay4;

    // ---- through the coordinator: TLS-PSK, an unprivileged sandboxed QEMU -------------------------------
    await grid.ok('vm', 'create', 'web', '--image', 'tiny', '--memory', '128', '--cmdline', marker);
    await grid.ok('vm', 'start', 'web', '--host', 'host-a');
    const serialA = grid.serialLog('host-a', 'web');
    for (let i = 0; i < 900 && !(fs.existsSync(serialA) && fs.readFileSync(serialA, 'utf8').includes(READY_MARK)); i++)
      await sleep(100);
    t.true(fs.readFileSync(serialA, 'utf8').includes(marker), 'the guest booted with the marker in its RAM');
    const qemu = await lab.exec('host-a', [
      'sh',
      '-c',
      'for p in $(pgrep -f qemu-system); do echo "$(grep ^Uid: /proc/$p/status | cut -f2) $(tr "\\0" " " < /proc/$p/cmdline)"; done',
    ]);
    const line = qemu.stdout.split('\n').find((l) => l.includes('-name web'));
    t.truthy(line, `QEMU of web runs on host-a:\n${qemu.stdout}`);
    t.is(line!.split(' ')[0], LAB_QEMU_USER.split(':')[0], 'as the unprivileged qemu_user');
    t.regex(line!, /-sandbox on,obsolete=deny,spawn=deny,resourcecontrol=deny/);
    t.regex(line!, new RegExp(`-runas ${LAB_QEMU_USER}`));

    const capture = await lab.capture('host-b', 'eth0', path.join(lab.dir, 'agent-migration.pcap'), [
      'tcp',
      'portrange',
      '49152-49215',
    ]);
    const migrated = await grid.json<VmRecord>('vm', 'migrate', 'web', '--to', 'host-b');
    const seen = look(await capture.stop(), marker);
    t.is(migrated.host, 'host-b');
    t.is(migrated.state, 'running');
    t.log(
      `coordinator migration: ${(seen.bytes / 1e6).toFixed(1)} MB on the wire to ${hostB}, marker seen ${seen.hits} times`,
    );
    t.true(seen.bytes > 20e6, 'the guest RAM crossed the wire (captured)');
    t.is(seen.hits, 0, 'but never in clear');
    const stateDirB = path.join(lab.dir, 'state-host-b');
    t.deepEqual(
      fs.readdirSync(stateDirB).filter((f) => f.includes('.tls-')),
      [],
      'the migration key is gone from the destination once the guest runs',
    );
    t.deepEqual(
      fs.readdirSync(path.join(lab.dir, 'state-host-a')).filter((f) => f.includes('.tls-')),
      [],
      'and from the source',
    );
    await grid.ok('vm', 'stop', 'web');

    // ---- the control and the wrong destination, with the QEMU driver the agent uses --------------------
    const base = (site: string, name: string) => ({
      name,
      kernel: image.kernel,
      initrd: image.initrd,
      append: `quiet hw.ip=198.51.100.251/24 ${marker}`,
      mac: '02:68:77:c0:ff:ee',
      tap: 'hwcctl0',
      qmpSocket: path.join(lab!.dir, `${name}.qmp`),
      serialLog: path.join(lab!.dir, `${name}.serial`),
      netns: lab!.ns(site),
    });
    const src = await launch(base('host-a', 'ctl-src'));
    vms.push(src);
    await src.waitSerial(new RegExp(READY_MARK), 90_000);

    // A destination holding another key: the handshake fails, the source guest runs on.
    const keyDirA = path.join(lab.dir, 'key-a');
    const keyDirRogue = path.join(lab.dir, 'key-rogue');
    writePskDir(keyDirA, crypto.randomBytes(32).toString('hex'));
    writePskDir(keyDirRogue, crypto.randomBytes(32).toString('hex'));
    const rogue = await launch({ ...base('host-b', 'ctl-rogue'), incoming: 'defer', tlsPskDir: keyDirRogue });
    vms.push(rogue);
    await rogue.incomingTls(`tcp:${hostB}:49300`);
    const rogueCap = await lab.capture('host-b', 'eth0', path.join(lab.dir, 'rogue.pcap'), ['tcp', 'port', '49300']);
    const err = await t.throwsAsync(src.migrate(`tcp:${hostB}:49300`, { tlsPskDir: keyDirA, timeoutMs: 30_000 }));
    const rogueSeen = look(await rogueCap.stop(), marker);
    t.regex(err!.message, /migration to tcp:\S+ failed: .*TLS/i);
    t.is(await src.status(), 'running', 'the source guest runs on');
    t.is(await rogue.status(), 'inmigrate', 'the wrong destination got nothing to run');
    t.is(rogueSeen.hits, 0);
    t.true(rogueSeen.bytes < 10_000, `only a failed handshake crossed (${rogueSeen.bytes} bytes)`);
    await rogue.stop();

    // In clear (QEMU's plain tcp:, what the agent never uses): the same capture finds the marker.
    const plain = await launch({ ...base('host-b', 'ctl-plain'), incoming: `tcp:${hostB}:49301` });
    vms.push(plain);
    const plainCap = await lab.capture('host-b', 'eth0', path.join(lab.dir, 'plain.pcap'), ['tcp', 'port', '49301']);
    await src.migrate(`tcp:${hostB}:49301`, { timeoutMs: 120_000 });
    const plainSeen = look(await plainCap.stop(), marker);
    t.log(`control migration in clear: ${(plainSeen.bytes / 1e6).toFixed(1)} MB, marker seen ${plainSeen.hits} times`);
    t.true(plainSeen.hits > 0, 'the capture does see guest RAM when it crosses in clear');
    await plain.waitRunning(30_000);
  },
);

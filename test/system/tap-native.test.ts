// The native TAP addon against the real kernel. Needs root (CI runs as root) and a built addon
// (`npm run build`). Every interface, bridge and namespace is uniquely named hwt* and removed in
// t.teardown, even when the test fails.

import type { ExecutionContext } from 'ava';
import { execFile, execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { TAP_WRITE_QUEUE_MAX } from '../../src/constants.ts';
import { OperatorError } from '../../src/errors.ts';
import { NativeTap, loadTapAddon } from '../../src/tap/native.ts';
import { missingFor, testIf } from '../helpers/prereq.ts';

/** Every test here needs root and the built addon; without them it fails saying what to install. */
const tapTest = testIf(missingFor({ root: true, programs: { ip: 'iproute2' }, addon: true }));

const NATIVE_TS = fileURLToPath(new URL('../../src/tap/native.ts', import.meta.url));
const ETH_P_ARP = 0x0806;

const uniq = (prefix: string): string => prefix + randomBytes(2).toString('hex'); // hwt + 4 hex <= 15 chars
const sh = (cmd: string, ...args: string[]): string =>
  execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const linkExists = (name: string, ns?: string): boolean =>
  spawnSync('ip', [...(ns ? ['-n', ns] : []), 'link', 'show', 'dev', name], { stdio: 'ignore' }).status === 0;
const macString = (b: Buffer): string => [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
const quiet = (f: () => void): void => {
  try {
    f();
  } catch {
    /* already gone */
  }
};

/** Opens a TAP that is closed (and deleted if something left it) in teardown. */
function openTap(t: ExecutionContext, opts: { mtu?: number; bridge?: string } = {}): NativeTap {
  const tap = NativeTap.open({ name: uniq('hwt'), mtu: opts.mtu ?? 1400, bridge: opts.bridge });
  t.teardown(() => {
    tap.close();
    if (linkExists(tap.name)) quiet(() => sh('ip', 'link', 'del', tap.name));
  });
  return tap;
}
function bridgeName(t: ExecutionContext): string {
  const br = uniq('hwtb');
  t.teardown(() => quiet(() => sh('ip', 'link', 'del', br)));
  return br;
}
function netns(t: ExecutionContext): string {
  const ns = uniq('hwtns');
  sh('ip', 'netns', 'add', ns);
  t.teardown(() => quiet(() => sh('ip', 'netns', 'del', ns)));
  return ns;
}
/** A TAP moved into a fresh namespace (its open fd follows it) where the kernel owns 192.0.2.1/24 on it. */
function tapWithKernelAddress(t: ExecutionContext): { ns: string; tap: NativeTap } {
  const ns = netns(t);
  const tap = openTap(t);
  sh('ip', 'link', 'set', 'dev', tap.name, 'netns', ns);
  sh('ip', '-n', ns, 'addr', 'add', '192.0.2.1/24', 'dev', tap.name);
  sh('ip', '-n', ns, 'link', 'set', 'dev', tap.name, 'up');
  return { ns, tap };
}
/** A broadcast ARP request from `mac` (192.0.2.2) for 192.0.2.`target`. */
function arpRequest(mac: Buffer, target: number): Buffer {
  return Buffer.concat([
    Buffer.from('ffffffffffff', 'hex'),
    mac,
    Buffer.from('0806', 'hex'), // Ethernet: broadcast, ARP
    Buffer.from('0001080006040001', 'hex'), // Ethernet/IPv4, request
    mac,
    Buffer.from([192, 0, 2, 2]),
    Buffer.alloc(6),
    Buffer.from([192, 0, 2, target]),
  ]);
}
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));
// Tests in this file run concurrently and some block the loop with execFileSync: deadlines are generous.
async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 5));
  }
  return true;
}
/** Runs a command without blocking the loop (other tests are waiting on it). */
function run(cmd: string, args: string[]): Promise<{ status: number; stdout: string; stderr: string; error?: Error }> {
  return new Promise((resolve) =>
    execFile(cmd, args, { encoding: 'utf8' }, (error, stdout, stderr) =>
      resolve({
        status: error ? (typeof error.code === 'number' ? error.code : -1) : 0,
        stdout,
        stderr,
        error: error && typeof error.code === 'string' ? error : undefined,
      }),
    ),
  );
}
/** Runs an ESM snippet in a child node with tsx; resolves with its exit code, stdout and timings. */
function child(
  code: string,
  nodeArgs: string[] = [],
): Promise<{ code: number | null; out: string; lines: { text: string; at: number }[]; exitAt: number }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [...nodeArgs, '--import=tsx', '--input-type=module', '-e', code], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    const lines: { text: string; at: number }[] = [];
    p.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      for (const text of d.toString().split('\n').filter(Boolean)) lines.push({ text, at: Date.now() });
    });
    let exitAt = 0;
    p.on('exit', () => (exitAt = Date.now())); // the moment the process ended...
    p.on('close', (code) => resolve({ code, out, lines, exitAt })); // ...and all its output read
  });
}

tapTest('opens a TAP with the MTU, up, with its MAC and ifindex, and enslaved to a new bridge', (t) => {
  const br = bridgeName(t);
  const tap = openTap(t, { mtu: 1372, bridge: br });
  t.regex(tap.name, /^hwt[0-9a-f]{4}$/);
  t.is(tap.mtu, 1372);
  t.false(tap.persistent);
  const link = sh('ip', '-d', 'link', 'show', 'dev', tap.name);
  t.regex(link, /mtu 1372 /);
  t.regex(link, /<[^>]*\bUP\b[^>]*>/);
  t.regex(link, /tun type tap pi off/);
  t.regex(link, new RegExp(`master ${br} `));
  t.true(link.includes(`link/ether ${macString(tap.mac)} `));
  t.true(link.startsWith(`${tap.ifindex}: ${tap.name}:`));
  const bridge = sh('ip', '-d', 'link', 'show', 'dev', br);
  t.regex(bridge, /<[^>]*\bUP\b[^>]*>/);
  t.regex(bridge, /\bbridge forward_delay/);
});

tapTest('enslaves to an existing bridge, and the kernel picks a name for "%d"', (t) => {
  const br = bridgeName(t);
  sh('ip', 'link', 'add', br, 'type', 'bridge');
  const tap = NativeTap.open({ name: 'hwt%d', mtu: 1400, bridge: br });
  t.teardown(() => tap.close());
  t.regex(tap.name, /^hwt\d+$/);
  t.regex(sh('ip', 'link', 'show', 'dev', tap.name), new RegExp(`master ${br} `));
});

tapTest("readNow after flush reads the kernel's answer in the same turn, and is a no-op inside a read", async (t) => {
  const { tap } = tapWithKernelAddress(t);
  const ourMac = Buffer.from('020000c0ffee', 'hex');
  const replies: number[] = [];
  let nestedCalls = 0;
  tap.start({
    frame(f) {
      if (f.readUInt16BE(12) !== ETH_P_ARP || f.readUInt16BE(20) !== 2) return; // IPv6 chatter of a new link
      replies.push(f[31]);
      nestedCalls++;
      tap.readNow(); // inside a read: must not re-enter
      nestedCalls--;
    },
    batchEnd() {},
  });
  await new Promise((r) => setTimeout(r, 300)); // let the new link's own chatter pass
  tap.holdFlush();
  t.true(tap.write(arpRequest(ourMac, 1)));
  tap.flush();
  tap.readNow();
  // Synchronously, in this very turn: no await between the write and this check.
  t.deepEqual(replies, [1], 'the ARP reply was read by readNow(), not by a later wake-up');
  t.is(nestedCalls, 0);
  // With nothing queued, readNow reads nothing and costs one failed read.
  tap.readNow();
  t.deepEqual(replies, [1]);
});

tapTest('round trip: an ARP request written into the TAP gets the kernel ARP reply read back', async (t) => {
  const { ns, tap } = tapWithKernelAddress(t);
  const kernelMac = Buffer.from(
    sh('ip', '-n', ns, '-o', 'link', 'show', 'dev', tap.name)
      .match(/link\/ether ([0-9a-f:]{17})/)![1]
      .replace(/:/g, ''),
    'hex',
  );

  const ourMac = Buffer.from('020000c0ffee', 'hex');
  const request = arpRequest(ourMac, 1);

  let reply: Buffer | undefined;
  let frames = 0;
  let batches = 0;
  tap.start({
    frame(f) {
      frames++;
      if (f.readUInt16BE(12) === ETH_P_ARP && f.readUInt16BE(20) === 2) reply = Buffer.from(f); // copy: borrowed
    },
    batchEnd() {
      batches++;
    },
  });
  t.true(tap.write(request));
  t.true(await until(() => reply !== undefined, 10_000), 'no ARP reply read back');
  const r = reply!;
  t.true(r.subarray(0, 6).equals(ourMac), 'destination MAC is ours');
  t.true(r.subarray(6, 12).equals(kernelMac), 'source MAC is the TAP');
  t.is(r.readUInt16BE(12), ETH_P_ARP);
  t.true(r.subarray(22, 28).equals(kernelMac), 'sender hardware address');
  t.deepEqual([...r.subarray(28, 32)], [192, 0, 2, 1], 'sender IP');
  t.true(r.subarray(32, 38).equals(ourMac), 'target hardware address');
  t.deepEqual([...r.subarray(38, 42)], [192, 0, 2, 2], 'target IP');
  t.true(batches >= 1 && batches <= frames);
  const s = tap.stats;
  t.is(s.txFrames, 1);
  t.is(s.txBytes, request.length);
  t.is(s.rxFrames, frames);
  t.true(s.rxBytes >= r.length);
  t.is(s.txDropped, 0);
});

tapTest('close() removes the interface at once, is idempotent, and later writes are dropped', (t) => {
  const tap = openTap(t);
  tap.start({ frame() {}, batchEnd() {} });
  t.true(linkExists(tap.name));
  tap.close();
  t.false(linkExists(tap.name), 'interface still there after close()');
  t.notThrows(() => tap.close());
  t.false(tap.write(Buffer.alloc(60)));
  t.is(tap.stats.txDropped, 1);
});

tapTest('an interface deleted under a reading TAP stops reading with onerror, without spinning', async (t) => {
  const tap = openTap(t);
  let error: (Error & { code?: string }) | undefined;
  tap.onerror = (e) => (error = e);
  tap.start({ frame() {}, batchEnd() {} });
  sh('ip', 'link', 'del', 'dev', tap.name);
  t.true(await until(() => error !== undefined, 10_000), 'no onerror');
  t.regex(error!.message, new RegExp(`reading TAP ${tap.name} stopped`));
  await new Promise((r) => setTimeout(r, 200));
  t.is(tap.stats.rxErrors, 1, 'woken again and again on the dead fd');
  tap.write(Buffer.alloc(60)); // accepted, then dropped and counted at the flush
  await turn();
  t.is(tap.stats.txDropped, 1);
});

tapTest('a process that opened, read and closed a TAP exits within 2 s of close()', async (t) => {
  const name = uniq('hwt');
  t.teardown(() => linkExists(name) && quiet(() => sh('ip', 'link', 'del', name)));
  const r = await child(`
    import { NativeTap } from ${JSON.stringify(NATIVE_TS)};
    const tap = NativeTap.open({ name: ${JSON.stringify(name)}, mtu: 1400 });
    tap.start({ frame() {}, batchEnd() {} });
    tap.write(Buffer.alloc(60, 0xff));
    console.log('open');
    setTimeout(() => { tap.close(); console.log('closed'); }, 300);
  `);
  t.is(r.code, 0, r.out);
  const closed = r.lines.find((l) => l.text === 'closed');
  t.truthy(closed, r.out);
  t.true(r.exitAt - closed!.at < 2000, `exited ${r.exitAt - closed!.at} ms after close`);
  t.log(`child exited ${r.exitAt - closed!.at} ms after close()`);
  t.false(linkExists(name));
});

tapTest('a TAP dropped without close() is removed when garbage-collected', async (t) => {
  const name = uniq('hwt');
  t.teardown(() => linkExists(name) && quiet(() => sh('ip', 'link', 'del', name)));
  const r = await child(
    `
    import { execFileSync } from 'node:child_process';
    import { NativeTap } from ${JSON.stringify(NATIVE_TS)};
    const exists = () => { try { execFileSync('ip', ['link', 'show', 'dev', ${JSON.stringify(name)}], { stdio: 'ignore' }); return true; } catch { return false; } };
    (() => { NativeTap.open({ name: ${JSON.stringify(name)}, mtu: 1400 }); })();
    console.log('opened', exists());
    for (let i = 0; i < 20 && exists(); i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 20)); }
    console.log('after gc', exists());
  `,
    ['--expose-gc'],
  );
  t.is(r.code, 0, r.out);
  t.regex(r.out, /opened true/);
  t.regex(r.out, /after gc false/);
});

tapTest('burst: 10,000 frames written in one loop turn are all accounted for', async (t) => {
  const br = bridgeName(t);
  const tap = openTap(t, { bridge: br }); // the bridge consumes what we write
  const frame = (i: number): Buffer => {
    const f = Buffer.alloc(1400);
    Buffer.from('ffffffffffff020000000001', 'hex').copy(f, 0);
    f.writeUInt16BE(0x88b5, 12); // local experimental ethertype: nobody answers
    f.writeUInt32BE(i, 14);
    return f;
  };
  let accepted = 0;
  t.notThrows(() => {
    for (let i = 0; i < 10_000; i++) if (tap.write(frame(i))) accepted++;
  });
  await turn();
  await until(() => tap.detail.txQueued === 0, 10_000);
  const s = tap.stats;
  t.is(s.txFrames + s.txDropped, 10_000, JSON.stringify({ ...s, ...tap.detail }));
  t.is(s.txBytes, s.txFrames * 1400);
  t.true(accepted >= s.txFrames);
  t.log(`burst into a TAP: ${s.txFrames} written, ${s.txDropped} dropped, ${tap.detail.txEagain} EAGAIN`);
});

tapTest(
  'write queue: EAGAIN queues up to TAP_WRITE_QUEUE_MAX frames in order, drops the rest, drains when writable',
  async (t) => {
    const [fdA, fdB] = loadTapAddon().socketPair(64 * 1024); // datagrams behave like frames; small buffers say EAGAIN
    const a = NativeTap._fromFd(fdA);
    const b = NativeTap._fromFd(fdB);
    t.teardown(() => {
      a.close();
      b.close();
    });
    const N = 10_000;
    for (let i = 0; i < N; i++) {
      const f = Buffer.alloc(1400);
      f.writeUInt32BE(i, 0);
      a.write(f);
    }
    await turn(); // one flush for all 10,000
    const d = a.detail;
    const s = a.stats;
    t.true(d.txEagain >= 1, 'the socket buffer filled up');
    t.is(d.txQueued, TAP_WRITE_QUEUE_MAX);
    t.is(s.txFrames + d.txQueued + s.txDropped, N);
    t.is(d.txDroppedQueue, N - s.txFrames - TAP_WRITE_QUEUE_MAX);
    t.false(a.write(Buffer.alloc(60)), 'write() refuses while the queue is full');
    t.log(`burst into a socket pair: ${s.txFrames} written at once, ${d.txQueued} queued, ${d.txDroppedQueue} dropped`);

    // Now read the other end: the queue drains through UV_WRITABLE, in order.
    const seen: number[] = [];
    let batches = 0;
    b.start({
      frame(f) {
        seen.push(f.readUInt32BE(0));
      },
      batchEnd() {
        batches++;
      },
    });
    const written = s.txFrames + TAP_WRITE_QUEUE_MAX;
    t.true(await until(() => seen.length >= written, 10_000), `read ${seen.length} of ${written}`);
    t.is(a.detail.txQueued, 0);
    t.is(a.stats.txFrames, written);
    t.is(a.stats.txDropped, N - written + 1);
    // Everything written arrived in order: the first txFrames straight away, then the queued ones.
    t.deepEqual(seen.slice(0, written), [...Array(written).keys()]);
    t.true(seen.length / batches > 1, `frames were batched (${seen.length} frames in ${batches} wake-ups)`);
    t.is(b.stats.rxFrames, seen.length);
    t.is(b.stats.rxBytes, seen.length * 1400);
    t.log(`drained: ${seen.length} frames read in ${batches} wake-ups`);
  },
);

tapTest(
  'errors say what to do: name in use, not a TAP, not a bridge, bad MTU or name, no /dev/net/tun, no CAP_NET_ADMIN',
  async (t) => {
    const tap = openTap(t);
    const busy = t.throws(() => NativeTap.open({ name: tap.name, mtu: 1400 }), { instanceOf: OperatorError });
    t.is(busy?.code, 'EBUSY');
    t.regex(busy!.message, new RegExp(`${tap.name} is in use by another process`));

    const br = bridgeName(t);
    sh('ip', 'link', 'add', br, 'type', 'bridge');
    const notTap = t.throws(() => NativeTap.open({ name: br, mtu: 1400 }), { instanceOf: OperatorError });
    t.is(notTap?.code, 'EINVAL');
    t.regex(notTap!.message, /exists and is not a TAP/);

    const notBridge = t.throws(() => NativeTap.open({ name: uniq('hwt'), mtu: 1400, bridge: tap.name }), {
      instanceOf: OperatorError,
    });
    t.is(notBridge?.code, 'EOPNOTSUPP');
    t.regex(notBridge!.message, /is not a bridge/);

    t.is(
      t.throws<OperatorError>(() => NativeTap.open({ name: uniq('hwt'), mtu: 20, bridge: tap.name }))?.code,
      'EINVAL',
    );
    t.is(t.throws<OperatorError>(() => NativeTap.open({ name: 'hwt/bad', mtu: 1400 }))?.code, 'EINVAL');
    t.is(t.throws<OperatorError>(() => NativeTap.open({ name: 'hwt0123456789abcdef', mtu: 1400 }))?.code, 'EINVAL');

    // No /dev/net/tun (hidden by a tmpfs in a private mount namespace).
    const noTun = await run('unshare', [
      '-m',
      'sh',
      '-c',
      `mount -t tmpfs none /dev/net && exec "$0" "$@"`,
      process.execPath,
      '--import=tsx',
      '--input-type=module',
      '-e',
      `
      import { NativeTap } from ${JSON.stringify(NATIVE_TS)};
      try { NativeTap.open({ name: 'hwtnotun', mtu: 1400 }); console.log('{}'); }
      catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }
    `,
    ]);
    t.is(noTun.status, 0, `unshare (util-linux) must run here: ${noTun.stderr.trim()}`);
    const e = JSON.parse(noTun.stdout.trim()) as { code: string; message: string };
    t.is(e.code, 'ENOENT');
    t.regex(e.message, /load the tun module \(modprobe tun\)/);

    // Root without CAP_NET_ADMIN: the kernel refuses TUNSETIFF.
    const name = uniq('hwt');
    const r = await run('setpriv', [
      '--inh-caps=-net_admin',
      '--bounding-set=-net_admin',
      process.execPath,
      '--import=tsx',
      '--input-type=module',
      '-e',
      `
      import { NativeTap } from ${JSON.stringify(NATIVE_TS)};
      try { NativeTap.open({ name: ${JSON.stringify(name)}, mtu: 1400 }); console.log('opened'); }
      catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }
    `,
    ]);
    t.falsy(r.error, `setpriv (util-linux) must run here: ${r.error?.message}`);
    const out = JSON.parse(r.stdout.trim()) as { code: string; message: string };
    t.is(out.code, 'EPERM', r.stdout + r.stderr);
    t.is(
      out.message,
      `creating TAP ${name} needs root or CAP_NET_ADMIN (EPERM); run as root or grant CAP_NET_ADMIN (e.g. AmbientCapabilities=CAP_NET_ADMIN)`,
    );
  },
);

// Unit tests: wire codec, replay window against a naive model, MAC table ageing, config validation.
import test, { type ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  MAC_AGEING_MS,
  HANDSHAKE_INIT_BYTES,
  HANDSHAKE_RESP_BYTES,
  defaultTapMtu,
  maxFrameBytes,
  MSG_DATA,
} from '../../src/constants.ts';
import { parseCoordinatorConfig } from '../../src/coordinator/config.ts';
import { parseConfig } from '../../src/config.ts';
import { ConfigError } from '../../src/errors.ts';
import { encodeKey, generatePrivateKey, publicKeyOf, decodeKey } from '../../src/mesh/keys.ts';
import { REPLAY_WINDOW_SIZE, ReplayWindow } from '../../src/mesh/replay.ts';
import { Keypair, OPEN_NOT_AUTHENTIC, OPEN_REPLAYED } from '../../src/mesh/keypair.ts';
import {
  classify,
  counterHigh,
  fullCounter,
  readCounterLow,
  readReceiver,
  writeTransportHeader,
} from '../../src/mesh/wire.ts';
import { allUp, buildMesh, frame, waitFor } from '../helpers/memory-mesh.ts';

test('transport header round trip: the low 32 bits travel, the receiver finds the full counter', (t) => {
  for (const counter of [0, 1, 0xffffffff, 0x1_0000_0000, 2 ** 40 + 7, Number.MAX_SAFE_INTEGER]) {
    const b = Buffer.alloc(40);
    writeTransportHeader(b, 4, 0xdeadbeef, counter);
    t.is(classify(b), 4);
    t.is(readReceiver(b), 0xdeadbeef);
    t.is(readCounterLow(b), counter % 2 ** 32);
    t.is(counterHigh(counter) * 2 ** 32 + readCounterLow(b), counter);
    // In order, a little late, a little early, and across a wrap of the low half: always the sender's counter.
    for (const highest of [counter - 1, counter + 100, counter - 1000, counter + 2 ** 31 - 2, counter - 2 ** 31]) {
      if (highest < -1 || highest > Number.MAX_SAFE_INTEGER) continue;
      t.is(fullCounter(readCounterLow(b), highest), counter, `counter ${counter} after ${highest}`);
    }
  }
  t.is(fullCounter(0xffffffff, -1), 0xffffffff, 'never below zero');
  t.is(fullCounter(5, 2 ** 32 + 2 ** 31 + 10), 2 * 2 ** 32 + 5, 'the next span when nearer');
});

test("a session carries on across the wrap of the counter's low 32 bits; replays and reorders there are judged right", (t) => {
  const k1 = crypto.randomBytes(32);
  const k2 = crypto.randomBytes(32);
  const a = new Keypair(Buffer.from(k1), Buffer.from(k2), 1, 2, true, 0, 'sodium');
  const b = new Keypair(Buffer.from(k2), Buffer.from(k1), 2, 1, false, 0, 'sodium');
  a.sendCounter = 2 ** 32 - 40; // as if 4 billion messages had gone
  b.replay.accept(2 ** 32 - 41);
  const sent = Array.from({ length: 80 }, (_, i) => a.seal(MSG_DATA, Buffer.from(`frame ${i}`))!);
  // Out of order around the wrap (each one ten places late), then every one again.
  const order = sent.map((_, i) => i).sort((x, y) => (x % 10) - (y % 10) || x - y);
  for (const i of order) t.is(b.open(Buffer.from(sent[i])), `frame ${i}`.length, `datagram ${i}`);
  for (const i of order) t.is(b.open(Buffer.from(sent[i])), OPEN_REPLAYED, `datagram ${i} again`);
  t.is(b.replay.highest, 2 ** 32 + 39);
  // A forged datagram that names a counter far ahead is refused and moves nothing.
  const forged = Buffer.from(a.seal(MSG_DATA, Buffer.from('x'))!);
  forged.writeUInt32LE(0x4000_0000, 8);
  t.is(b.open(forged), OPEN_NOT_AUTHENTIC);
  t.is(b.replay.highest, 2 ** 32 + 39);
});

test('classify rejects malformed datagrams without throwing', (t) => {
  t.is(classify(Buffer.alloc(0)), 0);
  t.is(classify(Buffer.from([4])), 0);
  t.is(classify(Buffer.from([4, 0, 0, 0])), 0, 'data shorter than header + tag');
  t.is(classify(Buffer.from([4, 0, 1, 0, ...Buffer.alloc(40)])), 0, 'reserved bytes must be zero');
  t.is(classify(Buffer.from([9, 0, 0, 0, ...Buffer.alloc(40)])), 0, 'unknown type');
  t.is(classify(Buffer.alloc(HANDSHAKE_INIT_BYTES - 1, 0).fill(1, 0, 1)), 0, 'short initiation');
  const init = Buffer.alloc(HANDSHAKE_INIT_BYTES);
  init[0] = 1;
  t.is(classify(init), 1);
  const resp = Buffer.alloc(HANDSHAKE_RESP_BYTES);
  resp[0] = 2;
  t.is(classify(resp), 2);
  t.is(classify(Buffer.concat([resp, Buffer.alloc(1)])), 0, 'long response');
});

test('replay window agrees with a naive model on random counter sequences', (t) => {
  let seed = 7;
  const rand = (n: number) => {
    seed = (seed * 48271) % 2147483647;
    return seed % n;
  };
  for (let round = 0; round < 20; round++) {
    const w = new ReplayWindow();
    const seen = new Set<number>();
    let highest = -1;
    let base = round % 2 ? 2 ** 33 : 0;
    for (let i = 0; i < 20_000; i++) {
      // Mostly ascending with jitter, some duplicates, some far jumps, some very old.
      const r = rand(100);
      let c: number;
      if (r < 60) c = base + rand(64);
      else if (r < 75 && highest >= 0) c = highest - rand(REPLAY_WINDOW_SIZE + 500);
      else if (r < 85 && highest >= 0) c = highest;
      else if (r < 95) c = base + rand(20_000);
      else c = base + REPLAY_WINDOW_SIZE * (2 + rand(3));
      if (c < 0) c = 0;
      base += rand(3) === 0 ? 16 : 0;
      const expected = !seen.has(c) && (highest < 0 || c > highest || highest - c < REPLAY_WINDOW_SIZE);
      t.is(w.wouldAccept(c), expected);
      const got = w.accept(c);
      if (got !== expected) {
        t.fail(`counter ${c} highest ${highest}: got ${got}`);
        return;
      }
      if (got) {
        seen.add(c);
        if (c > highest) highest = c;
      }
    }
  }
  t.true(REPLAY_WINDOW_SIZE >= 2048);
});

test('keys: genkey/pubkey round trip and base64 validation', (t) => {
  const sk = generatePrivateKey();
  const text = encodeKey(sk);
  t.deepEqual(decodeKey(text), sk);
  t.is(encodeKey(publicKeyOf(sk)).length, 44);
  t.is(decodeKey('not base64'), null);
  t.is(decodeKey(text.slice(0, 40)), null);
  t.is(decodeKey(Buffer.alloc(31).toString('base64')), null);
});

test('MTU defaults fit a 1500-byte underlay', (t) => {
  t.is(defaultTapMtu(4), 1430, 'a 1400-byte UDP datagram (1428 bytes of IP) is one frame');
  t.is(defaultTapMtu(6), 1410);
  t.is(maxFrameBytes(4) + 20 + 8 + 28, 1500);
  t.is(maxFrameBytes(6) + 40 + 8 + 28, 1500);
});

test('MAC table entries age out on the tick', async (t) => {
  let now = 1_000_000;
  const { nodes, stop } = await buildMesh({ names: ['home', 'host-a'], now: () => now });
  t.teardown(stop);
  await waitFor(() => allUp(nodes));
  const a = nodes.get('host-a')!;
  a.tap.inject(frame('ff:ff:ff:ff:ff:ff', '52:54:00:00:00:0a', 0x88b5, Buffer.alloc(46)));
  await waitFor(() => nodes.get('home')!.tap.written.length === 1);
  const home = nodes.get('home')!;
  t.is(home.daemon.sw.table.size, 1);
  now += MAC_AGEING_MS - 1000;
  home.daemon.sw.tick(now);
  t.is(home.daemon.sw.table.size, 1);
  now += 2000;
  home.daemon.sw.tick(now);
  t.is(home.daemon.sw.table.size, 0);
});

test('sessions rekey after 120 s and old keys are refused after 180 s', async (t) => {
  let now = 5_000_000;
  const { nodes, stop } = await buildMesh({ names: ['home', 'host-a'], now: () => now });
  t.teardown(stop);
  await waitFor(() => allUp(nodes));
  const home = nodes.get('home')!.daemon.mesh;
  const a = nodes.get('host-a')!.daemon.mesh;
  const first = a.peers[0].current!;
  now += 121_000;
  a.tick();
  home.tick();
  await waitFor(
    () =>
      a.peers[0].current !== first &&
      home.peers[0].current !== null &&
      home.peers[0].current!.localIndex === a.peers[0].current!.remoteIndex,
  );
  t.not(a.peers[0].current, first);
  t.true(a.peers[0].current!.createdMs >= now, 'a session made after the clock moved');
  now += 60_000;
  a.tick();
  home.tick();
  t.true(a.peers[0].previous !== first, 'the first session is gone after 180 s');
  nodes.get('host-a')!.tap.inject(frame('ff:ff:ff:ff:ff:ff', '52:54:00:00:00:0a', 0x88b5, Buffer.alloc(46)));
  await waitFor(() => nodes.get('home')!.tap.written.length === 1);
});

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'hw-cfg-'));
}

function expectError(t: ExecutionContext, yaml: string, key: string, words: RegExp, file = 'site.yaml'): void {
  const err = t.throws(() => parseConfig(yaml, file), { instanceOf: ConfigError });
  t.is(err.key, key, err.message);
  t.regex(err.message, words);
  t.true(err.message.startsWith(`${file}: `), err.message);
}

test('config validation names the file, the key and what to do', (t) => {
  const sk = encodeKey(generatePrivateKey());
  const pk = encodeKey(publicKeyOf(generatePrivateKey()));
  const base = `name: host-a\nprivate_key: "${sk}"\nlisten: 192.0.2.2:51820\ntap: { name: hw0 }\n`;
  t.notThrows(() =>
    parseConfig(`${base}peers:\n  - { name: home, public_key: "${pk}", endpoint: 192.0.2.1:51820 }\n`, 'x.yaml'),
  );
  expectError(t, `${base}colour: blue\n`, 'colour', /unknown key/);
  expectError(t, `${base}peers:\n  - { name: home, public_key: "abc" }\n`, 'peers[0].public_key', /base64/);
  expectError(
    t,
    `${base}peers:\n  - { name: home, public_key: "${pk}", endpoint: 192.0.2.300:1 }\n`,
    'peers[0].endpoint',
    /not an IP address/,
  );
  expectError(
    t,
    `${base}peers:\n  - { name: home, public_key: "${pk}" }\n  - { name: home2, public_key: "${pk}" }\n`,
    'peers[1].public_key',
    /duplicate peer key/,
  );
  expectError(
    t,
    `${base}peers:\n  - { name: home, public_key: "${pk}" }\n  - { name: home, public_key: "${encodeKey(publicKeyOf(generatePrivateKey()))}" }\n`,
    'peers[1].name',
    /duplicate peer name/,
  );
  expectError(
    t,
    `${base}peers:\n  - { name: home, public_key: "${pk}", endpoint: "[2001:db8::1]:51820" }\n`,
    'peers[0].endpoint',
    /IPv6 but 'listen' is IPv4/,
  );
  expectError(t, base.replace('{ name: hw0 }', '{ name: hw0, mtu: 1500 }'), 'tap.mtu', /at most 1430/);
  expectError(t, base.replace('listen: 192.0.2.2:51820\n', ''), 'listen', /missing/);
  expectError(
    t,
    base.replace(`private_key: "${sk}"`, 'private_key_file: /nonexistent/hw.key'),
    'private_key_file',
    /does not exist.*homewire genkey/,
  );
  expectError(t, `${base}tap: {}\n`, '', /not valid YAML.*line/);
  expectError(t, `${base}peers:\n  - { name: home, public_key: "${pk}", mtu: 9 }\n`, 'peers[0].mtu', /unknown key/);
  const dir = tmp();
  fs.writeFileSync(path.join(dir, 'bad.key'), 'hello\n');
  expectError(
    t,
    base.replace(`private_key: "${sk}"`, 'private_key_file: bad.key'),
    'private_key_file',
    /does not hold a base64/,
    path.join(dir, 'site.yaml'),
  );
  fs.writeFileSync(path.join(dir, 'good.key'), `${sk}\n`);
  t.notThrows(() =>
    parseConfig(base.replace(`private_key: "${sk}"`, 'private_key_file: good.key'), path.join(dir, 'site.yaml')),
  );
});

test('the example configs in deploy/examples are valid once keys are filled in', (t) => {
  const dir = tmp();
  const keyFile = path.join(dir, 'private.key');
  fs.writeFileSync(keyFile, `${encodeKey(generatePrivateKey())}\n`);
  for (const name of ['home.yaml', 'vm-host.yaml']) {
    let text = fs.readFileSync(new URL(`../../deploy/examples/${name}`, import.meta.url), 'utf8');
    text = text.replace(/REPLACE_WITH_[A-Z_]+=*/g, () => encodeKey(publicKeyOf(generatePrivateKey())));
    text = text.replace(/private_key_file: .*/, `private_key_file: ${keyFile}`);
    // The coordinator: section's files, as `homewire host add host-a` and the admin would make them.
    const site = name === 'home.yaml' ? 'home' : 'host-a';
    const tokenFile = path.join(dir, `${site}.token`);
    fs.writeFileSync(tokenFile, `${site}.${'x'.repeat(43)}\n`);
    const caFile = path.join(dir, 'ca.crt');
    fs.writeFileSync(caFile, '-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n');
    text = text.replace(/token_file: .*/, `token_file: ${tokenFile}`).replace(/ca_file: \S+/, `ca_file: ${caFile}`);
    text = text.replace(/qemu_user: \S+/, 'qemu_user: "64123:64123"');
    const cfg = parseConfig(text, name);
    t.true(cfg.peers.length >= 2, name);
    t.is(cfg.coordinator?.urls[0], 'https://192.0.2.10:7100', name);
    if (name === 'home.yaml') t.is(cfg.coordinator?.hypervisor, 'none', 'home joins the coordinator without VMs');
  }
  // The coordinator's example, with its credential files in place.
  let text = fs.readFileSync(new URL('../../deploy/examples/coordinator.yaml', import.meta.url), 'utf8');
  for (const [f, body] of [
    ['coordinator.crt', '-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n'],
    ['coordinator.key', '-----BEGIN PRIVATE KEY-----\nMA==\n-----END PRIVATE KEY-----\n'],
    ['admin.token', `${'a'.repeat(32)}\n`],
  ]) {
    fs.writeFileSync(path.join(dir, f), body);
    text = text.replace(`/run/credentials/homewire-coordinator.service/${f}`, path.join(dir, f));
  }
  const c = parseCoordinatorConfig(text, 'coordinator.yaml');
  t.is(c.advertiseUrl, 'https://192.0.2.10:7100');
  t.deepEqual(c.imageSources, ['images.example.org', '192.0.2.10:8080']);
});

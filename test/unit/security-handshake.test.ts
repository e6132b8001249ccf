// The handshake guard attacked in process (mesh/cookie.ts; README "Security model" and "Wire format"): bogus
// initiations without mac1 cost no Diffie-Hellman; a flood of mac1-valid initiations from spoofed addresses
// puts the responder under load, where it answers with cookies instead of DH and a real peer still gets its
// session; one source with valid cookies is held to its token bucket; a forged response does not cancel the
// pending handshake; responses to our own initiations are processed before queued initiations.
import test, { type ExecutionContext } from 'ava';
import sodium from 'sodium-native';
import {
  HANDSHAKE_INIT_BYTES,
  HANDSHAKE_RESP_BYTES,
  MSG_HANDSHAKE_INIT,
  MSG_HANDSHAKE_RESP,
} from '../../src/constants.ts';
import { HandshakeGuard } from '../../src/mesh/cookie.ts';
import { generatePrivateKey, publicKeyOf } from '../../src/mesh/keys.ts';
import { classify } from '../../src/mesh/wire.ts';
import { captureLog } from '../helpers/capture-log.ts';
import { allUp, arp, buildMesh, waitFor } from '../helpers/memory-mesh.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A bogus initiation: random Noise bytes behind a valid header (type 1, a random sender index). */
function bogusInit(): Buffer {
  const msg = Buffer.alloc(HANDSHAKE_INIT_BYTES);
  sodium.randombytes_buf(msg);
  msg[0] = MSG_HANDSHAKE_INIT;
  msg[1] = msg[2] = msg[3] = 0;
  return msg;
}

/** An attacker who knows the target's public key (a hostile host's operator does: it is in their config). */
function attacker(targetPublicKey: Buffer) {
  const guard = new HandshakeGuard(publicKeyOf(generatePrivateKey()), Date.now);
  const r = guard.remote({}, targetPublicKey);
  return {
    guard,
    r,
    stamp: (msg: Buffer) => {
      guard.stamp(msg, r);
      return msg;
    },
  };
}

/** mac1-valid bogus initiations from spoofed 198.18.0.0/15 sources, ~perTick every 20 ms, until stop(). */
function startFlood(
  net: { inject: (msg: Buffer, fromAddress: string, fromPort: number, toAddress: string, toPort: number) => void },
  stamp: (m: Buffer) => Buffer,
  perTick = 400,
) {
  let on = true;
  let sent = 0;
  const done = (async () => {
    while (on) {
      for (let i = 0; i < perTick; i++, sent++)
        net.inject(stamp(bogusInit()), `198.18.${(sent >> 8) & 255}.${sent & 255}`, 2000, '192.0.2.1', 51820);
      await sleep(20);
    }
  })();
  return {
    get sent() {
      return sent;
    },
    stop: async () => {
      on = false;
      await done;
    },
  };
}

async function twoSites(t: ExecutionContext) {
  const m = await buildMesh({ names: ['home', 'host-a'] });
  t.teardown(m.stop);
  await waitFor(() => allUp(m.nodes));
  return { ...m, home: m.nodes.get('home')!, a: m.nodes.get('host-a')! };
}

test.serial(
  'an initiation with a valid mac1 that cannot be read (another wire version) is counted and logged once per 10 s',
  async (t) => {
    const cap = captureLog('warn');
    const m = await buildMesh({ names: ['home', 'host-a'], log: (name) => (name === 'home' ? cap.log : undefined) });
    t.teardown(m.stop);
    await waitFor(() => allUp(m.nodes));
    const home = m.nodes.get('home')!;
    const mesh = home.daemon.mesh;
    const evil = attacker(home.daemon.config.publicKey);
    const invalid = mesh.handshakes.invalid;
    // What a v1 site sends: mac1 right (it knows home's key), Noise under another prologue (here: random).
    for (let i = 0; i < 5; i++) m.net.inject(evil.stamp(bogusInit()), '192.0.2.2', 51820, '192.0.2.1', 51820);
    await waitFor(() => mesh.handshakes.invalid === invalid + 5);
    t.is(mesh.drops.handshake_invalid, 5);
    const about = cap.lines().filter((l) => /another homewire wire version/.test(String(l.msg)));
    t.is(about.length, 1, 'one line for five, not five');
    t.is(about[0].from, '192.0.2.2:51820');
    t.is(about[0].prologue, 'homewire v2');
    t.true(allUp(m.nodes), 'the real session is untouched');
  },
);

test.serial('initiations without a valid mac1 are dropped before any Diffie-Hellman', async (t) => {
  const { net, home, a } = await twoSites(t);
  const mesh = home.daemon.mesh;
  const invalid = mesh.handshakes.invalid;
  for (let i = 0; i < 2000; i++) net.inject(bogusInit(), `198.18.${i >> 8}.${i & 255}`, 1000 + i, '192.0.2.1', 51820);
  await waitFor(() => mesh.guard.stats.mac1_invalid === 2000);
  t.is(mesh.handshakes.invalid, invalid, 'not one reached the Noise handshake');
  t.is(mesh.guard.stats.cookies_sent, 0);
  a.tap.inject(arp(1, '52:54:00:00:00:0a', '198.51.100.10', '00:00:00:00:00:00', '198.51.100.1'));
  await waitFor(() => home.tap.written.length === 1);
});

test.serial(
  'under a flood of mac1-valid initiations from spoofed addresses, a real peer still gets its session',
  async (t) => {
    const { net, home, a } = await twoSites(t);
    const mesh = home.daemon.mesh;
    const evil = attacker(home.daemon.config.publicKey);
    const flood = startFlood(net, evil.stamp); // ~20,000 per second, as far as this event loop lets them out
    t.teardown(flood.stop);
    await waitFor(() => mesh.guard.underLoad, 5000);
    // host-a re-handshakes now (a rekey, a restart): its first initiation gets a cookie, the resend with mac2 is
    // processed.
    const peer = a.daemon.mesh.peers[0];
    const completed = a.daemon.mesh.handshakes.completed;
    const started = Date.now();
    a.daemon.mesh.initiate(peer);
    await waitFor(() => a.daemon.mesh.handshakes.completed === completed + 1, 10_000);
    const ms = Date.now() - started;
    await flood.stop();
    const sent = flood.sent;
    t.log(
      `${sent} bogus initiations; host-a's handshake completed in ${ms} ms; home: ${JSON.stringify(mesh.guard.stats)}, ` +
        `${mesh.handshakes.invalid} went through DH`,
    );
    t.true(mesh.guard.stats.cookies_sent > 0, 'cookie replies were sent');
    t.true(a.daemon.mesh.guard.stats.cookie_replies_accepted >= 1, 'host-a took a cookie and resent with mac2');
    t.true(mesh.handshakes.invalid < sent / 4, `${mesh.handshakes.invalid} of ${sent} cost a Diffie-Hellman`);
    a.tap.inject(arp(1, '52:54:00:00:00:0a', '198.51.100.10', '00:00:00:00:00:00', '198.51.100.1'));
    await waitFor(() => home.tap.written.length === 1);
  },
);

test.serial('one source with valid cookies is held to its token bucket', async (t) => {
  const { net, home } = await twoSites(t);
  const mesh = home.daemon.mesh;
  const evil = attacker(home.daemon.config.publicKey);
  // The attacker has a real address and reads the cookie replies sent to it.
  const replies: Buffer[] = [];
  const sock = net.bind('203.0.113.5', 4000);
  sock.start((msg) => replies.push(msg));
  // Spoofed noise keeps home under load meanwhile.
  const flood = startFlood(net, evil.stamp, 100);
  t.teardown(flood.stop);
  await waitFor(() => mesh.guard.underLoad, 5000);
  const src = attacker(home.daemon.config.publicKey);
  const init = src.stamp(bogusInit());
  sock.send(init, 51820, '192.0.2.1');
  await waitFor(() => replies.some((r) => classify(r) === 3));
  t.true(src.guard.consumeReply(replies.find((r) => classify(r) === 3)!, src.r), 'the cookie decrypts');
  const limited = mesh.guard.stats.rate_limited;
  for (let i = 0; i < 100; i++) {
    const m = Buffer.from(init);
    src.guard.stamp(m, src.r); // same mac1, mac2 from the cookie
    sock.send(m, 51820, '192.0.2.1');
  }
  await waitFor(() => mesh.guard.stats.rate_limited >= limited + 90, 5000);
  await flood.stop();
  t.pass();
});

test.serial('a forged response does not cancel the pending handshake; the real one completes it', async (t) => {
  const { net, a } = await twoSites(t);
  let held: Buffer | null = null;
  let init: Buffer | null = null;
  net.filter = (msg, from) => {
    if (from === '192.0.2.2:51820' && classify(msg) === MSG_HANDSHAKE_INIT) init = Buffer.from(msg);
    if (from === '192.0.2.1:51820' && classify(msg) === MSG_HANDSHAKE_RESP && held === null) {
      held = Buffer.from(msg);
      return null;
    }
    return msg;
  };
  const mesh = a.daemon.mesh;
  const { invalid, completed } = mesh.handshakes;
  mesh.initiate(mesh.peers[0]);
  await waitFor(() => held !== null && init !== null);
  // An on-path attacker saw the initiation: it answers first, with a valid mac1 and garbage Noise.
  const forged = Buffer.alloc(HANDSHAKE_RESP_BYTES);
  sodium.randombytes_buf(forged);
  forged[0] = MSG_HANDSHAKE_RESP;
  forged[1] = forged[2] = forged[3] = 0;
  init!.copy(forged, 8, 4, 8); // receiver: the initiator's index
  attacker(a.daemon.config.publicKey).stamp(forged);
  net.inject(forged, '192.0.2.1', 51820, '192.0.2.2', 51820);
  await waitFor(() => mesh.handshakes.invalid === invalid + 1);
  t.truthy(mesh.peers[0].pending, 'still pending');
  net.inject(held!, '192.0.2.1', 51820, '192.0.2.2', 51820);
  await waitFor(() => mesh.handshakes.completed === completed + 1);
  t.is(mesh.peers[0].pending, null);
});

test.serial('responses to our own initiations are processed before queued initiations', async (t) => {
  const { net, home } = await twoSites(t);
  const mesh = home.daemon.mesh;
  mesh.guard.enabled = false; // let the bogus initiations all reach the queue (each costs a DH)
  const evil = attacker(home.daemon.config.publicKey);
  for (let i = 0; i < 1000; i++)
    net.inject(evil.stamp(bogusInit()), `198.18.2.${i & 255}`, 5000 + i, '192.0.2.1', 51820);
  await waitFor(() => mesh.handshakes.invalid > 0);
  const completed = mesh.handshakes.completed;
  mesh.initiate(mesh.peers[0]);
  await waitFor(() => mesh.handshakes.completed === completed + 1, 10_000);
  const processedBefore = mesh.handshakes.invalid;
  await waitFor(() => mesh.handshakes.invalid + mesh.drops.handshake_queue_full >= 1000, 20_000);
  t.log(`home completed its own handshake after ${processedBefore} of 1000 queued initiations`);
  t.true(processedBefore < 400, `${processedBefore} bogus initiations were processed first`);
});

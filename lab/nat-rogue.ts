// A hostile site for the NAT lab's bad-input test, run in a namespace:
//
//   node --import tsx lab/nat-rogue.ts unknown --home ADDR:PORT --home-key KEY
//       a key home does not know: handshake initiations that home must refuse
//   node --import tsx lab/nat-rogue.ts forge --key-file F --home ADDR:PORT --home-key KEY --target NAME
//       a key home knows (a compromised site): over its real session it sends home a forged introduction, a
//       relay request for a site id home does not serve, a forged introduction and withdrawal relayed to
//       site NAME, malformed signals, and random datagrams
// Prints one JSON line with what it sent. Uses the mesh's own code, so every message is well sealed.
import fs from 'node:fs';
import { MSG_RELAY_DATA, MSG_RELAY_SIGNAL } from '../src/constants.ts';
import { silentLogger } from '../src/log.ts';
import { decodeKey, generatePrivateKey, publicKeyOf } from '../src/mesh/keys.ts';
import { Mesh } from '../src/mesh/mesh.ts';
import { encodeIntroduce, encodeWithdraw } from '../src/mesh/natsignal.ts';
import { DgramSocket } from '../src/udp/dgram.ts';

const [mode, ...rest] = process.argv.slice(2);
const arg = (name: string): string => {
  const i = rest.indexOf(`--${name}`);
  if (i < 0 || !rest[i + 1]) throw new Error(`missing --${name}`);
  return rest[i + 1];
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<Record<string, unknown>> {
  const [address, port] = arg('home').split(':');
  const homeKey = decodeKey(arg('home-key'))!;
  const secret = mode === 'unknown' ? generatePrivateKey() : decodeKey(fs.readFileSync(arg('key-file'), 'utf8'))!;
  const socket = await DgramSocket.bind('0.0.0.0', 51830);
  const mesh = new Mesh(
    { publicKey: publicKeyOf(secret), secretKey: secret },
    socket,
    [{ name: 'home', publicKey: homeKey, endpoint: { address, port: Number(port) }, introducer: true }],
    silentLogger,
  );
  mesh.start({ frame: () => {}, signal: () => {} });
  const timer = setInterval(() => mesh.tick(), 250);
  const home = mesh.peerByName('home')!;
  try {
    if (mode === 'unknown') {
      for (let i = 0; i < 5; i++) {
        mesh.initiate(home);
        await sleep(200);
      }
      return { mode, initiations: mesh.handshakes.initiated, session: home.current !== null };
    }
    for (let i = 0; i < 100 && home.current === null; i++) await sleep(100);
    if (home.current === null) throw new Error('no session with home');
    const target = arg('target');
    for (let i = 0; i < 50 && !mesh.peerByName(target); i++) await sleep(100);
    const victim = mesh.peerByName(target);
    if (!victim) throw new Error(`home did not introduce ${target}`);
    const fake = {
      siteId: 0x0dead,
      publicKey: Buffer.alloc(32, 0x42),
      flags: 1,
      name: 'evil',
      endpoints: [{ address: '203.0.113.200', port: 51820 }],
    };
    const send = (msg: Buffer | null) => {
      if (msg) socket.send(msg, home.endpoint!.port, home.endpoint!.address);
    };
    // 1. An introduction to home, which takes none.
    mesh.sendSignal(home, encodeIntroduce(fake));
    // 2. A relay request for a site id home does not serve.
    send(home.current.seal(MSG_RELAY_DATA, Buffer.alloc(60, 0xab), 0xabcde));
    // 3. A forged introduction and a withdrawal of home's own sites, relayed by home to the victim.
    send(home.current.seal(MSG_RELAY_SIGNAL, encodeIntroduce(fake), victim.siteId));
    send(home.current.seal(MSG_RELAY_SIGNAL, encodeWithdraw(homeKey), victim.siteId));
    // 4. Malformed signals and random datagrams.
    mesh.sendSignal(home, Buffer.from([16, 1, 2]));
    for (let i = 0; i < 200; i++) {
      const junk = Buffer.alloc(16 + Math.floor(Math.random() * 200));
      for (let j = 0; j < junk.length; j++) junk[j] = Math.floor(Math.random() * 256);
      junk[0] = 1 + (i % 7);
      socket.send(junk, home.endpoint!.port, home.endpoint!.address);
    }
    mesh.flush();
    await sleep(300);
    return { mode, victim: victim.name, victimSiteId: victim.siteId, sent: 6 + 200 };
  } finally {
    clearInterval(timer);
    await mesh.close();
  }
}

main().then(
  (r) => {
    process.stdout.write(`${JSON.stringify(r)}\n`);
    process.exit(0);
  },
  (err) => {
    process.stderr.write(`${(err as Error).stack}\n`);
    process.exit(1);
  },
);

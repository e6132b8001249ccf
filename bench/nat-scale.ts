// Scale by simulation: N sites (default 200) behind port-restricted NATs and one home (introduce + relay),
// all in one process on the in-memory twins (lab/twins/). Reports:
//   - handshakes per second at start (home, all sites started at once) and the time until every site knows
//     every other (N·(N−1) introductions);
//   - the time for a site added to home's config (reload) to be known everywhere;
//   - memory per introduced peer (heap, after a GC);
//   - datagrams per broadcast: what one guest broadcast costs the origin site and home, against a full mesh.
// Run: node --expose-gc --import tsx bench/nat-scale.ts [--sites 200]
import { parseConfig } from '../src/config.ts';
import { Daemon } from '../src/daemon.ts';
import { silentLogger } from '../src/log.ts';
import { encodeKey, generatePrivateKey, publicKeyOf } from '../src/mesh/keys.ts';
import { MemoryTap } from '../lab/twins/tap.ts';
import { MemoryNat, MemoryNetwork } from '../lab/twins/udp.ts';

const argv = process.argv.slice(2);
const N = Number(argv[argv.indexOf('--sites') + 1] || 0) || 200;
const HOME = '203.0.113.1';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const gc = (globalThis as { gc?: () => void }).gc;

async function waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<number> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms: ${what}`);
    await sleep(20);
  }
  return Date.now() - start;
}

function heapMb(): number {
  gc?.();
  gc?.();
  return process.memoryUsage().heapUsed / 2 ** 20;
}

async function main(): Promise<void> {
  const net = new MemoryNetwork();
  const lookup = async () => [HOME];
  const homeKey = generatePrivateKey();
  const sites = Array.from({ length: N + 1 }, (_, i) => ({
    name: `site-${i + 1}`,
    key: generatePrivateKey(),
    inside: `198.18.${Math.floor(i / 250)}.${(i % 250) + 2}`,
    public: `203.0.${113 + Math.floor((i + 10) / 250)}.${((i + 10) % 250) + 1}`,
  }));
  const listed = new Set(sites.slice(0, N).map((s) => s.name));
  const homeYaml = () =>
    [
      'name: home',
      `private_key: "${encodeKey(homeKey)}"`,
      `listen: ${HOME}:51820`,
      'introduce: true',
      'relay: true',
      'tap: { name: hw-home }',
      'peers:',
      ...sites
        .filter((s) => listed.has(s.name))
        .map((s) => `  - { name: ${s.name}, public_key: "${encodeKey(publicKeyOf(s.key))}" }`),
    ].join('\n');
  const baseHeap = heapMb();
  const homeTap = new MemoryTap('hw-home');
  const home = await Daemon.fromConfig(parseConfig(homeYaml(), 'home.yaml'), {
    tap: homeTap,
    socket: net.bind(HOME, 51820),
    log: silentLogger,
    lookup,
  });
  await home.start();
  const daemons: Daemon[] = [];
  const taps: MemoryTap[] = [];
  const startSite = async (s: (typeof sites)[number]) => {
    net.addNat(new MemoryNat('port-restricted', s.public), [s.inside]);
    const yaml = [
      `name: ${s.name}`,
      `private_key: "${encodeKey(s.key)}"`,
      'listen: 0.0.0.0:51820',
      `tap: { name: hw-${s.name} }`,
      'peers:',
      `  - { name: home, public_key: "${encodeKey(publicKeyOf(homeKey))}", endpoint: "home.example.net:51820", introducer: true }`,
    ].join('\n');
    const tap = new MemoryTap(`hw-${s.name}`);
    const d = await Daemon.fromConfig(parseConfig(yaml, `${s.name}.yaml`), {
      tap,
      socket: net.bind(s.inside, 51820),
      log: silentLogger,
      lookup,
      localAddresses: () => [s.inside],
    });
    await d.start();
    daemons.push(d);
    taps.push(tap);
  };
  const startedAt = Date.now();
  for (const s of sites.slice(0, N)) await startSite(s);
  const startMs = Date.now() - startedAt;
  // Home's handshake rate: from its first answered initiation to the last site's session.
  let firstHandshakeAt = 0;
  const homeUp = await waitFor(
    () => {
      if (firstHandshakeAt === 0 && home.mesh.handshakes.responded > 0) firstHandshakeAt = Date.now();
      return home.mesh.peers.every((p) => p.current !== null);
    },
    120_000,
    'every site has a session with home',
  );
  const handshakes = home.mesh.handshakes.responded;
  const handshakeWindowMs = Math.max(1, Date.now() - firstHandshakeAt);
  await waitFor(() => daemons.every((d) => d.mesh.peers.length === N), 300_000, 'every site knows every other');
  const totalMs = Date.now() - startedAt;
  console.log(
    `${N} sites started in ${startMs} ms; every site had a session with home ${homeUp} ms later ` +
      `(home answered ${handshakes} initiations in ${handshakeWindowMs} ms: ${Math.round((handshakes / handshakeWindowMs) * 1000)}/s); ` +
      `every site knew all ${N - 1} others ${totalMs} ms after the first start`,
  );
  await sleep(4000); // the introductions' repeats (1 s, 3 s) are done
  const heap = heapMb();
  const introduced = daemons.reduce((a, d) => a + d.mesh.peers.length - 1, 0);
  console.log(
    `heap: ${(heap - baseHeap).toFixed(1)} MB for ${N + 1} daemons and ${introduced} introduced peers ` +
      `(${(((heap - baseHeap) * 2 ** 20) / introduced / 1024).toFixed(2)} KB per introduced peer, daemons included)`,
  );

  // A broadcast from one guest: what it costs the origin site and home.
  const homeAt0 = daemons[0].mesh.peers.find((p) => p.name === 'home')!;
  const originTx = homeAt0.stats.txPackets;
  const relayed = () =>
    home
      .relayed()
      .filter((r) => r.from === sites[0].name)
      .reduce((a, r) => a + r.packets, 0);
  const relayed0 = relayed();
  const written0 = taps.slice(1).reduce((a, t) => a + t.written.length, 0);
  const bcast = Buffer.alloc(60);
  bcast.fill(0xff, 0, 6);
  Buffer.from('525400aabbcc', 'hex').copy(bcast, 6);
  bcast.writeUInt16BE(0x88b5, 12);
  taps[0].inject(bcast);
  await waitFor(
    () => taps.slice(1).reduce((a, t) => a + t.written.length, 0) === written0 + N - 1,
    30_000,
    'the broadcast reached every site',
  );
  await sleep(200);
  console.log(
    `one broadcast: ${homeAt0.stats.txPackets - originTx} datagram from the origin site, ${relayed() - relayed0} relayed by home ` +
      `(and home's own LAN got it: ${homeTap.written.length > 0}); a full mesh sends ${N} from the origin`,
  );

  // A site added to home's config: time until every site knows it, and it reaches every site.
  const extra = sites[N];
  await startSite(extra);
  await sleep(1500); // it knocks, refused
  listed.add(extra.name);
  const reloadAt = Date.now();
  home.apply(parseConfig(homeYaml(), 'home.yaml'));
  const sessionMs = await waitFor(
    () => home.mesh.peerByName(extra.name)?.current != null,
    60_000,
    'home has a session with the added site',
  );
  const addMs = await waitFor(
    () => daemons.slice(0, N).every((d) => d.mesh.peerByName(extra.name) !== undefined),
    60_000,
    'the added site is known everywhere',
  );
  const knowsAll = await waitFor(() => daemons[N].mesh.peers.length === N + 1, 60_000, 'the added site knows everyone');
  console.log(
    `added site: session with home ${sessionMs} ms after home's reload, known at every site ${sessionMs + addMs} ms after it; it knew all others ${Date.now() - reloadAt} ms after (${knowsAll} ms later)`,
  );
  await Promise.all([...daemons, home].map((d) => d.stop()));
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

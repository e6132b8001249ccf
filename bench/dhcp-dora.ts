// DHCP benchmark: N simulated clients doing full DORA (DISCOVER, OFFER, REQUEST, ACK) against an in-process
// DhcpServer through offer()/send, with the lease store on disk (WAL, synchronous=FULL: an fsync per commit).
// Reports leases/s and DISCOVER-to-ACK latency (p50/p99) at several concurrency levels.
//
//   npx tsx bench/dhcp-dora.ts [--clients N] [--concurrency C[,C...]] [--dir DIR] [--json]
//
// Clients live on 8 simulated VM-host sites; frames a client sends in answer to a reply are delivered on the
// next event-loop turn (as the switch would deliver them), so commits batch the ACKs of one turn.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseReply, SimClient, simMac } from '../lab/dhcp-client-sim.ts';
import { parseDhcpConfig } from '../src/dhcp/config.ts';
import { DHCPACK, DHCPOFFER } from '../src/dhcp/constants.ts';
import { DhcpServer } from '../src/dhcp/server.ts';

const SITES = 8;

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}

interface Result {
  clients: number;
  concurrency: number;
  seconds: number;
  leasesPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  commits: number;
  acksPerCommit: number;
}

async function run(clients: number, concurrency: number, dir: string): Promise<Result> {
  const db = path.join(dir, `leases-${concurrency}.db`);
  for (const f of [db, `${db}-wal`, `${db}-shm`]) fs.rmSync(f, { force: true });
  const cfg = parseDhcpConfig(
    {
      subnet: '10.77.0.0/16',
      server_ip: '10.77.0.2',
      pool: '10.77.1.0-10.77.255.254',
      router: '10.77.0.1',
      dns: ['10.77.0.1'],
      domain: 'home.example',
      lease_seconds: 3600,
      lease_db: db,
      rate_limit_per_site_per_minute: 1_000_000,
      // The defaults cap a site at 256 leases (a hostile host may not drain the pool): 20,000 clients on 8 sites
      // are this bench's load, not an attack. Without this the run waited forever for the refused ones.
      max_leases_per_site: 65_536,
    },
    path.join(dir, 'bench.yaml'),
  );

  const byMac = new Map<string, { c: SimClient; site: string; start: number }>();
  const latencies = new Float64Array(clients);
  let started = 0;
  let done = 0;
  let queue: Array<[Buffer, string]> = [];
  let finish!: () => void;
  const finished = new Promise<void>((r) => {
    finish = r;
  });

  const startNext = () => {
    const n = started++;
    const mac = simMac(n + 1);
    const c = new SimClient(mac, 'dhcpcd', `vm${n}`);
    const site = `host${n % SITES}`;
    byMac.set([...mac].map((b) => b.toString(16).padStart(2, '0')).join(':'), { c, site, start: performance.now() });
    queue.push([c.discover(), site]);
  };

  const server = DhcpServer.open(cfg, {
    mtu: 1426,
    send(frame) {
      const r = parseReply(frame)!;
      const e = byMac.get(r.dstMac)!;
      if (r.type === DHCPOFFER) {
        queue.push([e.c.select(r), e.site]);
      } else if (r.type === DHCPACK) {
        latencies[done++] = performance.now() - e.start;
        byMac.delete(r.dstMac);
        if (started < clients) startNext();
        if (done === clients) finish();
      } else {
        throw new Error(`unexpected reply type ${r.type}`);
      }
    },
  });

  const pump = () => {
    const q = queue;
    queue = [];
    for (const [f, site] of q) server.offer(f, site);
    if (done < clients) setImmediate(pump);
  };
  const t0 = performance.now();
  for (let i = 0; i < Math.min(concurrency, clients); i++) startNext();
  setImmediate(pump);
  // A client the server never answers (refused, dropped) would leave the run waiting forever: stop with why.
  let lastDone = -1;
  const stalled = new Promise<never>((_, reject) => {
    const watch = setInterval(() => {
      if (done === lastDone) {
        clearInterval(watch);
        reject(
          new Error(
            `no lease in 10 s (${done} of ${clients} done); server drops: ${JSON.stringify(server.stats.dropped)}`,
          ),
        );
      }
      lastDone = done;
    }, 10_000);
    finished.then(() => clearInterval(watch));
  });
  await Promise.race([finished, stalled]);
  const seconds = (performance.now() - t0) / 1000;
  const commits = server.stats.commits;
  if (server.stats.leasesActive !== clients)
    throw new Error(`expected ${clients} leases, have ${server.stats.leasesActive}`);
  server.close();
  const sorted = Array.from(latencies).sort((a, b) => a - b);
  const pct = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
  return {
    clients,
    concurrency,
    seconds: round(seconds),
    leasesPerSecond: Math.round(clients / seconds),
    p50Ms: round(pct(50)),
    p99Ms: round(pct(99)),
    maxMs: round(sorted[sorted.length - 1]),
    commits,
    acksPerCommit: round(clients / commits),
  };
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}

async function main() {
  const clients = Number(arg('clients', '20000'));
  const levels = arg('concurrency', '1,16,64,256,1024').split(',').map(Number);
  const given = arg('dir', '');
  const dir = given || fs.mkdtempSync(path.join(os.tmpdir(), 'hwdhcp-bench-'));
  const results: Result[] = [];
  try {
    for (const c of levels) {
      // Serial clients pay one fsync each: fewer of them keep the run short.
      const n = c === 1 ? Math.min(clients, 2000) : clients;
      results.push(await run(n, c, dir));
    }
  } finally {
    if (!given) fs.rmSync(dir, { recursive: true, force: true });
  }
  if (process.argv.includes('--json')) {
    console.log(JSON.stringify(results));
    return;
  }
  console.log(
    `DHCP DORA benchmark (node ${process.version}, ${os.cpus().length} cores, store in ${given || os.tmpdir()})`,
  );
  console.log('clients  concurrency  leases/s   p50 ms   p99 ms   max ms   commits  acks/commit');
  for (const r of results) {
    console.log(
      `${String(r.clients).padStart(7)}  ${String(r.concurrency).padStart(11)}  ${String(r.leasesPerSecond).padStart(8)}  ` +
        `${r.p50Ms.toFixed(2).padStart(7)}  ${r.p99Ms.toFixed(2).padStart(7)}  ${r.maxMs.toFixed(2).padStart(7)}  ` +
        `${String(r.commits).padStart(8)}  ${r.acksPerCommit.toFixed(1).padStart(11)}`,
    );
  }
}

await main();

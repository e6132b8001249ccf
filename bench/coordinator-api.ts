// Coordinator figures on the in-memory hypervisor twin (no QEMU, no root): one coordinator (SQLite on
// disk), N host agents, and per operation the latency through the real HTTP API, long polls included.
//   node --import tsx bench/coordinator-api.ts [--hosts 20] [--vms 200]
// Prints a table and a JSON line; a benchmark reports, it asserts nothing.
import { Harness } from '../lab/coordinator/harness.ts';
import type { VmRecord } from '../src/coordinator/types.ts';

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const HOSTS = arg('--hosts', 20);
const VMS = arg('--vms', 200);

function stats(ms: number[]) {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return { n: s.length, p50: q(0.5), p90: q(0.9), p99: q(0.99), max: s[s.length - 1] };
}

async function timed<T>(out: number[], fn: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  const r = await fn();
  out.push(performance.now() - t0);
  return r;
}

const h = await Harness.start();
try {
  for (let i = 0; i < HOSTS; i++) await h.addHost(`host-${i}`, { cpus: 64, memoryMib: 65536, site: `dc${i % 3}` });
  await h.addImage();
  const create: number[] = [],
    start: number[] = [],
    migrate: number[] = [],
    stop: number[] = [],
    list: number[] = [],
    hosts: number[] = [];
  const wall = performance.now();
  for (let i = 0; i < VMS; i++) {
    await timed(create, () => h.admin.request('POST', '/v1/vms', { name: `vm${i}`, image: 'tiny', memory_mib: 128 }));
    await timed(start, () => h.admin.request<VmRecord>('POST', `/v1/vms/vm${i}/start`, {}));
  }
  for (let i = 0; i < Math.min(VMS, 100); i++)
    await timed(migrate, () => h.admin.request('POST', `/v1/vms/vm${i}/migrate`, {}));
  for (let i = 0; i < 50; i++) {
    await timed(list, () => h.admin.request('GET', '/v1/vms'));
    await timed(hosts, () => h.admin.request('GET', '/v1/hosts?free_memory_mib=1024&site=dc1'));
  }
  for (let i = 0; i < VMS; i++) await timed(stop, () => h.admin.request('POST', `/v1/vms/vm${i}/stop`, {}));
  const seconds = (performance.now() - wall) / 1000;
  const rows: [string, number[]][] = [
    ['create', create],
    ['start', start],
    ['migrate (fake)', migrate],
    ['stop', stop],
    [`GET /v1/vms (${VMS} vms)`, list],
    [`GET /v1/hosts filtered (${HOSTS} hosts)`, hosts],
  ];
  console.log(`coordinator, ${HOSTS} fake hosts, ${VMS} VMs, SQLite store (ms through HTTP, long polls included)`);
  console.log(
    `${'operation'.padEnd(34)} ${'n'.padStart(5)} ${'p50'.padStart(8)} ${'p90'.padStart(8)} ${'p99'.padStart(8)} ${'max'.padStart(8)}`,
  );
  const out: Record<string, unknown> = {};
  for (const [name, ms] of rows) {
    const s = stats(ms);
    out[name] = s;
    console.log(
      `${name.padEnd(34)} ${String(s.n).padStart(5)} ${[s.p50, s.p90, s.p99, s.max].map((v) => v.toFixed(2).padStart(8)).join(' ')}`,
    );
  }
  console.log(`total ${seconds.toFixed(1)} s`);
  console.log(JSON.stringify({ bench: 'coordinator-api', hosts: HOSTS, vms: VMS, seconds, ops: out }));
} finally {
  await h.stop();
}

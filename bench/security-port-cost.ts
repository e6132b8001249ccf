// What the segment defences cost the data path (issue 10: port_security strict vs off, target within 5 %):
// iperf3 TCP guest-a -> lan through two sites (home + host-a) in namespaces, the modes alternating run by run
// (the config is rewritten and reloaded, no restart) so a shared machine's drift hits them alike.
//   strict        the defaults (port security strict, ARP inspection on, RA guard, DHCP snooping, storm
//                 control, ARP suppression); ARP inspection learns, since the lab's guests are static
//   ps-off        port_security: off, the rest as strict
//   all-off       port_security off, arp_inspection off, ra_guard and dhcp_snooping false, flood_pps 0,
//                 arp_suppression false
// A benchmark: it reports (median and range per mode), it never fails for being slow.
//
//   sudo node --import tsx bench/security-port-cost.ts [--runs 5] [--seconds 10]
import fs from 'node:fs';
import { median } from '../lab/run.ts';
import { HOMEWIRE_BIN, Lab } from '../lab/topology.ts';

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}
const RUNS = option('--runs', 5);
const SECONDS = option('--seconds', 10);

const ALL_OFF =
  'port_security: off, arp_inspection: off, ra_guard: false, dhcp_snooping: false, flood_pps: 0, arp_suppression: false';
const MODES: Record<string, string> = {
  strict: 'arp_inspection: learn',
  'ps-off': 'port_security: off, arp_inspection: learn',
  'all-off': ALL_OFF,
};

let mode = 'strict';
const siteConfig = (site: string) => `security: { ${site === 'home' ? 'local_side: lan, ' : ''}${MODES[mode]} }`;

async function main(): Promise<void> {
  const lab = await Lab.create({ prefix: 'hwsb-', sites: ['home', 'host-a'], siteConfig });
  const mbps: Record<string, number[]> = Object.fromEntries(Object.keys(MODES).map((m) => [m, []]));
  try {
    for (let run = 0; run < RUNS; run++) {
      for (const m of Object.keys(MODES)) {
        mode = m;
        for (const s of lab.sites) {
          fs.writeFileSync(s.configFile, lab.configText(s));
          const r = await lab.exec(s.name, [process.execPath, HOMEWIRE_BIN, 'reload', '--config', s.configFile]);
          if (r.code !== 0) throw new Error(`reload at ${s.name}: ${r.stderr}`);
        }
        const r = await lab.iperf3('guest-a', 'lan', { seconds: SECONDS });
        mbps[m].push(r.mbps);
        process.stderr.write(`run ${run + 1}/${RUNS} ${m}: ${r.mbps.toFixed(0)} Mbit/s\n`);
      }
    }
  } finally {
    await lab.destroy();
  }
  const strict = median(mbps.strict);
  for (const [m, xs] of Object.entries(mbps)) {
    const med = median(xs);
    process.stdout.write(
      `${m.padEnd(8)} ${med.toFixed(0)} Mbit/s (${Math.min(...xs).toFixed(0)}-${Math.max(...xs).toFixed(0)})` +
        `${m === 'strict' ? '' : `; strict is ${(((strict - med) / med) * 100).toFixed(1)} % ${strict < med ? 'slower' : 'faster'}`}\n`,
    );
  }
  process.stdout.write(`${JSON.stringify({ date: new Date().toISOString(), RUNS, SECONDS, mbps })}\n`);
}

main().catch((err) => {
  process.stderr.write(`${err?.stack ?? err}\n`);
  process.exit(1);
});

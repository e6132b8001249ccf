// A real Prometheus server (Debian's `prometheus`, started by the test inside the lab's underlay namespace)
// scrapes the daemons of the namespace topology; after an iperf3 run through the overlay, a PromQL rate of
// homewire_peer_tx_bytes_total through Prometheus' HTTP API has the expected order of magnitude. The
// exposition passes `promtool check metrics`.
import fs from 'node:fs';
import path from 'node:path';
import { PLAN } from '../../lab/topology.ts';
import { labFor, netnsTest } from '../helpers/netns.ts';

const METRICS_PORT = 9586;
const PROM = `${PLAN.internet4}:9090`;

netnsTest(
  'Prometheus scrapes every daemon; rate(homewire_peer_tx_bytes_total[30s]) matches the iperf3 run',
  async (t) => {
    const lab = await labFor(t, {
      sites: ['home', 'host-a'],
      siteConfig: (site) =>
        `metrics:\n  listen: "${site === 'home' ? PLAN.underlay4(1) : PLAN.underlay4(2)}:${METRICS_PORT}"\n`,
    });
    const dir = fs.mkdtempSync(path.join(lab.dir, 'prom-'));
    const targets = [1, 2].map((i) => `'${PLAN.underlay4(i)}:${METRICS_PORT}'`).join(', ');
    fs.writeFileSync(
      path.join(dir, 'prometheus.yml'),
      `global: { scrape_interval: 1s, evaluation_interval: 1s }\nscrape_configs:\n  - job_name: homewire\n    static_configs:\n      - targets: [${targets}]\n`,
    );
    const prom = lab.spawn(
      'ul',
      [
        'prometheus',
        `--config.file=${path.join(dir, 'prometheus.yml')}`,
        `--storage.tsdb.path=${path.join(dir, 'data')}`,
        `--web.listen-address=${PROM}`,
        '--log.level=warn',
      ],
      { stdio: 'ignore' },
    );
    t.teardown(() => {
      prom.kill('SIGKILL');
    });

    const query = async (q: string): Promise<Array<{ metric: Record<string, string>; value: [number, string] }>> => {
      const r = await lab.exec('ul', [
        'curl',
        '-sf',
        '--get',
        `http://${PROM}/api/v1/query`,
        '--data-urlencode',
        `query=${q}`,
      ]);
      if (r.code !== 0) return [];
      return JSON.parse(r.stdout).data.result;
    };
    // Wait until Prometheus has scraped both daemons.
    const start = Date.now();
    while ((await query('up{job="homewire"} == 1')).length < 2) {
      if (Date.now() - start > 30_000) t.fail('Prometheus did not scrape both daemons within 30 s');
      await new Promise((r) => setTimeout(r, 500));
    }

    const iperf = await lab.iperf3('guest-a', 'lan', { seconds: 5 });
    t.true(iperf.mbps > 10, `iperf3 through the overlay: ${iperf.mbps} Mbit/s`);
    await new Promise((r) => setTimeout(r, 2500)); // two more scrapes

    const rate = await query('rate(homewire_peer_tx_bytes_total{peer="home"}[30s])');
    t.is(rate.length, 1, JSON.stringify(rate));
    const bytesPerSecond = Number(rate[0].value[1]);
    // iperf3 moved mbps*5 s of payload within the 30 s window: the rate is that spread over <= 30 s.
    const payloadBytes = ((iperf.senderMbps * 1e6) / 8) * 5;
    const expected = payloadBytes / 30;
    t.log(
      `rate ${(bytesPerSecond / 1e6).toFixed(2)} MB/s, expected about ${(expected / 1e6).toFixed(2)} MB/s (iperf3 ${iperf.mbps.toFixed(0)} Mbit/s)`,
    );
    t.true(
      bytesPerSecond > expected / 3 && bytesPerSecond < expected * 3,
      `rate ${bytesPerSecond} B/s vs expected ${expected}`,
    );

    const up = await query('homewire_peer_up');
    t.is(up.length, 2);
    t.true(up.every((s) => s.value[1] === '1'));
    const hs = await query('sum(homewire_handshakes_total{result=~"completed|responded"})');
    t.true(Number(hs[0]?.value[1]) >= 2);

    // The exposition itself passes promtool's lint.
    const text = await lab.exec('ul', ['curl', '-sf', `http://${PLAN.underlay4(1)}:${METRICS_PORT}/metrics`]);
    t.is(text.code, 0);
    const lint = await lab.exec('ul', [
      'sh',
      '-c',
      `curl -sf http://${PLAN.underlay4(2)}:${METRICS_PORT}/metrics | promtool check metrics`,
    ]);
    t.is(lint.code, 0, lint.stdout + lint.stderr);
  },
);

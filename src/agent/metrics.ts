// The host agent's counters in Prometheus exposition, read at scrape time: in the daemon's registry when the
// agent lives in the daemon, or on the standalone agent's own metrics.listen.
import client from 'prom-client';
import type { HostAgent } from './agent.ts';

export function registerAgentMetrics(register: client.Registry, agent: () => HostAgent | null): void {
  const counter = (name: string, help: string, label: string, read: (a: HostAgent) => Record<string, number>) =>
    new client.Counter({
      name,
      help,
      labelNames: [label],
      registers: [register],
      collect() {
        this.reset();
        const a = agent();
        if (!a) return;
        for (const [k, v] of Object.entries(read(a))) this.inc({ [label]: k }, v);
      },
    });
  counter(
    'homewire_agent_commands_refused_total',
    "Coordinator commands (and heartbeat-reply entries) refused by the host agent's own checks, by reason.",
    'reason',
    (a) => ({ ...a.refused }),
  );
  counter('homewire_agent_commands_total', 'Coordinator commands the host agent ran, by outcome.', 'result', (a) => ({
    ok: a.stats.commands - a.stats.commandFailures,
    failed: a.stats.commandFailures,
  }));
}

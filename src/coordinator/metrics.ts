// Prometheus exposition for a coordinator (served when the config has metrics.listen). Counters are plain
// fields on the dispatcher and the lifecycle, read at scrape time; VM and host gauges read the store.
import client from 'prom-client';
import type { Coordinator } from './server.ts';
import { VM_STATES } from './states.ts';
import type { HostRecord, VmRecord } from './types.ts';

export function coordinatorRegistry(c: Coordinator): client.Registry {
  const register = new client.Registry();
  client.collectDefaultMetrics({ register, prefix: 'homewire_coordinator_' });
  new client.Gauge({
    name: 'homewire_coordinator_leader',
    help: '1 if this coordinator is the leader.',
    registers: [register],
    collect() {
      this.set(c.leadership.leading ? 1 : 0);
    },
  });
  new client.Gauge({
    name: 'homewire_coordinator_vms',
    help: 'VMs by state.',
    labelNames: ['state'],
    registers: [register],
    async collect() {
      this.reset();
      if (!c.leadership.leading) return;
      const counts = Object.fromEntries(VM_STATES.map((s) => [s, 0])) as Record<string, number>;
      for (const vm of await c.store.list<VmRecord>('vms')) counts[vm.state]++;
      for (const [state, n] of Object.entries(counts)) this.set({ state }, n);
    },
  });
  new client.Gauge({
    name: 'homewire_coordinator_hosts',
    help: 'Registered hosts by state.',
    labelNames: ['state'],
    registers: [register],
    async collect() {
      this.reset();
      if (!c.leadership.leading) return;
      const counts: Record<string, number> = { up: 0, down: 0 };
      for (const h of await c.store.list<HostRecord>('hosts')) counts[h.state]++;
      for (const [state, n] of Object.entries(counts)) this.set({ state }, n);
    },
  });
  const counter = (name: string, help: string, label: string, read: () => Record<string, number>) =>
    new client.Counter({
      name,
      help,
      labelNames: [label],
      registers: [register],
      collect() {
        this.reset();
        for (const [k, v] of Object.entries(read())) this.inc({ [label]: k }, v);
      },
    });
  counter('homewire_coordinator_commands_total', 'Commands sent to host agents, by outcome.', 'result', () => ({
    sent: c.dispatch.stats.sent,
    ok: c.dispatch.stats.ok,
    failed: c.dispatch.stats.failed,
    timed_out: c.dispatch.stats.timedOut,
  }));
  counter(
    'homewire_coordinator_auth_failures_total',
    'API requests refused: no or wrong token, a revoked host, a host acting as another (403).',
    'reason',
    () => ({ ...c.audit.failures }),
  );
  counter('homewire_coordinator_vm_events_total', 'VM lifecycle outcomes.', 'event', () => ({
    started: c.vms.stats.started,
    start_failed: c.vms.stats.startFailed,
    stopped: c.vms.stats.stopped,
    migrated: c.vms.stats.migrated,
    migration_failed: c.vms.stats.migrationFailed,
    crashed: c.reconciler.stats.crashed,
    settled_after_takeover: c.reconciler.stats.settled,
  }));
  const cs = c.consoles.stats;
  new client.Gauge({
    name: 'homewire_coordinator_console_viewers',
    help: 'Viewers attached to serial consoles.',
    registers: [register],
    collect() {
      this.set(c.consoles.viewers);
    },
  });
  counter(
    'homewire_coordinator_console_rejected_total',
    'Console WebSocket upgrades and streams refused, by reason.',
    'reason',
    () => ({ ...cs.rejected }),
  );
  counter('homewire_coordinator_console_events_total', 'Serial console events.', 'event', () => ({
    viewer_attached: cs.viewersAttached,
    stream_opened: cs.streamsOpened,
    stream_request_failed: cs.streamRequestsFailed,
    slow_viewer_closed: cs.slowViewersClosed,
    stream_held_for_slow_viewer: cs.streamsHeld,
    proxied_to_leader: cs.proxied,
  }));
  new client.Counter({
    name: 'homewire_coordinator_console_input_dropped_bytes_total',
    help: 'Keystrokes dropped because no stream to the guest was open.',
    registers: [register],
    collect() {
      this.reset();
      this.inc(cs.inputDroppedBytes);
    },
  });
  return register;
}

// `homewire agent --config FILE`: the host agent as its own process beside a running daemon, for hosts
// where the agent should not live in the daemon (or before it does). It reads the daemon's config file
// (name, key, tap.bridge, listen, control socket) plus its `coordinator:` section, and talks to the daemon
// through its control socket instead of calling the switch:
//   POST /v1/expect?mac=M                                      a guest is about to arrive here
//   POST /v1/authorize-move {mac, to: <base64 key>, until_ms}  a migration the coordinator runs (MAC ownership)
//   POST /v1/guests {guests: [{mac, ip, vm}]}                  the coordinator's guests here (port security)
// A daemon without the last two (404: no MAC ownership or port security to tell) is not an error.
import fs from 'node:fs';
import YAML from 'yaml';
import { parseConfig } from '../config.ts';
import { type ControlResult, controlRequest, defaultControlSocket } from '../control.ts';
import { ConfigError } from '../errors.ts';
import { createLogger, exitOnSignals } from '../log.ts';
import { encodeKey } from '../mesh/keys.ts';
import { meshReport, type StatusReport } from '../status.ts';
import { type DaemonResult, HostAgent } from './agent.ts';
import { parseAgentConfig } from './config.ts';

export async function loadStandaloneAgent(
  file: string,
  log = createLogger(),
  o: { stopGuestsOnExit?: boolean } = {},
): Promise<HostAgent> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, '', `cannot read the config file (${(err as NodeJS.ErrnoException).code})`);
  }
  const doc = YAML.parse(text) as Record<string, unknown> | null;
  if (!doc || typeof doc !== 'object' || doc.coordinator === undefined) {
    throw new ConfigError(
      file,
      'coordinator',
      'missing: the agent needs a coordinator: section (url, token_file, ...)',
    );
  }
  const { coordinator: _, ...daemonPart } = doc;
  const cfg = parseConfig(YAML.stringify(daemonPart), file); // the daemon's own keys, checked as the daemon does
  const agentCfg = parseAgentConfig(doc.coordinator, file, 'coordinator', cfg.name);
  if (o.stopGuestsOnExit) agentCfg.stopGuestsOnExit = true;
  const socket = cfg.control?.socket ?? defaultControlSocket(cfg.name);
  /** A daemon that does not know the endpoint (404) has nothing to enforce with it: fine. */
  const optional = async (path: string, body: unknown): Promise<DaemonResult> => {
    const r = await controlRequest<ControlResult>(socket, 'POST', path, body);
    return r.status === 404 ? { ok: true } : r.body;
  };
  return new HostAgent(agentCfg, {
    name: cfg.name,
    publicKey: encodeKey(cfg.publicKey),
    bridge: cfg.tap.bridge,
    log,
    address: cfg.listen.address,
    expect: async (mac) => (await controlRequest(socket, 'POST', `/v1/expect?mac=${encodeURIComponent(mac)}`)).body,
    authorizeMove: (mac, siteKey, untilMs) => optional('/v1/authorize-move', { mac, to: siteKey, until_ms: untilMs }),
    setGuestMacs: (guests) => optional('/v1/guests', { guests }),
    mesh: async () => meshReport((await controlRequest<StatusReport>(socket, 'GET', '/v1/status')).body),
  });
}

/** Runs until SIGINT/SIGTERM; the guests keep running (re-adopted by the next agent) unless stopGuestsOnExit. */
export async function runStandaloneAgent(file: string, o: { stopGuestsOnExit?: boolean } = {}): Promise<void> {
  const log = createLogger(process.env.HOMEWIRE_LOG_LEVEL ?? 'info');
  const agent = await loadStandaloneAgent(file, log, o);
  await agent.start();
  let metrics: import('node:http').Server | null = null;
  if (agent.config.metrics) {
    const client = (await import('prom-client')).default;
    const { serveMetrics } = await import('../metrics.ts');
    const { registerAgentMetrics } = await import('./metrics.ts');
    const register = new client.Registry();
    registerAgentMetrics(register, () => agent);
    metrics = await serveMetrics(register, agent.config.metrics.listen);
  }
  exitOnSignals(
    log,
    'the host agent',
    async () => {
      metrics?.close();
      await agent.stop();
    },
    10_000,
  );
}

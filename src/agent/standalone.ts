// `homewire agent --config FILE`: the host agent as its own process beside a running daemon, for hosts
// where the agent should not live in the daemon (or before it does). It reads the daemon's config file
// (name, tap.bridge, listen, control socket) plus its `coordinator:` section, and tells the daemon about
// arriving MACs through the daemon's control socket (POST /v1/expect) instead of calling the switch.
import fs from 'node:fs';
import YAML from 'yaml';
import { parseConfig } from '../config.ts';
import { controlRequest, defaultControlSocket } from '../control.ts';
import { ConfigError } from '../errors.ts';
import { createLogger, exitOnSignals } from '../log.ts';
import { meshReport, type StatusReport } from '../status.ts';
import { HostAgent } from './agent.ts';
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
  const agentCfg = parseAgentConfig(doc.coordinator, file);
  if (o.stopGuestsOnExit) agentCfg.stopGuestsOnExit = true;
  const { coordinator: _, ...daemonPart } = doc;
  const cfg = parseConfig(YAML.stringify(daemonPart), file); // the daemon's own keys, checked as the daemon does
  const socket = cfg.control?.socket ?? defaultControlSocket(cfg.name);
  return new HostAgent(agentCfg, {
    name: cfg.name,
    bridge: cfg.tap.bridge,
    log,
    address: cfg.listen.address,
    expect: async (mac) => (await controlRequest(socket, 'POST', `/v1/expect?mac=${encodeURIComponent(mac)}`)).body,
    mesh: async () => meshReport((await controlRequest<StatusReport>(socket, 'GET', '/v1/status')).body),
  });
}

/** Runs until SIGINT/SIGTERM; the guests keep running (re-adopted by the next agent) unless stopGuestsOnExit. */
export async function runStandaloneAgent(file: string, o: { stopGuestsOnExit?: boolean } = {}): Promise<void> {
  const log = createLogger(process.env.HOMEWIRE_LOG_LEVEL ?? 'info');
  const agent = await loadStandaloneAgent(file, log, o);
  await agent.start();
  exitOnSignals(log, 'the host agent', () => agent.stop(), 10_000);
}

// Structured logs (pino) to stderr. Nothing per packet above debug.
import pino from 'pino';

export type Logger = pino.Logger;

export function createLogger(level = process.env.HOMEWIRE_LOG_LEVEL ?? 'info', name = 'homewire'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination(2));
}

export const silentLogger: Logger = pino({ level: 'silent' });

/**
 * SIGINT/SIGTERM run stop() once and exit 0 when it resolves (1 if it fails or takes longer than graceMs):
 * the one shutdown shape of the daemon, the coordinator and a standalone agent.
 */
export function exitOnSignals(log: Logger, what: string, stop: () => Promise<void>, graceMs: number): void {
  let stopping = false;
  const onSignal = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, `stopping ${what}`);
    setTimeout(() => process.exit(1), graceMs).unref();
    stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));
}

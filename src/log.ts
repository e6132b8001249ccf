// Structured logs (pino) to stderr. Nothing per packet above debug.
import pino from 'pino';

export type Logger = pino.Logger;

export function createLogger(level = process.env.HOMEWIRE_LOG_LEVEL ?? 'info', name = 'homewire'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination(2));
}

export const silentLogger: Logger = pino({ level: 'silent' });

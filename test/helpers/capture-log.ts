// A real pino logger whose JSON lines a test can read back (what an operator would see in the daemon's log).
import { Writable } from 'node:stream';
import pino from 'pino';
import type { Logger } from '../../src/log.ts';

export function captureLog(level = 'info'): { log: Logger; lines: () => Record<string, unknown>[] } {
  const out: string[] = [];
  const w = new Writable({
    write(c, _e, cb) {
      out.push(String(c));
      cb();
    },
  });
  return {
    log: pino({ level }, w),
    lines: () =>
      out
        .join('')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

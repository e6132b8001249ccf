// Warnings about hostile input (a bad frame, a wrong token, a host acting as another), at most one per key per
// SECURITY_LOG_INTERVAL_MS: an attacker who sends a million bad frames or requests gets one log line every ten
// seconds (with the count it stands for), never a million. Shared by the data plane, coordinator and agent.
import { SECURITY_LOG_INTERVAL_MS } from './constants.ts';

export interface WarnLogger {
  warn(obj: object, msg?: string): void;
}

export class LimitedLog {
  private readonly last = new Map<string, { atMs: number; suppressed: number }>();

  constructor(
    private readonly log: WarnLogger,
    private readonly now: () => number = Date.now,
  ) {}

  /** Logs unless `key` was logged within the interval (then only counts). Keys must be few (bounded). */
  warn(key: string, fields: object, msg: string): void {
    const now = this.now();
    const e = this.last.get(key);
    if (e !== undefined && now - e.atMs < SECURITY_LOG_INTERVAL_MS) {
      e.suppressed++;
      return;
    }
    this.log.warn(e && e.suppressed > 0 ? { ...fields, suppressedSinceLast: e.suppressed } : fields, msg);
    if (this.last.size > 1024) this.last.clear(); // keys are reasons x ports or hosts: bounded anyway
    this.last.set(key, { atMs: now, suppressed: 0 });
  }
}

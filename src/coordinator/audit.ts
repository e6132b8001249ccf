// Refused requests, counted by reason (homewire_coordinator_auth_failures_total{reason}) and logged at most
// once per reason every SECURITY_LOG_INTERVAL_MS (limited-log.ts): a flood of bad tokens costs one line.
import type { Logger } from '../log.ts';
import { LimitedLog } from '../limited-log.ts';

export const AUTH_FAILURE_REASONS = [
  'missing_token', // no Authorization: Bearer header
  'wrong_admin_token', // an admin endpoint without the admin token (a host token included)
  'malformed_token', // an agent endpoint with something that is not NAME.SECRET
  'unknown_host', // a host token for a name without credentials (never added, or removed)
  'wrong_token', // a host token whose secret does not match
  'wrong_host', // a valid host token used to act as another host (403)
] as const;
export type AuthFailureReason = (typeof AUTH_FAILURE_REASONS)[number];

export class AuthAudit {
  readonly failures = Object.fromEntries(AUTH_FAILURE_REASONS.map((r) => [r, 0])) as Record<AuthFailureReason, number>;
  private readonly limited: LimitedLog;

  constructor(log: Logger, now: () => number = Date.now) {
    this.limited = new LimitedLog(log, now);
  }

  refuse(reason: AuthFailureReason, fields: Record<string, unknown>): void {
    this.failures[reason]++;
    this.limited.warn(reason, { reason, ...fields }, 'api: request refused');
  }
}

// Commands to host agents, pull model: the coordinator queues a command per host; the host's agent long-polls
// (POST /v1/agent/poll) and gets what is queued, runs it, and posts the result (POST /v1/agent/result).
// Agents behind NAT or a firewall need no inbound port, and a standby coordinator can proxy the poll.
//
// Delivery is at most once: a command whose poll answer was lost ends by its timeout. Agents run commands
// idempotently (start of a running guest, stop of an absent one: ok), so the coordinator may simply retry.
import crypto from 'node:crypto';
import { COMMANDS_PER_POLL_MAX } from './constants.ts';
import { ApiError, type Command, type CommandBody, type CommandResult } from './types.ts';

interface Pending {
  host: string;
  command: Command;
  resolve(r: CommandResult): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

interface Waiter {
  resolve(commands: Command[]): void;
  timer: NodeJS.Timeout;
}

export class Dispatcher {
  private readonly queues = new Map<string, Command[]>();
  private readonly waiters = new Map<string, Waiter>();
  private readonly pending = new Map<string, Pending>();
  /** Plain counters, read by metrics. */
  readonly stats = { sent: 0, ok: 0, failed: 0, timedOut: 0 };

  /** Queues a command for a host; resolves with the agent's result (ok or not), rejects on timeout. */
  send(host: string, body: CommandBody, timeoutMs: number): Promise<CommandResult> {
    const command = { ...body, id: crypto.randomUUID() } as Command;
    return new Promise<CommandResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(command.id);
        this.dequeue(host, command.id);
        this.stats.timedOut++;
        reject(
          new ApiError(
            409,
            'host_timeout',
            `host ${host} did not finish ${command.type} within ${Math.round(timeoutMs / 1000)} s: is its agent running?`,
          ),
        );
      }, timeoutMs);
      this.pending.set(command.id, { host, command, resolve, reject, timer });
      const q = this.queues.get(host) ?? [];
      q.push(command);
      this.queues.set(host, q);
      this.stats.sent++;
      this.wake(host);
    });
  }

  /** A host's long poll: what is queued now, or what is queued within waitMs, or nothing. */
  poll(host: string, waitMs: number): Promise<Command[]> {
    const ready = this.take(host);
    if (ready.length > 0 || waitMs <= 0) return Promise.resolve(ready);
    this.waiters.get(host)?.resolve([]); // a newer poll replaces an older one (agent restarted, proxy retried)
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiters.delete(host);
        resolve([]);
      }, waitMs);
      this.waiters.set(host, {
        resolve: (c) => {
          clearTimeout(timer);
          resolve(c);
        },
        timer,
      });
    });
  }

  /** Commands taken by a poll whose answer could not be sent: first in line for the next poll. */
  requeue(host: string, commands: Command[]): void {
    const live = commands.filter((c) => this.pending.has(c.id));
    if (live.length === 0) return;
    this.queues.set(host, [...live, ...(this.queues.get(host) ?? [])]);
  }

  /** A result from a host; false if no such command is pending (late, or from the wrong host). */
  result(host: string, r: CommandResult): boolean {
    const p = this.pending.get(r.id);
    if (!p || p.host !== host) return false;
    this.pending.delete(r.id);
    clearTimeout(p.timer);
    if (r.ok) this.stats.ok++;
    else this.stats.failed++;
    p.resolve(r);
    return true;
  }

  /** The host went down: its queued and running commands fail now rather than at their timeouts. */
  failHost(host: string, reason: string): void {
    this.queues.delete(host);
    for (const [id, p] of this.pending) {
      if (p.host !== host) continue;
      this.pending.delete(id);
      clearTimeout(p.timer);
      this.stats.failed++;
      p.reject(new ApiError(409, 'host_down', `host ${host} ${reason} while running ${p.command.type}`));
    }
  }

  /** Leadership lost or shutting down: every poll ends empty, every pending command fails. */
  close(reason: string): void {
    for (const w of this.waiters.values()) w.resolve([]);
    this.waiters.clear();
    this.queues.clear();
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new ApiError(503, 'not_leader', `the coordinator ${reason}; retry against the new leader`));
    }
    this.pending.clear();
  }

  private take(host: string): Command[] {
    const q = this.queues.get(host);
    if (!q || q.length === 0) return [];
    const out = q.splice(0, COMMANDS_PER_POLL_MAX);
    if (q.length === 0) this.queues.delete(host);
    return out;
  }

  private dequeue(host: string, id: string): void {
    const q = this.queues.get(host);
    const i = q?.findIndex((c) => c.id === id) ?? -1;
    if (i >= 0) q!.splice(i, 1);
  }

  private wake(host: string): void {
    const w = this.waiters.get(host);
    if (!w) return;
    const ready = this.take(host);
    if (ready.length === 0) return;
    this.waiters.delete(host);
    w.resolve(ready);
  }
}

// Reading and checking YAML config files: the typed accessors every config (daemon, agent, coordinator) uses,
// each throwing a ConfigError that names the file, the key path and what to do.
import fs from 'node:fs';
import net from 'node:net';
import YAML from 'yaml';
import { DEFAULT_PORT } from './constants.ts';
import { ConfigError } from './errors.ts';
import type { Endpoint, HostPort } from './mesh/peer.ts';

const HOSTNAME_RE =
  /^(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** A config file's text, or a ConfigError naming it. */
export function readConfigFile(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(
      file,
      '',
      `cannot read the config file (${(err as NodeJS.ErrnoException).code}); check the path and permissions`,
    );
  }
}

/** YAML to plain values, or a ConfigError with the line and column of the first syntax error. */
export function parseYaml(text: string, file: string): unknown {
  const doc = YAML.parseDocument(text, { uniqueKeys: true });
  if (doc.errors.length > 0) {
    const e = doc.errors[0];
    const line = e.linePos?.[0] ? ` (line ${e.linePos[0].line}, column ${e.linePos[0].col})` : '';
    throw new ConfigError(file, '', `not valid YAML${line}: ${e.message.split('\n')[0]}`);
  }
  return doc.toJS();
}

/** Small typed accessors that throw ConfigError with the key path. */
export class Checker {
  constructor(readonly file: string) {}

  fail(key: string, problem: string): never {
    throw new ConfigError(this.file, key, problem);
  }

  object(v: unknown, key: string): Record<string, unknown> {
    if (v === undefined || v === null) this.fail(key || '(top level)', 'missing: this section is required');
    if (typeof v !== 'object' || Array.isArray(v)) this.fail(key || '(top level)', 'must be a mapping (key: value)');
    return v as Record<string, unknown>;
  }

  onlyKeys(o: Record<string, unknown>, allowed: string[], at: string): void {
    for (const k of Object.keys(o)) {
      if (!allowed.includes(k)) {
        this.fail(at ? `${at}.${k}` : k, `unknown key; allowed here: ${allowed.join(', ')}`);
      }
    }
  }

  /** A list (a missing one is empty); `shape` completes the error: "must be a list of peers (...)". */
  list(v: unknown, key: string, shape: string): unknown[] {
    if (v === undefined) return [];
    if (!Array.isArray(v)) this.fail(key, `must be a list ${shape}`);
    return v as unknown[];
  }

  boolean(v: unknown, key: string): boolean {
    if (typeof v !== 'boolean') this.fail(key, 'must be true or false');
    return v as boolean;
  }

  string(v: unknown, key: string): string {
    if (v === undefined || v === null) this.fail(key, 'missing: this key is required');
    if (typeof v !== 'string' || v.length === 0) this.fail(key, 'must be a non-empty string');
    return v as string;
  }

  integer(v: unknown, key: string, min: number, max: number): number {
    if (typeof v !== 'number' || !Number.isInteger(v))
      this.fail(key, `must be a whole number between ${min} and ${max}`);
    if ((v as number) < min || (v as number) > max) this.fail(key, `${v} is out of range: use ${min} to ${max}`);
    return v as number;
  }

  /** "192.0.2.1:51820", "[2001:db8::1]:51820"; with defaultPort the port may be left out. */
  endpoint(v: unknown, key: string, defaultPort: boolean): Endpoint {
    const text = this.string(typeof v === 'number' ? String(v) : v, key);
    const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(text) ?? /^([^:]+)(?::(\d+))?$/.exec(text);
    if (!m) this.fail(key, `"${text}" is not ADDRESS:PORT (IPv6 in brackets: "[2001:db8::1]:${DEFAULT_PORT}")`);
    const address = m![1];
    if (net.isIP(address) === 0) {
      this.fail(key, `"${address}" is not an IP address (host names are not resolved: give the underlay IP)`);
    }
    if (m![2] === undefined && !defaultPort) this.fail(key, `"${text}" has no port: write ADDRESS:PORT`);
    const port = m![2] === undefined ? DEFAULT_PORT : Number(m![2]);
    const min = key === 'listen' ? 0 : 1; // listen port 0: any free port
    if (!(port >= min && port <= 65535)) this.fail(key, `port ${m![2]} is out of range ${min}-65535`);
    return { address, port };
  }

  /** "home.example.net:51820", "192.0.2.1:51820" or "[2001:db8::1]:51820": a DNS name or an IP, with a port. */
  hostEndpoint(v: unknown, key: string): HostPort {
    const text = this.string(v, key);
    if (/^[^:[\]]+$/.test(text) || /^\[[^\]]+\]$/.test(text))
      this.fail(key, `"${text}" has no port: write ADDRESS:PORT or NAME:PORT (e.g. home.example.net:51820)`);
    const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:[\]]+):(\d+)$/.exec(text);
    if (!m) {
      this.fail(
        key,
        `"${text}" is not NAME:PORT or ADDRESS:PORT (e.g. home.example.net:51820; IPv6 in brackets: "[2001:db8::1]:51820")`,
      );
    }
    const host = m![1];
    if (net.isIP(host) === 0 && /^[\d.]+$/.test(host)) {
      this.fail(key, `"${host}" is not an IP address (four numbers 0-255) nor a DNS name`);
    }
    if (net.isIP(host) === 0 && !HOSTNAME_RE.test(host)) {
      this.fail(key, `"${host}" is neither an IP address nor a valid DNS name (letters, digits, '-' and dots)`);
    }
    if (m![0].startsWith('[') && net.isIP(host) !== 6) this.fail(key, `"${host}" in brackets must be an IPv6 address`);
    const port = Number(m![2]);
    if (!(port >= 1 && port <= 65535)) this.fail(key, `port ${m![2]} is out of range 1-65535`);
    return { host, port };
  }
}

#!/usr/bin/env node
// A daemon with its handshake guard turned off (no mac1 check, no cookies, no per-source buckets): the
// "before" of bench/security-handshake-flood.ts. For benchmarks only; the real daemon has no such switch.
//   node bench/daemon-guard-off.mjs --config FILE
import { register } from 'tsx/esm/api';

register();
const { loadConfig } = await import('../src/config.ts');
const { createLogger, exitOnSignals } = await import('../src/log.ts');
const { Daemon } = await import('../src/daemon.ts');
const file = process.argv[process.argv.indexOf('--config') + 1];
const cfg = loadConfig(file);
const log = createLogger(cfg.logLevel);
const daemon = await Daemon.fromConfig(cfg, { log, services: true });
daemon.mesh.guard.enabled = false;
await daemon.start();
log.warn('handshake guard OFF (benchmark)');
exitOnSignals(log, 'the daemon', () => daemon.stop(), 2000);

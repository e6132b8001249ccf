// A real browser for the web page's tests: Debian's Chromium, headless, driven by playwright-core (which
// downloads no browser of its own), with a fresh profile per test. The lab's coordinator listens inside the
// underlay namespace; the browser runs in the test's own namespace and reaches it through a loopback port that
// socat bridges into the namespace (one `ip netns exec ... socat` per connection).
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { type BrowserContext, chromium } from 'playwright-core';
import { signalChild } from '../../src/proc.ts';
import { hasProgram, PROJECT_ROOT } from '../topology.ts';

export const CHROMIUM = '/usr/bin/chromium';

/** Why the browser tests cannot run here, or null. */
export function browserMissing(): string | null {
  if (!fs.existsSync(CHROMIUM)) return `${CHROMIUM} is missing: apt-get install chromium`;
  if (!hasProgram('socat')) return 'socat is missing: apt-get install socat';
  return null;
}

export interface Browser {
  context: BrowserContext;
  close(): Promise<void>;
}

/** Headless Chromium with a fresh user-data dir (removed on close). */
export async function launchBrowser(): Promise<Browser> {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'hwk-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1400, height: 1000 },
    args: [
      '--no-sandbox',
      '--headless',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
  return {
    context,
    close: async () => {
      await context.close().catch(() => {});
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** 127.0.0.1:PORT in this namespace → target (host:port) inside namespace ns. */
export async function bridgeIntoNamespace(ns: string, target: string): Promise<{ url: string; stop(): void }> {
  const port = await new Promise<number>((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
  const child: ChildProcess = spawn(
    'socat',
    [
      `TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork`,
      `EXEC:ip netns exec ${ns} socat STDIO TCP\\:${target.replace(/:/g, '\\:')}`,
    ],
    { stdio: 'ignore' },
  );
  child.on('error', () => {});
  const deadline = Date.now() + 5000;
  for (;;) {
    const up = await new Promise<boolean>((r) => {
      const c = net.connect(port, '127.0.0.1', () => {
        c.destroy();
        r(true);
      });
      c.on('error', () => r(false));
    });
    if (up) break;
    if (Date.now() > deadline) throw new Error(`socat did not listen on 127.0.0.1:${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { url: `http://127.0.0.1:${port}`, stop: () => signalChild(child, 'SIGTERM') };
}

/** Where tests put what they leave for people to look at (screenshots): test/output, or $HOMEWIRE_TEST_OUTPUT. */
export function testOutputDir(): string {
  const dir = process.env.HOMEWIRE_TEST_OUTPUT ?? path.join(PROJECT_ROOT, 'test', 'output');
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

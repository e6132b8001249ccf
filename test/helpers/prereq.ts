// One policy for tests that cannot run on this machine (no root, a missing tool, the addon not built): they
// FAIL, never skip, and say what is missing and how to get it, in the same words everywhere.
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { hasProgram, PROJECT_ROOT } from '../../lab/topology.ts';

export const INSTALL_HINT = 'sudo npm test installs what the tests need (or: sudo bash deploy/install.sh test)';

export interface Needs {
  root?: boolean;
  /** program -> the Debian package that has it */
  programs?: Record<string, string>;
  /** the native TAP addon (npm run build) */
  addon?: boolean;
  /** file -> the Debian package that has it */
  files?: Record<string, string>;
}

/** What is missing for `needs`, or null when everything is there. */
export function missingFor(needs: Needs): string | null {
  if (process.platform !== 'linux') return 'these tests run on Linux only';
  if (needs.root && process.getuid?.() !== 0) return 'they need root (network namespaces, TAP devices)';
  for (const [program, pkg] of Object.entries(needs.programs ?? {}))
    if (!hasProgram(program)) return `${program} is missing (Debian package ${pkg})`;
  for (const [file, pkg] of Object.entries(needs.files ?? {}))
    if (!fs.existsSync(file)) return `${file} is missing (Debian package ${pkg})`;
  if (needs.addon && !fs.existsSync(path.join(PROJECT_ROOT, 'build/Release/homewire_tap.node')))
    return 'the TAP addon is not built (npm run build)';
  return null;
}

/** The message a test that cannot run fails with. */
export function cannotRun(why: string): string {
  return `cannot run here: ${why}. ${INSTALL_HINT}`;
}

/** test.serial, or, when `why` says something is missing, a test that fails with cannotRun(why). */
export function testIf(why: string | null): typeof test.serial {
  if (why === null) return test.serial;
  const failing = (title: string) => test.serial(title, (t) => t.fail(cannotRun(why)));
  return failing as unknown as typeof test.serial;
}

// The native addon (build/Release/homewire_tap.node, built by `npm run build`): one file for the TAP
// (native/tap.cc), batched UDP sends and receives (native/udp.cc, udp_rx.cc) and per-key ChaCha20-Poly1305
// (native/aead.cc). Loaded once; the daemon runs without it on node:dgram and sodium-native, except for the
// TAP itself, which needs it.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { OperatorError } from './errors.ts';

const ADDON_REL_PATH = 'build/Release/homewire_tap.node';
let loaded: Record<string, unknown> | undefined;

/** The addon's exports; throws OperatorError (ENOENT) saying how to build it when it is missing. */
export function loadAddon(): Record<string, unknown> {
  if (loaded) return loaded;
  const file = addonFile();
  if (!existsSync(file)) {
    throw new OperatorError('ENOENT', `native TAP addon ${file} is missing: run \`npm run build\` (node-gyp) first`);
  }
  loaded = createRequire(import.meta.url)(file) as Record<string, unknown>;
  return loaded;
}

/** The addon's exports, or null when it is not built (callers fall back to pure JS). */
export function addonOrNull(): Record<string, unknown> | null {
  try {
    return loadAddon();
  } catch {
    return null;
  }
}

export function addonFile(): string {
  return fileURLToPath(new URL(`../${ADDON_REL_PATH}`, import.meta.url));
}

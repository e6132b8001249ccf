// `npm run build:web` (part of `npm run build`): bundles the coordinator's web page with esbuild into web/dist:
// index.html, app.js (the page, xterm.js and its fit addon) and app.css. No CDN: everything the page loads
// comes from the coordinator (src/coordinator/web.ts serves web/dist). Runs in about a second.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.join(here, 'dist');
fs.rmSync(out, { recursive: true, force: true });
fs.mkdirSync(out, { recursive: true });
const r = await build({
  entryPoints: { app: path.join(here, 'app.ts') },
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['es2020', 'chrome100', 'firefox100', 'safari15'],
  outdir: out,
  legalComments: 'eof',
  metafile: true,
  logLevel: 'warning',
});
fs.copyFileSync(path.join(here, 'index.html'), path.join(out, 'index.html'));
const sizes = Object.entries(r.metafile.outputs).map(
  ([f, o]) => `${path.basename(f)} ${Math.round(o.bytes / 1024)} KiB`,
);
process.stdout.write(
  `web page built in ${path.relative(process.cwd(), out) || out}: index.html, ${sizes.join(', ')}\n`,
);

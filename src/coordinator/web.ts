// The web page: static files from web/dist (built by `npm run build` from web/, see web/build.ts) at / and
// /assets/*, served by the coordinator itself on its own port (and TLS, when configured), and its live updates:
// GET /v1/events (admin token), server-sent events carrying a snapshot of hosts, VMs, images and operations each
// time one changes (watch.ts). The page keeps the token in sessionStorage and sends it as a bearer header with
// every request (fetch also reads the event stream, so no token ever goes into a URL).
//
// The static files hold no data and need no token. They are sent with a strict Content-Security-Policy: only
// this origin's scripts, no framing.
import fs from 'node:fs';
import type http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { EVENTS_KEEPALIVE_MS } from './constants.ts';
import type { HostRegistry } from './hosts.ts';
import type { Store } from './store.ts';
import type { HostRecord, ImageRecord, VmRecord } from './types.ts';
import type { Snapshot, Watch } from './watch.ts';

/** Where `npm run build` puts the page. */
export const WEB_DIST = fileURLToPath(new URL('../../web/dist/', import.meta.url));

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.map': 'application/json',
};

const SECURITY_HEADERS = {
  // xterm.js sets inline styles (its DOM renderer); scripts come only from this origin.
  'content-security-policy':
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
};

/** GET|HEAD / and /assets/NAME from dir; true if the request was for the page (answered), false otherwise. */
export function webPage(dir = WEB_DIST): (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => boolean {
  return (req, res, url) => {
    const p = url.pathname;
    if (p !== '/' && p !== '/index.html' && !p.startsWith('/assets/')) return false;
    if (req.method !== 'GET' && req.method !== 'HEAD') return false;
    req.resume();
    const name = p.startsWith('/assets/') ? p.slice('/assets/'.length) : 'index.html';
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name)) {
      res.writeHead(404, SECURITY_HEADERS).end();
      return true;
    }
    const file = path.join(dir, name);
    fs.readFile(file, (err, data) => {
      if (err) {
        if (name === 'index.html') {
          res.writeHead(503, { 'content-type': 'text/plain; charset=utf-8', ...SECURITY_HEADERS });
          res.end(`The web page is not built (${file} is missing): run \`npm run build\` in the homewire checkout.\n`);
        } else res.writeHead(404, SECURITY_HEADERS).end();
        return;
      }
      res.writeHead(200, {
        'content-type': TYPES[path.extname(name)] ?? 'application/octet-stream',
        'content-length': data.length,
        'cache-control': 'no-cache',
        ...SECURITY_HEADERS,
      });
      res.end(req.method === 'HEAD' ? undefined : data);
    });
    return true;
  };
}

/** The snapshot the page shows (and the console splice follows). */
export function snapshotReader(d: {
  store: Store;
  hosts: HostRegistry;
  busy: Map<string, string>;
}): () => Promise<Snapshot> {
  return async () => {
    const [hosts, vms, images] = await Promise.all([
      d.store.list<HostRecord>('hosts'),
      d.store.list<VmRecord>('vms'),
      d.store.list<ImageRecord>('images'),
    ]);
    return {
      hosts: d.hosts.views(hosts, vms),
      vms: d.hosts.withLeases(vms),
      images,
      operations: Object.fromEntries(d.busy),
    };
  };
}

/** Bytes an event stream may hold unsent before it is ended (the page reconnects and gets a fresh snapshot). */
const EVENTS_BUFFER_MAX_BYTES = 4 * 1024 * 1024;

/** GET /v1/events: `event: state` with the whole snapshot, at once and on every change. */
export function eventStream(watch: Watch): (req: http.IncomingMessage, res: http.ServerResponse) => void {
  return (req, res) => {
    req.resume();
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      'x-accel-buffering': 'no',
    });
    res.write('retry: 1000\n\n');
    const send = (s: Snapshot) => {
      if (res.writableLength > EVENTS_BUFFER_MAX_BYTES) {
        res.end();
        return;
      }
      res.write(`event: state\ndata: ${JSON.stringify(s)}\n\n`);
    };
    const unsubscribe = watch.subscribe(send);
    watch.now().then(send, () => {});
    const keepalive = setInterval(() => res.write(': keepalive\n\n'), EVENTS_KEEPALIVE_MS);
    res.on('close', () => {
      clearInterval(keepalive);
      unsubscribe();
    });
  };
}

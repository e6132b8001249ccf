// The coordinator's YAML config, validated in one place with the daemon's Checker: every error names the
// file, the key path and what to do. See src/coordinator/README.md.
//
//   listen: 127.0.0.1:7100
//   store: sqlite                       # or etcd://127.0.0.1:2379[,host:port...]
//   data_dir: /var/lib/homewire/coordinator
//   admin_token_file: /etc/homewire/admin.token   # hosts get their own tokens: `homewire host add NAME`
//   tls: { cert_file, key_file, ca_file? }         # optional: HTTPS on the same port
//   image_sources: [ images.example.org, 192.0.2.10:8080, 198.51.100.0/24 ]   # where images may come from
//   advertise_url: http://192.0.2.10:7100   # optional: how the other coordinators reach this one
//   image_server: http://192.0.2.10:8080/   # optional: base for relative image locations
//   images: [ { name, kernel, initrd, disk?, sha256: { kernel, initrd, disk? }, cmdline? } ]
//   metrics: { listen: 127.0.0.1:9101 }     # optional
//   log_level: info
import fs from 'node:fs';
import path from 'node:path';
import { Checker, LOG_LEVELS, parseYaml, readConfigFile } from '../checker.ts';
import type { Endpoint } from '../mesh/peer.ts';
import { DEFAULT_DATA_DIR, TOKEN_MIN_CHARS } from './constants.ts';
import { parseImageSource, sourceOfUrl } from './image-sources.ts';
import { checkImage } from './images.ts';
import { ApiError, type ImageRecord } from './types.ts';
import { formatEndpoint } from '../addr.ts';

export interface CoordinatorConfig {
  file: string;
  listen: Endpoint;
  store: { backend: 'sqlite' } | { backend: 'etcd'; endpoints: string[] };
  dataDir: string;
  adminToken: string;
  advertiseUrl: string;
  imageServer?: string;
  /** HTTPS on the listen port; ca: what the other coordinators' certificates are checked against. */
  tls?: { cert: string; key: string; ca?: string; certFile: string };
  /** The image allowlist (image-sources.ts), image_server's host:port included. */
  imageSources: string[];
  images: Omit<ImageRecord, 'created_at'>[];
  metrics?: { listen: Endpoint };
  logLevel: string;
}

const KEYS = [
  'listen',
  'store',
  'data_dir',
  'admin_token_file',
  'advertise_url',
  'image_server',
  'image_sources',
  'tls',
  'images',
  'metrics',
  'log_level',
];

export function loadCoordinatorConfig(file: string): CoordinatorConfig {
  return parseCoordinatorConfig(readConfigFile(file), file);
}

export function parseCoordinatorConfig(text: string, file: string): CoordinatorConfig {
  const c: Checker = new Checker(file);
  const top = c.object(parseYaml(text, file), '');
  if (top.host_token_file !== undefined)
    c.fail(
      'host_token_file',
      'removed: every host now has its own token. For each VM host run `homewire host add NAME` (NAME: the ' +
        "daemon's name), put the printed token in that host's coordinator.token_file, then delete host_token_file",
    );
  c.onlyKeys(top, KEYS, '');
  const rel = (p: string) => path.resolve(path.dirname(file), p);

  const listen = c.endpoint(top.listen ?? '127.0.0.1:7100', 'listen', false);
  const storeText = top.store === undefined ? 'sqlite' : c.string(top.store, 'store');
  let store: CoordinatorConfig['store'];
  if (storeText === 'sqlite') {
    store = { backend: 'sqlite' };
  } else if (storeText.startsWith('etcd://')) {
    const endpoints = storeText
      .slice('etcd://'.length)
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    if (endpoints.length === 0) c.fail('store', 'etcd:// needs at least one HOST:PORT, e.g. etcd://127.0.0.1:2379');
    for (const ep of endpoints) {
      if (!/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(ep))
        c.fail('store', `"${ep}" is not HOST:PORT (etcd://host1:2379,host2:2379)`);
    }
    store = { backend: 'etcd', endpoints: endpoints.map((ep) => `http://${ep}`) };
  } else {
    c.fail('store', `"${storeText}" is neither sqlite nor etcd://HOST:PORT[,HOST:PORT...]`);
  }
  const dataDir = top.data_dir === undefined ? DEFAULT_DATA_DIR : rel(c.string(top.data_dir, 'data_dir'));
  const adminToken = readToken(c, top.admin_token_file, 'admin_token_file', rel);
  let tls: CoordinatorConfig['tls'];
  if (top.tls !== undefined) {
    const t = c.object(top.tls, 'tls');
    c.onlyKeys(t, ['cert_file', 'key_file', 'ca_file'], 'tls');
    const certFile = rel(c.string(t.cert_file, 'tls.cert_file'));
    tls = {
      cert: readPem(c, certFile, 'tls.cert_file', 'CERTIFICATE'),
      key: readPem(c, rel(c.string(t.key_file, 'tls.key_file')), 'tls.key_file', 'PRIVATE KEY'),
      certFile,
      ...(t.ca_file === undefined
        ? {}
        : { ca: readPem(c, rel(c.string(t.ca_file, 'tls.ca_file')), 'tls.ca_file', 'CERTIFICATE') }),
    };
  }

  let advertiseUrl = `${tls ? 'https' : 'http'}://${formatEndpoint(listen.address, listen.port)}`;
  if (top.advertise_url !== undefined) advertiseUrl = httpUrl(c, top.advertise_url, 'advertise_url');
  else if (listen.address === '0.0.0.0' || listen.address === '::') {
    if (store.backend === 'etcd')
      c.fail(
        'advertise_url',
        `missing: listen is ${listen.address}, so set the URL the other coordinators reach this one at`,
      );
  }
  const imageServer = top.image_server === undefined ? undefined : httpUrl(c, top.image_server, 'image_server');
  const imageSources: string[] = [];
  if (top.image_sources !== undefined && top.image_sources !== null) {
    c.list(top.image_sources, 'image_sources', 'of HOST, HOST:PORT or address ranges').forEach((v, i) => {
      const text = c.string(v, `image_sources[${i}]`);
      try {
        imageSources.push(parseImageSource(text).text);
      } catch (err) {
        c.fail(`image_sources[${i}]`, (err as Error).message);
      }
    });
  }
  if (imageServer) imageSources.push(sourceOfUrl(imageServer));

  const images: CoordinatorConfig['images'] = [];
  if (top.images !== undefined && top.images !== null) {
    if (!Array.isArray(top.images))
      c.fail(
        'images',
        'must be a list like - { name: tiny, kernel: http://..., initrd: http://..., sha256: { kernel: ..., initrd: ... } }',
      );
    const seen = new Set<string>();
    (top.images as unknown[]).forEach((raw, i) => {
      const at = `images[${i}]`;
      try {
        const img = checkImage(raw, imageServer, imageSources);
        if (seen.has(img.name)) c.fail(`${at}.name`, `duplicate image name "${img.name}"`);
        seen.add(img.name);
        images.push(img);
      } catch (err) {
        if (err instanceof ApiError) c.fail(at, err.message);
        throw err;
      }
    });
  }

  let metrics: CoordinatorConfig['metrics'];
  if (top.metrics !== undefined) {
    const m = c.object(top.metrics, 'metrics');
    c.onlyKeys(m, ['listen'], 'metrics');
    metrics = { listen: c.endpoint(m.listen, 'metrics.listen', false) };
  }
  let logLevel = 'info';
  if (top.log_level !== undefined) {
    logLevel = c.string(top.log_level, 'log_level');
    if (!LOG_LEVELS.includes(logLevel)) c.fail('log_level', `"${logLevel}" is not one of ${LOG_LEVELS.join(', ')}`);
  }
  return {
    file,
    listen,
    store,
    dataDir,
    adminToken,
    advertiseUrl,
    imageServer,
    tls,
    imageSources,
    images,
    metrics,
    logLevel,
  };
}

function readToken(c: Checker, v: unknown, key: string, rel: (p: string) => string): string {
  const file = rel(c.string(v, key));
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8').trim();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    c.fail(
      key,
      code === 'ENOENT'
        ? `${file} does not exist: create it, e.g. \`head -c 32 /dev/urandom | base64 > ${file}; chmod 600 ${file}\``
        : `cannot read ${file} (${code}): check its permissions`,
    );
  }
  if (text!.length < TOKEN_MIN_CHARS || /\s/.test(text!)) {
    c.fail(
      key,
      `${file} must hold one token of at least ${TOKEN_MIN_CHARS} characters without spaces (head -c 32 /dev/urandom | base64)`,
    );
  }
  return text!;
}

function readPem(c: Checker, file: string, key: string, kind: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    c.fail(key, `cannot read ${file} (${(err as NodeJS.ErrnoException).code}): give a PEM file`);
  }
  if (!text!.includes(`-----BEGIN `) || !text!.includes(kind))
    c.fail(key, `${file} is not a PEM ${kind.toLowerCase()} (-----BEGIN ${kind}-----)`);
  return text!;
}

function httpUrl(c: Checker, v: unknown, key: string): string {
  const text = c.string(v, key);
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    c.fail(key, `"${text}" is not a URL like http://192.0.2.10:7100`);
  }
  if (u!.protocol !== 'http:' && u!.protocol !== 'https:') c.fail(key, `"${text}" must be an http:// or https:// URL`);
  return text.replace(/\/+$/, '');
}

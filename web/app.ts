// The coordinator's web page: sign in with the admin token (kept in sessionStorage: this browser tab only),
// then hosts, VMs (with their actions), images and a serial console (xterm.js), updated live from
// GET /v1/events. Plain DOM, no framework; every text from the coordinator goes in through textContent.
import { FitAddon } from '@xterm/addon-fit';
import { Terminal } from '@xterm/xterm';
import '@xterm/xterm/css/xterm.css';
import './style.css';

// ---- the API's shapes (src/coordinator/types.ts) ---------------------------------------------------------

interface HostView {
  name: string;
  site: string;
  state: 'up' | 'down';
  cpus: number;
  memory_mib: number;
  free: { cpus: number; memory_mib: number };
  hypervisor: { kind: string; available: boolean; accel: string | null; reason?: string };
  address: string | null;
  vms: string[];
  last_seen: string;
  labels: Record<string, string>;
  mesh: {
    endpoint: string;
    peers: { name: string; endpoint: string | null; up: boolean; rtt_ms: number | null }[];
  } | null;
}

interface VmRecord {
  name: string;
  image: string;
  cpus: number;
  memory_mib: number;
  mac: string;
  ip: string | null;
  lease_ip?: string | null;
  state: string;
  host: string | null;
  target: string | null;
  error: string | null;
  started_at?: string;
}

interface ImageRecord {
  name: string;
  kernel: string;
  initrd: string;
  disk?: string;
  sha256: { kernel: string; initrd: string; disk?: string };
}

interface Snapshot {
  hosts: HostView[];
  vms: VmRecord[];
  images: ImageRecord[];
  operations: Record<string, string>;
}

const TOKEN_KEY = 'homewire.token';

// ---- small DOM helpers ----------------------------------------------------------------------------------

type Attrs = Record<string, string | boolean | ((e: Event) => void)>;

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Node | string | null | undefined | false)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (typeof v === 'function') el.addEventListener(k.replace(/^on/, ''), v);
    else if (v === true) el.setAttribute(k, '');
    else if (v !== false) el.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

const $ = <T extends HTMLElement>(sel: string) => document.querySelector(sel) as T;

function ago(iso: string | undefined): string {
  if (!iso) return '-';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function duration(iso: string | undefined): string {
  if (!iso) return '-';
  let s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const hh = Math.floor(s / 3600);
  s -= hh * 3600;
  const mm = Math.floor(s / 60);
  s -= mm * 60;
  return d ? `${d}d ${hh}h` : hh ? `${hh}h ${mm}m` : mm ? `${mm}m ${s}s` : `${s}s`;
}

// ---- state ------------------------------------------------------------------------------------------------

let token = sessionStorage.getItem(TOKEN_KEY) ?? '';
let snap: Snapshot = { hosts: [], vms: [], images: [], operations: {} };
const pending = new Map<string, string>(); // vm → what this page asked for and waits on
const migrateTo = new Map<string, string>(); // vm → the host chosen in its row
let events: AbortController | null = null;
const rendered = { hosts: '', vms: '', images: '' };

class ApiFailure extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiFailure(0, 'unreachable', `cannot reach the coordinator (${(err as Error).message})`);
  }
  const text = await res.text();
  let json: unknown = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    /* not JSON */
  }
  if (!res.ok) {
    const e = (json as { error?: { code?: string; message?: string } } | null)?.error;
    throw new ApiFailure(res.status, e?.code ?? `http_${res.status}`, e?.message ?? `HTTP ${res.status}`);
  }
  return json as T;
}

// ---- sign in ----------------------------------------------------------------------------------------------

function showSignIn(message = ''): void {
  events?.abort();
  events = null;
  closeConsole();
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', placeholder: 'admin token' });
  const error = h('p', { id: 'signin-error', class: 'error', role: 'alert' }, message);
  const form = h(
    'form',
    {
      id: 'signin',
      onsubmit: (e) => {
        e.preventDefault();
        signIn(input.value.trim(), error);
      },
    },
    h('h1', {}, 'homewire'),
    h('p', {}, "Sign in with the coordinator's admin token (admin_token_file)."),
    h('label', { for: 'token' }, 'Admin token'),
    input,
    h('button', { type: 'submit', id: 'signin-button' }, 'Sign in'),
    error,
    h(
      'p',
      { class: 'hint' },
      'The token stays in this browser tab (sessionStorage) and goes only to this coordinator.',
    ),
  );
  $('#app').replaceChildren(form);
  input.focus();
}

async function signIn(candidate: string, error: HTMLElement): Promise<void> {
  if (!candidate) {
    error.textContent = 'Enter the admin token.';
    return;
  }
  error.textContent = 'Checking…';
  const saved = token;
  token = candidate;
  try {
    await api('GET', '/v1/status');
  } catch (err) {
    token = saved;
    const f = err as ApiFailure;
    error.textContent =
      f.status === 401
        ? 'Wrong token: the coordinator refused it (401). Use the admin token, not the host token.'
        : f.message;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, candidate);
  showMain();
}

function signOut(message = ''): void {
  sessionStorage.removeItem(TOKEN_KEY);
  token = '';
  showSignIn(message);
}

// ---- the main view ----------------------------------------------------------------------------------------

function showMain(): void {
  rendered.hosts = rendered.vms = rendered.images = '';
  const main = h(
    'main',
    {},
    h(
      'header',
      {},
      h('h1', {}, 'homewire'),
      h('span', { id: 'live', class: 'live off' }, 'connecting…'),
      h('button', { id: 'signout', onclick: () => signOut() }, 'Sign out'),
    ),
    h('div', { id: 'messages', 'aria-live': 'polite' }),
    h(
      'section',
      { id: 'hosts-section' },
      h('h2', {}, 'Hosts'),
      h(
        'table',
        { id: 'hosts' },
        h(
          'thead',
          {},
          h(
            'tr',
            {},
            ...['Host', 'State', 'Site', 'Last seen', 'Mesh', 'Hypervisor', 'Free CPUs', 'Free memory', 'Guests'].map(
              (t) => h('th', {}, t),
            ),
          ),
        ),
        h('tbody'),
      ),
    ),
    h(
      'section',
      { id: 'vms-section' },
      h('h2', {}, 'VMs'),
      h(
        'table',
        { id: 'vms' },
        h(
          'thead',
          {},
          h(
            'tr',
            {},
            ...['VM', 'State', 'Host', 'MAC', 'Home IP', 'Image', 'Uptime', 'Actions'].map((t) => h('th', {}, t)),
          ),
        ),
        h('tbody'),
      ),
      createForm(),
    ),
    h(
      'section',
      { id: 'images-section' },
      h('h2', {}, 'Images'),
      h(
        'table',
        { id: 'images' },
        h('thead', {}, h('tr', {}, ...['Image', 'Kernel', 'Initrd', 'Disk', 'SHA-256'].map((t) => h('th', {}, t)))),
        h('tbody'),
      ),
      imageForm(),
    ),
    h(
      'section',
      { id: 'console', hidden: true },
      h(
        'div',
        { class: 'console-head' },
        h('h2', { id: 'console-title' }, 'Console'),
        h('span', { id: 'console-status' }),
        h('button', { id: 'console-close', onclick: () => closeConsole() }, 'Close'),
      ),
      h('div', { id: 'terminal' }),
      h(
        'p',
        { class: 'hint' },
        'Keys go to the guest’s serial port (ttyS0). The console follows the VM when it migrates.',
      ),
    ),
  );
  $('#app').replaceChildren(main);
  render();
  startEvents();
}

function message(text: string, kind: 'error' | 'info' = 'error'): void {
  const box = $('#messages');
  if (!box) return;
  const item = h(
    'div',
    { class: `message ${kind}`, role: kind === 'error' ? 'alert' : 'status' },
    h('span', {}, text),
    h('button', { class: 'dismiss', title: 'dismiss', onclick: () => item.remove() }, '×'),
  );
  box.append(item);
  if (kind === 'info') setTimeout(() => item.remove(), 6000);
}

// ---- live updates -----------------------------------------------------------------------------------------

function setLive(on: boolean, text: string): void {
  const el = $('#live');
  if (!el) return;
  el.className = `live ${on ? 'on' : 'off'}`;
  el.textContent = text;
}

function startEvents(): void {
  events?.abort();
  const ctl = new AbortController();
  events = ctl;
  (async () => {
    while (!ctl.signal.aborted) {
      try {
        const res = await fetch('/v1/events', { headers: { authorization: `Bearer ${token}` }, signal: ctl.signal });
        if (res.status === 401) {
          signOut('The coordinator no longer accepts this token: sign in again.');
          return;
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        setLive(true, 'live');
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            const type = /^event: (.*)$/m.exec(block)?.[1];
            const data = block
              .split('\n')
              .filter((l) => l.startsWith('data: '))
              .map((l) => l.slice(6))
              .join('\n');
            if (type === 'state' && data) {
              snap = JSON.parse(data) as Snapshot;
              render();
            }
          }
        }
      } catch {
        if (ctl.signal.aborted) return;
      }
      setLive(false, 'reconnecting…');
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();
}

// ---- rendering ----------------------------------------------------------------------------------------------

function render(): void {
  const hostsJson = JSON.stringify(snap.hosts);
  if (hostsJson !== rendered.hosts) {
    rendered.hosts = hostsJson;
    renderHosts();
  }
  const vmsJson = JSON.stringify([snap.vms, snap.operations, [...pending], snap.hosts.map((x) => [x.name, x.state])]);
  if (vmsJson !== rendered.vms) {
    rendered.vms = vmsJson;
    renderVms();
  }
  const imagesJson = JSON.stringify(snap.images);
  if (imagesJson !== rendered.images) {
    rendered.images = imagesJson;
    renderImages();
    refreshImageChoices();
  }
  refreshConsoleTitle();
}

function renderHosts(): void {
  const body = $('#hosts tbody');
  if (!body) return;
  body.replaceChildren(
    ...(snap.hosts.length
      ? snap.hosts.map((x) =>
          h(
            'tr',
            { 'data-host': x.name, class: x.state },
            h('td', { class: 'name' }, x.name),
            h('td', { class: 'state' }, h('span', { class: `badge ${x.state}` }, x.state)),
            h('td', {}, x.site),
            h('td', { 'data-ago': x.last_seen }, ago(x.last_seen)),
            h('td', { class: 'mesh' }, ...meshCell(x)),
            h(
              'td',
              { title: x.hypervisor.reason ?? '' },
              x.hypervisor.available ? `${x.hypervisor.kind}/${x.hypervisor.accel}` : 'none',
            ),
            // A host without a hypervisor (home's agent) takes no VMs: its capacity means nothing.
            h('td', { class: 'num' }, x.hypervisor.available ? `${x.free.cpus} / ${x.cpus}` : '-'),
            h('td', { class: 'num' }, x.hypervisor.available ? `${x.free.memory_mib} / ${x.memory_mib} MiB` : '-'),
            h('td', { class: 'guests' }, x.vms.join(', ') || '-'),
          ),
        )
      : [h('tr', {}, h('td', { colspan: '9', class: 'empty' }, 'No hosts have registered.'))]),
  );
}

/** The daemon's endpoint, then how it sees each peer: up or down, and the round trip. */
function meshCell(x: HostView): (HTMLElement | string)[] {
  if (!x.mesh) return ['-'];
  return [
    h('code', {}, x.mesh.endpoint),
    h(
      'div',
      { class: 'peers' },
      ...x.mesh.peers.map((p) =>
        h(
          'span',
          { class: `peer ${p.up ? 'up' : 'down'}`, title: p.endpoint ?? 'no endpoint yet' },
          `${p.name} ${p.up ? '✓' : '✗'}${p.rtt_ms !== null ? ` ${p.rtt_ms.toFixed(1)} ms` : ''}`,
        ),
      ),
    ),
  ];
}

const DOING: Record<string, string> = { start: 'starting', stop: 'stopping', migrate: 'migrating' };

function stateText(vm: VmRecord): string {
  if (vm.state === 'migrating') return `migrating → ${vm.target}`;
  const op = pending.get(vm.name) ?? DOING[snap.operations[vm.name]] ?? snap.operations[vm.name];
  return op && op !== vm.state ? `${vm.state} (${op}…)` : vm.state;
}

function renderVms(): void {
  const body = $('#vms tbody');
  if (!body) return;
  const upHosts = snap.hosts.filter((x) => x.state === 'up' && x.hypervisor.available).map((x) => x.name);
  body.replaceChildren(
    ...(snap.vms.length
      ? snap.vms.flatMap((vm) => {
          const busy = pending.has(vm.name) || vm.name in snap.operations;
          const can = (ok: boolean) => !ok || busy;
          const others = upHosts.filter((n) => n !== vm.host);
          const choice = migrateTo.get(vm.name);
          const select = h(
            'select',
            {
              class: 'migrate-to',
              title: 'destination host',
              onchange: (e) => migrateTo.set(vm.name, (e.target as HTMLSelectElement).value),
            },
            h('option', { value: '' }, 'any host'),
            ...others.map((n) => h('option', { value: n, selected: n === choice }, n)),
          );
          // A reservation, else what home's DHCP server leased to the MAC (reported with its heartbeat).
          const ip = vm.ip ?? vm.lease_ip ?? null;
          const ssh = ip ? `ssh root@${ip}` : '';
          const row = h(
            'tr',
            { 'data-vm': vm.name, class: vm.state },
            h('td', { class: 'name' }, vm.name),
            h('td', { class: 'state' }, h('span', { class: `badge ${vm.state}` }, stateText(vm))),
            h('td', { class: 'host' }, vm.host ?? '-'),
            h('td', { class: 'mono' }, vm.mac),
            h(
              'td',
              { class: 'ip' },
              ip
                ? h(
                    'span',
                    { title: vm.ip ? 'reserved at home' : 'leased from the home pool' },
                    h('code', {}, ssh),
                    ' ',
                    h('button', { class: 'copy', title: 'copy the ssh command', onclick: () => copy(ssh) }, 'copy'),
                  )
                : h('span', { class: 'muted', title: 'no reservation, and no lease from the home pool yet' }, 'dhcp'),
            ),
            h('td', {}, vm.image),
            h('td', { 'data-since': vm.state === 'running' || vm.state === 'migrating' ? (vm.started_at ?? '') : '' }),
            h(
              'td',
              { class: 'actions' },
              h(
                'button',
                {
                  'data-action': 'start',
                  disabled: can(['defined', 'stopped', 'failed'].includes(vm.state)),
                  onclick: () => act(vm.name, 'start', 'starting'),
                },
                'Start',
              ),
              h(
                'button',
                {
                  'data-action': 'stop',
                  disabled: can(['running', 'failed'].includes(vm.state)),
                  onclick: () => act(vm.name, 'stop', 'stopping'),
                },
                'Stop',
              ),
              select,
              h(
                'button',
                {
                  'data-action': 'migrate',
                  disabled: can(vm.state === 'running' && others.length > 0),
                  onclick: () => act(vm.name, 'migrate', 'migrating', select.value ? { host: select.value } : {}),
                },
                'Migrate',
              ),
              h(
                'button',
                {
                  'data-action': 'delete',
                  class: 'danger',
                  disabled: can(['defined', 'stopped', 'failed'].includes(vm.state)),
                  onclick: () => {
                    if (confirm(`Delete vm ${vm.name}?`)) act(vm.name, 'delete', 'deleting');
                  },
                },
                'Delete',
              ),
              h('button', { 'data-action': 'console', onclick: () => openConsole(vm.name) }, 'Console'),
            ),
          );
          return vm.error
            ? [row, h('tr', { class: 'vm-error', 'data-vm-error': vm.name }, h('td', { colspan: '8' }, vm.error))]
            : [row];
        })
      : [h('tr', {}, h('td', { colspan: '8', class: 'empty' }, 'No VMs yet: create one below.'))]),
  );
  tick();
}

function renderImages(): void {
  const body = $('#images tbody');
  if (!body) return;
  body.replaceChildren(
    ...(snap.images.length
      ? snap.images.map((i) =>
          h(
            'tr',
            { 'data-image': i.name },
            h('td', { class: 'name' }, i.name),
            h('td', { class: 'mono wrap' }, i.kernel),
            h('td', { class: 'mono wrap' }, i.initrd),
            h('td', { class: 'mono wrap' }, i.disk ?? '-'),
            h(
              'td',
              { class: 'mono', title: JSON.stringify(i.sha256) },
              `${i.sha256.kernel.slice(0, 12)}… ${i.sha256.initrd.slice(0, 12)}…`,
            ),
          ),
        )
      : [h('tr', {}, h('td', { colspan: '5', class: 'empty' }, 'No images: add one below.'))]),
  );
}

/** Relative times move on without a new snapshot. */
function tick(): void {
  for (const el of document.querySelectorAll<HTMLElement>('[data-ago]')) el.textContent = ago(el.dataset.ago);
  for (const el of document.querySelectorAll<HTMLElement>('[data-since]'))
    el.textContent = el.dataset.since ? duration(el.dataset.since) : '-';
}
setInterval(tick, 1000);

async function copy(text: string): Promise<void> {
  try {
    await navigator.clipboard.writeText(text);
    message(`Copied: ${text}`, 'info');
  } catch {
    window.prompt('Copy this command:', text);
  }
}

// ---- actions ----------------------------------------------------------------------------------------------

async function act(
  name: string,
  action: 'start' | 'stop' | 'migrate' | 'delete',
  doing: string,
  body: Record<string, unknown> = {},
): Promise<void> {
  pending.set(name, doing);
  render();
  try {
    if (action === 'delete') await api('DELETE', `/v1/vms/${encodeURIComponent(name)}`);
    else {
      const vm = await api<VmRecord>('POST', `/v1/vms/${encodeURIComponent(name)}/${action}`, { ...body, wait: true });
      message(
        action === 'migrate'
          ? `vm ${name} migrated: running on ${vm.host}`
          : action === 'start'
            ? `vm ${name} running on ${vm.host}`
            : `vm ${name} stopped`,
        'info',
      );
    }
  } catch (err) {
    message(`${action} ${name}: ${(err as Error).message}`);
  } finally {
    pending.delete(name);
    render();
  }
}

function createForm(): HTMLElement {
  const field = (label: string, input: HTMLElement) => h('label', {}, h('span', {}, label), input);
  const name = h('input', { name: 'name', required: true, pattern: '[A-Za-z0-9][A-Za-z0-9._-]{0,62}', size: '12' });
  const image = h('select', { name: 'image', id: 'create-image', required: true });
  const cpus = h('input', { name: 'cpus', type: 'number', min: '1', value: '1', size: '3' });
  const memory = h('input', { name: 'memory', type: 'number', min: '32', value: '256', step: '32', size: '5' });
  const ip = h('input', { name: 'ip', placeholder: 'optional', size: '14' });
  const host = h('input', { name: 'host', placeholder: 'any', size: '10' });
  const form = h(
    'form',
    {
      id: 'create-vm',
      class: 'inline',
      onsubmit: async (e) => {
        e.preventDefault();
        const body: Record<string, unknown> = {
          name: name.value.trim(),
          image: image.value,
          cpus: Number(cpus.value),
          memory_mib: Number(memory.value),
        };
        if (ip.value.trim()) body.ip = ip.value.trim();
        if (host.value.trim()) body.host = host.value.trim();
        try {
          const vm = await api<VmRecord>('POST', '/v1/vms', body);
          message(`vm ${vm.name} defined (mac ${vm.mac}): start it from its row`, 'info');
          name.value = '';
        } catch (err) {
          message(`create ${body.name}: ${(err as Error).message}`);
        }
      },
    },
    h('strong', {}, 'New VM'),
    field('name', name),
    field('image', image),
    field('CPUs', cpus),
    field('memory MiB', memory),
    field('home IP', ip),
    field('host', host),
    h('button', { type: 'submit' }, 'Create'),
  );
  return form;
}

function refreshImageChoices(): void {
  const sel = $<HTMLSelectElement>('#create-image');
  if (!sel) return;
  const was = sel.value;
  sel.replaceChildren(...snap.images.map((i) => h('option', { value: i.name, selected: i.name === was }, i.name)));
}

function imageForm(): HTMLElement {
  const input = (name: string, placeholder: string, required = true) =>
    h('input', { name, placeholder, required, size: '28' });
  const name = input('name', 'name');
  const kernel = input('kernel', 'kernel URL or path on the hosts');
  const initrd = input('initrd', 'initrd URL or path');
  const ks = input('kernel_sha256', 'kernel SHA-256 (sha256sum FILE)');
  const is = input('initrd_sha256', 'initrd SHA-256');
  const cmdline = input('cmdline', 'kernel command line (optional)', false);
  return h(
    'form',
    {
      id: 'add-image',
      class: 'inline',
      onsubmit: async (e) => {
        e.preventDefault();
        const body: Record<string, unknown> = {
          name: name.value.trim(),
          kernel: kernel.value.trim(),
          initrd: initrd.value.trim(),
          sha256: { kernel: ks.value.trim(), initrd: is.value.trim() },
        };
        if (cmdline.value.trim()) body.cmdline = cmdline.value.trim();
        try {
          await api('POST', '/v1/images', body);
          message(`image ${body.name} added`, 'info');
          (e.target as HTMLFormElement).reset();
        } catch (err) {
          message(`add image ${body.name}: ${(err as Error).message}`);
        }
      },
    },
    h('strong', {}, 'Add image'),
    name,
    kernel,
    ks,
    initrd,
    is,
    cmdline,
    h('button', { type: 'submit' }, 'Add'),
  );
}

// ---- the console ------------------------------------------------------------------------------------------

let term: Terminal | null = null;
let fit: FitAddon | null = null;
let socket: WebSocket | null = null;
let consoleVm = '';

function b64url(s: string): string {
  const bytes = new TextEncoder().encode(s);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function openConsole(name: string): void {
  closeConsole();
  consoleVm = name;
  const section = $('#console');
  section.hidden = false;
  refreshConsoleTitle();
  term = new Terminal({ convertEol: false, cursorBlink: true, scrollback: 5000, fontSize: 14 });
  fit = new FitAddon();
  term.loadAddon(fit);
  term.open($('#terminal'));
  fit.fit();
  const enc = new TextEncoder();
  term.onData((d) => {
    if (socket?.readyState === WebSocket.OPEN) socket.send(enc.encode(d));
  });
  term.onBinary((d) => {
    if (socket?.readyState === WebSocket.OPEN) socket.send(Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff));
  });
  connectConsole(name, 0);
  term.focus();
  section.scrollIntoView({ block: 'nearest' });
}

/** Closes that end the console for good: the viewer closed it, or the VM was deleted. Anything else (the
 *  coordinator restarted or lost leadership, the stream broke, the viewer was too slow) reconnects. */
const CONSOLE_FINAL_CLOSES = new Set([1000, 4404]);
const CONSOLE_RETRY_MAX_MS = 10_000;
let consoleRetry: ReturnType<typeof setTimeout> | null = null;

function connectConsole(name: string, attempt: number): void {
  const status = $('#console-status');
  status.textContent = attempt === 0 ? 'connecting…' : `reconnecting (attempt ${attempt})…`;
  status.className = '';
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(`${scheme}//${location.host}/v1/vms/${encodeURIComponent(name)}/console`, [
    'homewire.console',
    `bearer.${b64url(token)}`,
  ]);
  ws.binaryType = 'arraybuffer';
  socket = ws;
  let opened = false;
  ws.onopen = () => {
    opened = true;
    // Attaching replays the scrollback: start from a clean screen so a reconnect does not show it twice.
    if (attempt > 0) term?.reset();
  };
  ws.onmessage = (e) => {
    if (typeof e.data !== 'string') {
      term?.write(new Uint8Array(e.data as ArrayBuffer));
      return;
    }
    try {
      const m = JSON.parse(e.data) as { type?: string; message?: string };
      if (m.message) status.textContent = m.message;
      if (m.type === 'error' && m.message) status.className = 'error';
      else status.className = '';
    } catch {
      /* not a notice */
    }
  };
  ws.onclose = (e) => {
    if (socket !== ws) return;
    socket = null;
    const why = `disconnected${e.reason ? `: ${e.reason}` : ''} (code ${e.code})`;
    if (CONSOLE_FINAL_CLOSES.has(e.code) || !snap.vms.some((v) => v.name === name)) {
      status.textContent = why;
      status.className = 'error';
      return;
    }
    const next = opened ? 1 : attempt + 1;
    const delay = Math.min(CONSOLE_RETRY_MAX_MS, 500 * 2 ** Math.min(next, 5));
    status.textContent = `${why}; reconnecting in ${(delay / 1000).toFixed(1)} s`;
    status.className = 'error';
    consoleRetry = setTimeout(() => {
      consoleRetry = null;
      if (consoleVm === name) connectConsole(name, next);
    }, delay);
  };
  ws.onerror = () => {
    status.textContent = 'the console connection failed';
    status.className = 'error';
  };
}

function refreshConsoleTitle(): void {
  const title = $('#console-title');
  if (!title || !consoleVm) return;
  const vm = snap.vms.find((v) => v.name === consoleVm);
  title.textContent = `Console: ${consoleVm}${vm ? ` (${vm.state}${vm.host ? ` on ${vm.host}` : ''})` : ''}`;
}

function closeConsole(): void {
  if (consoleRetry) clearTimeout(consoleRetry);
  consoleRetry = null;
  const ws = socket;
  socket = null;
  ws?.close(1000, 'closed');
  term?.dispose();
  term = null;
  fit = null;
  consoleVm = '';
  const section = document.querySelector<HTMLElement>('#console');
  if (section) section.hidden = true;
}

window.addEventListener('resize', () => fit?.fit());

// ---- start ------------------------------------------------------------------------------------------------

if (token) {
  api('GET', '/v1/status').then(
    () => showMain(),
    (err: ApiFailure) =>
      err.status === 401 ? signOut('The saved token is no longer accepted: sign in again.') : showSignIn(err.message),
  );
} else showSignIn();

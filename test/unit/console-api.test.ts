// The console splice, the event stream and the page's static files, in one process: a coordinator and host
// agents on the hypervisor twin (lab/coordinator/harness.ts), whose guests' consoles are tiny fake shells
// (FakeConsole). Real HTTP, real WebSockets (ws), the agent's real console streams. Serial, because the
// slow-viewer test floods the event loop. The same paths with a real QEMU guest, the real CLI and hosts that
// refuse inbound connections: test/system/console-qemu.test.ts.
import test, { type ExecutionContext } from 'ava';
import http from 'node:http';
import WebSocket from 'ws';
import { Harness, waitFor } from '../../lab/coordinator/harness.ts';
import { FAKE_PROMPT } from '../../lab/twins/hypervisor.ts';
import { CoordinatorClient } from '../../src/coordinator/client.ts';
import type { HostView, VmRecord } from '../../src/coordinator/types.ts';
import type { Snapshot } from '../../src/coordinator/watch.ts';
import { WEB_DIST } from '../../src/coordinator/web.ts';
import fs from 'node:fs';

interface Viewer {
  ws: WebSocket;
  out(): string;
  notices: { type: string; message?: string; host?: string }[];
  closed: Promise<{ code: number; reason: string }>;
  waitFor(re: RegExp, ms?: number): Promise<RegExpExecArray>;
  type(s: string): void;
}

function attach(url: string, o: { headers?: Record<string, string>; protocols?: string[] } = {}): Promise<Viewer> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, o.protocols ?? [], { headers: o.headers ?? {} });
    // Output as the chunks that arrived: `out += chunk` builds a rope that every slice or regex flattens again
    // (20 MB copied per look at the end of a large burst, which under CI load took longer than the test allows).
    const chunks: string[] = [];
    const out = (): string => chunks.join('');
    const notices: Viewer['notices'] = [];
    const closed = new Promise<{ code: number; reason: string }>((r) =>
      ws.on('close', (code, reason) => r({ code, reason: reason.toString() })),
    );
    ws.on('message', (d: Buffer, binary: boolean) => {
      if (binary) chunks.push(d.toString('latin1'));
      else notices.push(JSON.parse(d.toString()));
    });
    ws.once('unexpected-response', (_req, res) =>
      reject(Object.assign(new Error('refused'), { status: res.statusCode })),
    );
    ws.once('error', reject);
    ws.once('open', () =>
      resolve({
        ws,
        out,
        notices,
        closed,
        type: (s) => ws.send(Buffer.from(s, 'latin1')),
        async waitFor(re, ms = 3000) {
          const deadline = Date.now() + ms;
          // Only what arrived since the last look (and a little before it) is searched: rescanning megabytes of
          // output every few ms would starve the coordinator and agent that share this process.
          let next = 0; // the first chunk not searched yet
          let carry = ''; // the end of what was searched, for a match across chunks
          for (;;) {
            const hay = carry + chunks.slice(next).join('');
            next = chunks.length;
            const m = re.exec(hay);
            if (m) return m;
            carry = hay.slice(-4096);
            if (Date.now() > deadline)
              throw new Error(`${re} not seen within ${ms} ms in ${JSON.stringify(carry.slice(-200))}`);
            await new Promise((r) => setTimeout(r, 10));
          }
        },
      }),
    );
  });
}

async function refusedWith(url: string, o: Parameters<typeof attach>[1] = {}): Promise<number> {
  try {
    const v = await attach(url, o);
    v.ws.close();
    return 101;
  } catch (err) {
    return (err as { status?: number }).status ?? -1;
  }
}

async function grid(t: ExecutionContext): Promise<{ h: Harness; ws: string; admin: Record<string, string> }> {
  const h = await Harness.start();
  t.teardown(() => h.stop());
  await h.addHost('host-a');
  await h.addHost('host-b');
  await h.addImage();
  await h.admin.request('POST', '/v1/vms', { name: 'web', image: 'tiny' });
  await h.admin.request('POST', '/v1/vms/web/start', { host: 'host-a' });
  return { h, ws: h.coordinator.url.replace(/^http/, 'ws'), admin: { authorization: `Bearer ${h.adminToken}` } };
}

test.serial(
  'console: scrollback, typing, two viewers, a late viewer, following a migration, closed on delete',
  async (t) => {
    const { h, ws, admin } = await grid(t);
    const url = `${ws}/v1/vms/web/console`;
    const a = await attach(url, { headers: admin });
    await a.waitFor(new RegExp(`booting web on host-a\\r\\n${FAKE_PROMPT}`));
    t.pass('the first viewer gets what the guest printed before anyone watched');
    const b = await attach(url, { headers: admin });
    await b.waitFor(/booting web on host-a/);
    a.type('echo hello-1\r');
    await a.waitFor(/\r\nhello-1\r\n/);
    await b.waitFor(/\r\nhello-1\r\n/);
    b.type('echo from-b\r');
    await a.waitFor(/\r\nfrom-b\r\n/);
    await waitFor(() => b.out().endsWith(FAKE_PROMPT) && a.out().endsWith(FAKE_PROMPT), 2000, 'both prompts');
    t.is(b.out(), a.out(), 'both viewers saw the same bytes');
    const late = await attach(url, { headers: admin });
    await late.waitFor(/booting web on host-a[\s\S]*hello-1[\s\S]*from-b/);
    late.ws.close();
    t.true(h.coordinator.consoles.stats.viewersAttached >= 3);

    // Migration: the hub drops host-a's stream and asks host-b; nothing is replayed twice.
    const vm = await h.admin.request<VmRecord>('POST', '/v1/vms/web/migrate', { host: 'host-b' });
    t.is(vm.host, 'host-b');
    await waitFor(() => a.notices.some((n) => /on host-b/.test(n.message ?? '')), 3000, 'moved to host-b');
    const before = a.out().length;
    a.type('echo $HOST\r');
    await a.waitFor(/\r\nhost-b\r\n/);
    t.is(
      a
        .out()
        .slice(0, before)
        .match(/booting web/g)?.length,
      1,
      'the boot output appears once',
    );
    t.is(h.host('host-a').agent.consoles.count, 0, "host-a's stream is closed");
    t.is(h.host('host-b').agent.consoles.count, 1, 'host-b streams the console');

    // A late viewer still sees what the VM printed on host-a, from the coordinator's mirror.
    const late2 = await attach(url, { headers: admin });
    await late2.waitFor(/booting web on host-a[\s\S]*\r\nhost-b\r\n/);
    late2.ws.close();

    // Stopped: viewers stay and are told; deleted: they are closed with 4404.
    await h.admin.request('POST', '/v1/vms/web/stop', {});
    await waitFor(() => a.notices.some((n) => /is stopped/.test(n.message ?? '')), 3000, 'stopped notice');
    await h.admin.request('DELETE', '/v1/vms/web');
    t.deepEqual(await a.closed, { code: 4404, reason: 'vm web was deleted' });
    t.is((await b.closed).code, 4404);
  },
);

test.serial(
  'console: refusals (no token, host token, wrong subprotocol token, unknown vm, guessed session) move counters',
  async (t) => {
    const { h, ws, admin } = await grid(t);
    const url = `${ws}/v1/vms/web/console`;
    const bearer = (tok: string) => ['homewire.console', `bearer.${Buffer.from(tok).toString('base64url')}`];
    t.is(await refusedWith(url), 401);
    t.is(await refusedWith(url, { headers: { authorization: `Bearer ${h.host('host-a').token}` } }), 401);
    t.is(await refusedWith(url, { protocols: bearer('wrong-token-wrong-token') }), 401);
    t.is(await refusedWith(`${ws}/v1/agent/console?host=host-a&session=x`, { headers: admin }), 401);
    t.is(h.coordinator.consoles.stats.rejected.unauthorized, 4);
    t.is(await refusedWith(`${ws}/v1/vms/nope/console`, { headers: admin }), 404);
    t.is(await refusedWith(`${ws}/v1/elsewhere`, { headers: admin }), 404);
    t.is(h.coordinator.consoles.stats.rejected.not_found, 2);
    const hostAuth = { authorization: `Bearer ${h.host('host-a').token}` };
    t.is(await refusedWith(`${ws}/v1/agent/console?host=host-a&session=guessed`, { headers: hostAuth }), 404);
    t.is(h.coordinator.consoles.stats.rejected.bad_session, 1);

    // What a browser sends: the token as a subprotocol; the server picks homewire.console.
    const v = await attach(url, { protocols: bearer(h.adminToken) });
    t.is(v.ws.protocol, 'homewire.console');
    await v.waitFor(/booting web/);
    v.ws.close();

    // A plain GET is told to upgrade.
    const r = await h.admin.request('GET', '/v1/vms/web/console').catch((e: { status: number }) => e);
    t.is((r as { status: number }).status, 426);
  },
);

test.serial(
  'console: a hostile agent stream (output before its hello) is cut off and counted; a session works once',
  async (t) => {
    const { h, ws, admin } = await grid(t);
    // host-a's agent answers console requests without connecting: the test takes the session it was given.
    const agent = h.host('host-a').agent;
    agent.consoles.link = async () => {};
    const v = await attach(`${ws}/v1/vms/web/console`, { headers: admin });
    const svc = h.coordinator.consoles;
    await waitFor(() => svc.sessions.size === 1, 3000, 'a session for host-a');
    const [session] = [...svc.sessions.keys()];
    const evil = new WebSocket(`${ws}/v1/agent/console?host=host-a&session=${session}`, {
      headers: { authorization: `Bearer ${h.host('host-a').token}` },
    });
    await new Promise((r) => evil.once('open', r));
    const closed = new Promise<number>((r) => evil.once('close', (code) => r(code)));
    evil.send(Buffer.from('\x1b]0;pwned\x07 fake output'));
    t.is(await closed, 1002);
    t.is(svc.stats.rejected.bad_stream, 1);
    t.false(v.out().includes('pwned'), 'nothing reached the viewer');
    // The same session cannot be used twice.
    t.is(
      await refusedWith(`${ws}/v1/agent/console?host=host-a&session=${session}`, {
        headers: { authorization: `Bearer ${h.host('host-a').token}` },
      }),
      404,
    );
    v.ws.close();
  },
);

test.serial(
  'console: a burst larger than the buffers reaches every viewer that reads; one that does not read is closed',
  async (t) => {
    const { h, ws, admin } = await grid(t);
    const url = `${ws}/v1/vms/web/console`;
    const socketOf = (v: Viewer) => (v.ws as unknown as { _socket: import('node:net').Socket })._socket;
    const slow = await attach(url, { headers: admin });
    const lagging = await attach(url, { headers: admin });
    const fast = await attach(url, { headers: admin });
    await slow.waitFor(/booting/);
    await lagging.waitFor(/booting/);
    socketOf(slow).pause(); // never reads again
    socketOf(lagging).pause(); // reads again after 2 s, inside the stall limit
    setTimeout(() => socketOf(lagging).resume(), 2000);
    const lines = 300_000; // ~20 MB of output in one burst: more than the socket buffers and the 4 MiB mark hold
    fast.type(`say ${lines}\r`);
    const last = new RegExp(`line ${lines - 1} x+\\r\\n`);
    await fast.waitFor(last, 100_000); // ~8 s alone; a loaded CI worker is far slower
    await lagging.waitFor(last, 30_000);
    // Every line, in order, once: count the bytes between the first and the last line.
    let want = 0;
    for (let i = 0; i < lines; i++) want += `line ${i} ${'x'.repeat(60)}\r\n`.length;
    for (const [who, v] of [
      ['fast', fast],
      ['lagging', lagging],
    ] as const) {
      const out = v.out();
      const from = out.indexOf('line 0 x');
      const to = out.indexOf('\r\n', out.indexOf(`line ${lines - 1} x`)) + 2;
      t.is(to - from, want, `${who}: every byte of the burst`);
      t.false(out.includes('were lost'), `${who}: nothing lost`);
      t.is(v.ws.readyState, WebSocket.OPEN, `${who} stays attached`);
    }
    const stats = h.coordinator.consoles.stats;
    t.is(stats.slowViewersClosed, 1, 'only the viewer that never reads is closed');
    t.true(stats.streamsHeld >= 1, 'the stream was held for the viewers behind');
    await waitFor(() => h.coordinator.consoles.viewers === 2, 3000, 'the coordinator let go of the slow viewer');
    t.is(h.host('host-a').agent.consoles.stats.slowClosed, 0, "the agent's stream was never closed");
  },
);

test.serial('events: GET /v1/events streams snapshots on change; 401 without a token', async (t) => {
  const { h, admin } = await grid(t);
  const got: Snapshot[] = [];
  const req = http.get(`${h.coordinator.url}/v1/events`, { headers: admin });
  const res = await new Promise<http.IncomingMessage>((r) => req.once('response', r));
  t.is(res.statusCode, 200);
  t.regex(String(res.headers['content-type']), /text\/event-stream/);
  let buf = '';
  res.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (/^event: state$/m.test(block) && data) got.push(JSON.parse(data));
    }
  });
  t.teardown(() => req.destroy());
  await waitFor(() => got.length > 0, 3000, 'a first snapshot');
  const first = got[got.length - 1];
  t.deepEqual(
    first.hosts.map((x) => x.name),
    ['host-a', 'host-b'],
  );
  t.is(first.vms.find((v) => v.name === 'web')?.state, 'running');
  t.truthy(first.vms[0].started_at, 'uptime counts from started_at');
  t.is(first.images[0].name, 'tiny');
  await h.admin.request('POST', '/v1/vms', { name: 'db', image: 'tiny' });
  await waitFor(() => got.some((s) => s.vms.some((v) => v.name === 'db')), 3000, 'db in a snapshot');
  await h.admin.request('POST', '/v1/vms/web/migrate', { host: 'host-b', wait: false });
  await waitFor(
    () => got.some((s) => s.vms.some((v) => v.name === 'web' && v.host === 'host-b' && v.state === 'running')),
    5000,
    'web on host-b in a snapshot',
  );
  const noToken = await new Promise<number>((r) => http.get(`${h.coordinator.url}/v1/events`, (x) => r(x.statusCode!)));
  t.is(noToken, 401);
});

test.serial('web page: / and /assets/* are served without a token, with a CSP; nothing else is', async (t) => {
  if (!fs.existsSync(`${WEB_DIST}/index.html`))
    return t.fail(`the web page is not built: run \`npm run build\` (${WEB_DIST})`);
  const { h } = await grid(t);
  const get = (p: string) =>
    new Promise<{ status: number; type: string; csp: string; body: string }>((r) =>
      http.get(`${h.coordinator.url}${p}`, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (d: string) => {
          body += d;
        });
        res.on('end', () =>
          r({
            status: res.statusCode!,
            type: String(res.headers['content-type']),
            csp: String(res.headers['content-security-policy']),
            body,
          }),
        );
      }),
    );
  const page = await get('/');
  t.is(page.status, 200);
  t.regex(page.type, /text\/html/);
  t.regex(page.csp, /script-src 'self'/);
  t.regex(page.body, /\/assets\/app\.js/);
  const js = await get('/assets/app.js');
  t.is(js.status, 200);
  t.regex(js.type, /javascript/);
  t.true(js.body.length > 100_000, 'xterm.js is bundled in (no CDN)');
  t.notRegex(js.body, /https?:\/\/(cdn|unpkg|jsdelivr)/);
  t.is((await get('/assets/app.css')).status, 200);
  t.is((await get('/assets/..%2Fpackage.json')).status, 404);
  t.is((await get('/assets/nope.js')).status, 404);
  t.is((await get('/package.json')).status, 401, 'anything else is the API: token needed');
});

test.serial("hosts: an agent's mesh report is shown, bounded and typed (a host is not trusted)", async (t) => {
  const h = await Harness.start();
  t.teardown(() => h.stop());
  const host = await h.addHost('host-a');
  const junk = {
    endpoint: 'x'.repeat(10_000),
    peers: [
      ...Array.from({ length: 500 }, (_, i) => ({ name: `p${i}`, endpoint: '192.0.2.9:1', up: true, rtt_ms: 1.5 })),
    ],
  };
  junk.peers.unshift({
    name: 'evil',
    endpoint: { nested: 1 } as unknown as string,
    up: 'yes' as unknown as boolean,
    rtt_ms: -5,
  });
  const hostClient = new CoordinatorClient([h.coordinator.url], h.host('host-a').token);
  await hostClient.request('POST', '/v1/agent/heartbeat', {
    name: 'host-a',
    boot_id: host.agent.bootId,
    guests_version: 0,
    guests: [],
    mesh: junk,
  });
  const view = await h.admin.request<HostView>('GET', '/v1/hosts/host-a');
  t.is(view.mesh?.endpoint.length, 64);
  t.is(view.mesh?.peers.length, 64);
  t.deepEqual(view.mesh?.peers[0], { name: 'evil', endpoint: null, up: false, rtt_ms: 0 });
  await hostClient.request('POST', '/v1/agent/heartbeat', {
    name: 'host-a',
    boot_id: host.agent.bootId,
    guests_version: 0,
    guests: [],
    mesh: 'nonsense',
  });
  t.is((await h.admin.request<HostView>('GET', '/v1/hosts/host-a')).mesh, null);
});

test.serial("VMs show the home IP the DHCP site leased them; other hosts' lease reports are ignored", async (t) => {
  const { h } = await grid(t);
  const web = await h.admin.request<VmRecord>('GET', '/v1/vms/web');
  t.is(web.ip, null, 'no reservation: a pool lease');
  t.is(web.lease_ip, null, 'no DHCP site has reported a lease yet');
  // A hostile VM host reports leases too (it is not the DHCP site): ignored.
  const hostA = new CoordinatorClient([h.coordinator.url], h.host('host-a').token);
  await hostA.request('POST', '/v1/agent/heartbeat', {
    name: 'host-a',
    boot_id: h.host('host-a').agent.bootId,
    guests_version: 0,
    guests: [],
    leases: [{ mac: web.mac, ip: '203.0.113.66' }],
  });
  t.is((await h.admin.request<VmRecord>('GET', '/v1/vms/web')).lease_ip, null, 'only a DHCP site is believed');
  // The home site (dhcp) reports its bound leases with its heartbeats, junk among them.
  const home = await h.addHost('home', {
    dhcp: true,
    leases: [
      { mac: web.mac, ip: '198.51.100.123' },
      { mac: 'not a mac', ip: '198.51.100.9' },
      { mac: '52:54:00:00:00:01', ip: '$(reboot)' },
    ],
  });
  await waitFor(
    async () => (await h.admin.request<VmRecord>('GET', '/v1/vms/web')).lease_ip === '198.51.100.123',
    5000,
    "home's lease report",
  );
  const list = await h.admin.request<{ vms: VmRecord[] }>('GET', '/v1/vms');
  t.is(list.vms.find((v) => v.name === 'web')?.lease_ip, '198.51.100.123');
  const snap = await h.coordinator.watch.now();
  t.is(snap.vms.find((v) => v.name === 'web')?.lease_ip, '198.51.100.123', 'the page sees it too');
  t.false(JSON.stringify(snap).includes('reboot'), 'malformed entries are dropped');
  // The lease ends (released): the next report no longer has it.
  home.leases = [];
  await waitFor(
    async () => (await h.admin.request<VmRecord>('GET', '/v1/vms/web')).lease_ip === null,
    5000,
    'the lease gone from the view',
  );
  t.pass();
});

test.serial('console: with per-host credentials, a stream for host-a from another host is refused (403)', async (t) => {
  const { h, ws, admin } = await grid(t);
  const svc = h.coordinator.consoles;
  // host-a's agent is asked for a stream but does not connect: host-b's operator takes the session id.
  h.host('host-a').agent.consoles.link = async () => {};
  const v = await attach(`${ws}/v1/vms/web/console`, { headers: admin });
  await waitFor(() => svc.sessions.size === 1, 3000, 'a session for host-a');
  const [session] = [...svc.sessions.keys()];
  const hostB = { authorization: `Bearer ${h.host('host-b').token}` };
  t.is(await refusedWith(`${ws}/v1/agent/console?host=host-a&session=${session}`, { headers: hostB }), 403);
  t.is(svc.stats.rejected.wrong_host, 1);
  t.is(v.out(), '', "no output from a host that is not the VM's");
  // And a made-up or revoked host token is 401, counted with the API's refusals.
  const before = h.coordinator.audit.failures.wrong_token;
  const fake = { authorization: `Bearer host-a.${'A'.repeat(43)}` };
  t.is(await refusedWith(`${ws}/v1/agent/console?host=host-a&session=${session}`, { headers: fake }), 401);
  t.is(h.coordinator.audit.failures.wrong_token, before + 1);
  v.ws.close();
});

// The coordinator's web page in a real browser (headless Debian Chromium driven by playwright-core) against the
// real grid: the coordinator in the lab's underlay namespace, host agents on host-a and host-b that refuse
// connections from the coordinator's network, a real QEMU guest (TCG) with a shell on its serial console.
// The page: a wrong token is refused and the page says so; signed in, it lists the hosts and the VM; Start
// boots the VM (live updates show it running); Console opens xterm.js on its serial console, where an `echo`
// typed in the browser comes back; Migrate moves it and the VM's host changes on the page without a reload,
// and the console follows. A screenshot goes to test/output/web-page.png (or $HOMEWIRE_TEST_OUTPUT).
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import type { Page } from 'playwright-core';
import {
  type Browser,
  bridgeIntoNamespace,
  browserMissing,
  launchBrowser,
  testOutputDir,
} from '../../lab/coordinator/browser.ts';
import { GridLab, homeAgentSection } from '../../lab/coordinator/grid.ts';
import { buildGuestImage, GUEST_PROMPT } from '../../lab/guest-image.ts';
import { deleteNamespaces, Lab, PLAN } from '../../lab/topology.ts';
import { vmSiteConfig } from '../../lab/vm/guests.ts';
import { WEB_DIST } from '../../src/coordinator/web.ts';
import { testIf } from '../helpers/prereq.ts';
import { vmSkipReason } from '../../lab/vm/guests.ts';

/** Root, QEMU and the lab's tools, and Chromium and socat; otherwise the test fails saying what to install. */
const webTest = testIf(vmSkipReason() ?? browserMissing());

/** The terminal's visible rows (xterm.js DOM renderer), non-breaking spaces as spaces. */
function terminalRows(page: Page): Promise<string[]> {
  return page.$$eval('#terminal .xterm-rows > div', (rows) =>
    rows.map((r) => (r.textContent ?? '').replace(/\u00a0/g, ' ').trimEnd()),
  );
}

async function typeInTerminal(page: Page, text: string): Promise<void> {
  await page.click('#terminal');
  await page.keyboard.type(text);
  await page.keyboard.press('Enter');
}

webTest(
  'web page in Chromium: wrong token refused; sign in, hosts and VMs, create and delete, start, console echo, migrate, screenshot',
  async (t: ExecutionContext) => {
    t.timeout(300_000);
    if (!fs.existsSync(path.join(WEB_DIST, 'index.html')))
      return t.fail(`the web page is not built (${WEB_DIST}): run \`npm run build\``);
    const prefix = `hwk${crypto.randomBytes(2).toString('hex')}-`;
    let lab: Lab | null = null;
    let browser: Browser | null = null;
    let bridge: { stop(): void } | null = null;
    t.teardown(async () => {
      await browser?.close();
      bridge?.stop();
      if (lab) await lab.destroy();
      else await deleteNamespaces(prefix);
    });
    // The home site's daemon joins the coordinator too (no hypervisor): VMs' home IP reservations reach its
    // DHCP server, so the address the page shows is the one the guest gets.
    const dhcp = vmSiteConfig({ dhcp: true });
    lab = await Lab.create({
      prefix,
      start: false,
      siteConfig: (site) => [dhcp(site), site === 'home' ? homeAgentSection() : ''].join('\n'),
    });
    // home's agent needs its own token (`homewire host add home`), so the coordinator comes first.
    for (const s of lab.sites) if (s.name !== 'home') lab.startDaemon(s.name);
    const grid = await GridLab.start(lab, buildGuestImage({ log: (m) => t.log(m) }));
    await grid.hostToken('home');
    lab.startDaemon('home');
    await lab.waitPeersUp();
    await grid.closeInbound();
    await grid.addImage('tiny');
    await grid.ok('vm', 'create', 'web', '--image', 'tiny', '--memory', '128', '--ip', '198.51.100.50');
    const b = await bridgeIntoNamespace(lab.ns('ul'), `${PLAN.internet4}:7100`);
    bridge = b;
    browser = await launchBrowser();
    const page = await browser.context.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`${b.url}/`);

    // A wrong token: the page says so and stays on the sign-in form.
    await page.fill('#token', 'not-the-admin-token-at-all');
    await page.click('#signin-button');
    await page.waitForSelector('#signin-error:has-text("Wrong token")', { timeout: 10_000 });
    t.regex((await page.textContent('#signin-error')) ?? '', /Wrong token: the coordinator refused it \(401\)/);
    // The host token is not the admin token either.
    await page.fill('#token', fs.readFileSync(path.join(lab.dir, 'host-a.token'), 'utf8').trim());
    await page.click('#signin-button');
    await page.waitForSelector('#signin-error:has-text("Wrong token")', { timeout: 10_000 });

    // Sign in: hosts and VMs, live.
    await page.fill('#token', fs.readFileSync(grid.adminTokenFile, 'utf8').trim());
    await page.click('#signin-button');
    await page.waitForSelector('#live:has-text("live")', { timeout: 10_000 });
    for (const host of ['host-a', 'host-b'])
      await page.waitForSelector(`#hosts tr[data-host="${host}"] td.state:has-text("up")`, { timeout: 10_000 });
    await page.waitForSelector('#hosts tr[data-host="home"] td.state:has-text("up")', { timeout: 10_000 });
    const listed = await page.$$eval('#hosts tbody tr', (rows) => rows.map((r) => r.getAttribute('data-host')));
    t.deepEqual(listed, ['home', 'host-a', 'host-b']);
    t.regex((await page.textContent('#hosts tr[data-host="host-a"]')) ?? '', /2 \/ 2.*1024 \/ 1024 MiB/);
    // The mesh as host-a's daemon sees it: its endpoint, and its sessions to home and host-b up.
    await page.waitForSelector('#hosts tr[data-host="host-a"] td.mesh .peer.up:has-text("home")', { timeout: 10_000 });
    t.regex((await page.textContent('#hosts tr[data-host="host-a"] td.mesh')) ?? '', /192\.0\.2\.2:51820.*home ✓/);
    await page.waitForSelector('#vms tr[data-vm="web"] td.state:has-text("defined")');
    t.regex((await page.textContent('#vms tr[data-vm="web"] td.ip')) ?? '', /ssh root@198\.51\.100\.50/);
    t.is(await page.textContent('#images tr[data-image="tiny"] td.name'), 'tiny');
    t.is(await page.evaluate(() => sessionStorage.getItem('homewire.token') !== null), true);
    t.is(await page.evaluate(() => localStorage.length), 0, 'the token is not kept beyond the session');

    // Create from the page: a name taken is an error the page shows; a new VM appears, and Delete removes it.
    page.on('dialog', (d) => d.accept());
    await page.fill('#create-vm input[name="name"]', 'web');
    await page.click('#create-vm button[type="submit"]');
    await page.waitForSelector('#messages .message.error:has-text("a vm named web exists already")');
    await page.fill('#create-vm input[name="name"]', 'db');
    await page.click('#create-vm button[type="submit"]');
    await page.waitForSelector('#vms tr[data-vm="db"] td.state:has-text("defined")', { timeout: 10_000 });
    await page.click('#vms tr[data-vm="db"] button[data-action="delete"]');
    await page.waitForSelector('#vms tr[data-vm="db"]', { state: 'detached', timeout: 10_000 });

    // Start: the page shows progress, then running on a host (live update, no reload).
    await page.click('#vms tr[data-vm="web"] button[data-action="start"]');
    await page.waitForSelector('#vms tr[data-vm="web"] td.state:has-text("running")', { timeout: 120_000 });
    const firstHost = ((await page.textContent('#vms tr[data-vm="web"] td.host')) ?? '').trim();
    t.true(firstHost === 'host-a' || firstHost === 'host-b', `placed on ${firstHost}`);
    await page.waitForSelector(`#hosts tr[data-host="${firstHost}"] td.guests:has-text("web")`);
    t.regex((await page.textContent('#vms tr[data-vm="web"] td[data-since]')) ?? '', /^\d+(m )?\d*s$/, 'uptime');

    // Console: xterm.js on the serial console, through the coordinator.
    await page.click('#vms tr[data-vm="web"] button[data-action="console"]');
    const bootDeadline = Date.now() + 90_000;
    while (!(await terminalRows(page)).some((r) => r.startsWith(GUEST_PROMPT.trim()))) {
      if (Date.now() > bootDeadline) throw new Error(`no prompt in the browser's terminal\n${grid.logs()}`);
      await page.waitForTimeout(200);
    }
    const typedAt = Date.now();
    await typeInTerminal(page, 'echo hello-$RANDOM');
    await page.waitForFunction(
      () =>
        [...document.querySelectorAll('#terminal .xterm-rows > div')].some((d) =>
          /^hello-\d+\s*$/.test(d.textContent ?? ''),
        ),
      undefined,
      { timeout: 5000 },
    );
    const echoMs = Date.now() - typedAt;
    const rows = await terminalRows(page);
    const hello = rows.find((r) => /^hello-\d+$/.test(r));
    t.regex(
      fs.readFileSync(grid.serialLog(firstHost, 'web'), 'latin1'),
      /HOMEWIRE-LEASE ip=198\.51\.100\.50 /,
      'the guest got the home IP the page shows (its reservation)',
    );
    t.log(`the echo came back in the browser's terminal ${echoMs} ms after typing began (${hello})`);
    t.truthy(hello);

    // Migrate to the other host: the VM's host changes on the page, the console follows.
    const other = firstHost === 'host-a' ? 'host-b' : 'host-a';
    await page.selectOption('#vms tr[data-vm="web"] select.migrate-to', other);
    await page.click('#vms tr[data-vm="web"] button[data-action="migrate"]');
    await page.waitForSelector(`#vms tr[data-vm="web"] td.state:has-text("migrating → ${other}")`, { timeout: 10_000 });
    await page.waitForSelector(`#vms tr[data-vm="web"] td.host:has-text("${other}")`, { timeout: 120_000 });
    await page.waitForSelector('#vms tr[data-vm="web"] td.state:has-text("running")');
    await page.waitForSelector(`#console-status:has-text("connected to web on ${other}")`, { timeout: 15_000 });
    await typeInTerminal(page, 'echo moved-$((40+2))');
    await page.waitForFunction(
      () =>
        [...document.querySelectorAll('#terminal .xterm-rows > div')].some((d) =>
          /^moved-42\s*$/.test(d.textContent ?? ''),
        ),
      undefined,
      { timeout: 5000 },
    );
    t.true((await terminalRows(page)).includes(hello!), 'the output from before the migration is still there');

    // The coordinator restarts under the page: the console reconnects by itself and types again.
    await grid.restartCoordinator();
    await page.waitForSelector('#console-status:has-text("reconnecting")', { timeout: 15_000 });
    await page.waitForSelector(`#console-status:has-text("connected to web on ${other}")`, { timeout: 60_000 });
    await typeInTerminal(page, 'echo again-$((40+3))');
    await page.waitForFunction(
      () =>
        [...document.querySelectorAll('#terminal .xterm-rows > div')].some((d) =>
          /^again-43\s*$/.test(d.textContent ?? ''),
        ),
      undefined,
      { timeout: 5000 },
    );
    t.log('after a coordinator restart the console reconnected by itself and echoed again');
    await page.waitForSelector(`#hosts tr[data-host="${other}"] td.guests:has-text("web")`);
    t.regex((await page.textContent('#console-title')) ?? '', new RegExp(`running on ${other}`));

    const shot = path.join(testOutputDir(), 'web-page.png');
    await page.screenshot({ path: shot, fullPage: true });
    t.log(`screenshot: ${shot}`);
    t.true(fs.statSync(shot).size > 10_000);

    // Sign out: back to the form, the token gone.
    await page.click('#signout');
    await page.waitForSelector('#signin');
    t.is(await page.evaluate(() => sessionStorage.getItem('homewire.token')), null);
    t.deepEqual(errors, [], 'no script errors on the page');
    await grid.ok('vm', 'stop', 'web');
  },
);

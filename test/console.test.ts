import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer } from 'node:http';
import { request } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

import { chromium, type Browser, type BrowserContext, type Locator, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { CONSOLE_CSP, staticRoot } from '../control-plane/console/serve.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server/server.js';
import { cliPath, makeImage, MiB, PASSPHRASE, repoRoot, Sandbox, unusedPort, waitFor as waitForValue } from './helpers.js';

/**
 * The web console in a real browser (Debian's Chromium, driven by playwright-core) against a real
 * control plane on port 0, and in the full flow a real agent process that runs the one-off backup.
 */

const CHROMIUM = '/usr/bin/chromium';
/** Screenshots go to the sandbox (removed afterwards) unless this names a folder to keep them in. */
const SCREENSHOT_DIR = process.env.CAIRN_CONSOLE_SCREENSHOTS;

function screenshotPath(name: string): string {
  return SCREENSHOT_DIR ? join(SCREENSHOT_DIR, name) : sb.path(name);
}

let sb: Sandbox;
let cp: ControlPlane;
let token: string;
let browser: Browser;
let context: BrowserContext;
const serverLog: string[] = [];

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

/** One HTTPS request with the path sent exactly as given (no URL normalisation), trusting only the CA. */
function raw(method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<Reply> {
  const url = new URL(cp.url);
  return new Promise((resolve, reject) => {
    const req = request({ host: url.hostname, port: url.port, method, path, headers, ca: cp.caCertPem }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function apiCall<T = any>(method: string, path: string, body?: unknown): Promise<T> {
  const r = await raw(
    method,
    path,
    { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body === undefined ? undefined : JSON.stringify(body),
  );
  if (r.status >= 300) throw new Error(`${method} ${path}: HTTP ${r.status} ${r.text}`);
  return JSON.parse(r.text) as T;
}

/** A new page that fails the test on any script error or CSP violation. */
async function newPage(): Promise<{ page: Page; problems: string[] }> {
  const page = await context.newPage();
  const problems: string[] = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && /Content Security Policy|Failed to load module|SyntaxError|TypeError|ReferenceError/.test(msg.text())) problems.push(msg.text());
  });
  return { page, problems };
}

/**
 * Waits until `locator` shows `text` (playwright-core has no `expect` of its own); on timeout the
 * error says what it showed instead.
 */
async function see(locator: Locator, text: string | RegExp): Promise<void> {
  try {
    await locator.filter({ hasText: text }).first().waitFor();
  } catch (err) {
    const shown = await locator.allTextContents().catch(() => []);
    throw new Error(`expected ${String(locator)} to show ${String(text)}; it shows ${JSON.stringify(shown)}\n${(err as Error).message.split('\n')[0]}`);
  }
}

async function logIn(page: Page, value = token): Promise<void> {
  await page.goto(cp.url + '/');
  await page.getByLabel('Admin API token').fill(value);
  await page.getByRole('button', { name: 'Log in' }).click();
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`the console tests need Chromium at ${CHROMIUM}: apt-get install chromium`);
  sb = await Sandbox.create('console');
  cp = await startControlPlane({ dataDir: sb.path('cp'), port: 0, log: (level, message) => serverLog.push(`${level}: ${message}`) });
  token = cp.adminToken!;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  // The control plane's CA is its own; the browser is told to accept its certificate.
  context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 860 } });
  // Generous: the suite runs test files in parallel on small machines.
  context.setDefaultTimeout(20_000);
});

afterAll(async () => {
  await browser?.close();
  await cp?.close();
  await sb?.cleanup();
});

describe('console files', () => {
  it('serves the page and its modules with their types and a strict CSP, and leaves the API alone', async () => {
    const index = await raw('GET', '/');
    expect(index.status).toBe(200);
    expect(index.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(index.headers['content-security-policy']).toBe(CONSOLE_CSP);
    expect(CONSOLE_CSP).toContain("default-src 'none'");
    expect(CONSOLE_CSP).toContain("script-src 'self'");
    expect(CONSOLE_CSP).not.toContain('unsafe');
    expect(index.headers['x-content-type-options']).toBe('nosniff');
    expect(index.text).toContain('<script type="module" src="/console/app.js">');

    const js = await raw('GET', '/console/app.js?v=1');
    expect(js.status).toBe(200);
    expect(js.headers['content-type']).toBe('text/javascript; charset=utf-8');
    expect(js.text).toContain('export function describe');
    expect((await raw('GET', '/console/pages/dashboard.js')).headers['content-type']).toBe('text/javascript; charset=utf-8');
    expect((await raw('GET', '/console/console.css')).headers['content-type']).toBe('text/css; charset=utf-8');
    expect((await raw('GET', '/console/favicon.svg')).headers['content-type']).toBe('image/svg+xml');
    expect((await raw('GET', '/console/')).text).toBe(index.text);

    const head = await raw('HEAD', '/console/app.js');
    expect(head.status).toBe(200);
    expect(head.text).toBe('');
    expect(Number(head.headers['content-length'])).toBe(Buffer.byteLength(js.text));

    const unknown = await raw('GET', '/console/nope.js');
    expect(unknown.status).toBe(404);
    expect(unknown.headers['content-security-policy']).toBe(CONSOLE_CSP);

    // Everything that is not GET/HEAD of the console goes to the REST API, which answers JSON.
    const api = await raw('GET', '/v1/agents');
    expect(api.status).toBe(401);
    expect(JSON.parse(api.text).error.code).toBe('UNAUTHENTICATED');
    const post = await raw('POST', '/', {}, '{}');
    expect(post.status).toBe(404);
    expect(JSON.parse(post.text).error.code).toBe('ROUTE_NOT_FOUND');
  });

  it('never serves a file outside the console folder, however the path is spelt', async () => {
    const attempts = [
      '/console/../server/server.ts',
      '/console/../../../package.json',
      '/console/%2e%2e/serve.ts',
      '/console/%2e%2e%2fserve.ts',
      '/console/..%2f..%2f..%2fpackage.json',
      '/console/pages/..%2f..%2fserve.ts',
      '/console/%2e%2e%5cserve.ts',
      '/console//etc/passwd',
      '/console/%2fetc%2fpasswd',
      '/console/pages/%00.js',
      '/console/%E0%A4%A',
      '/console/../../../../../../etc/passwd',
    ];
    for (const path of attempts) {
      const r = await raw('GET', path);
      expect(r.status, path).toBe(404);
      expect(r.text, path).not.toContain('import');
      expect(r.text, path).not.toContain('root:');
      expect(r.text, path).not.toContain('"name": "cairn"');
    }
  });
});

describe('console file lookup', () => {
  it('finds the files from the compiled module as from the source, and serves only regular files of known types', async () => {
    const compiled = (await import(pathToFileURL(join(repoRoot, 'dist', 'control-plane', 'console', 'serve.js')).href)) as typeof import('../control-plane/console/serve.js');
    expect(compiled.staticRoot()).toBe(staticRoot());
    expect(staticRoot()).toBe(join(repoRoot, 'control-plane', 'console', 'static'));

    const root = sb.path('static-root');
    await mkdir(join(root, 'sub'), { recursive: true });
    await writeFile(join(root, 'index.html'), '<!doctype html><title>t</title>');
    await writeFile(join(root, 'sub', 'a.js'), 'export {};');
    await writeFile(join(root, 'notes.md'), 'not served');
    await writeFile(sb.path('outside.js'), 'secret');
    await symlink(sb.path('outside.js'), join(root, 'link.js'));
    const handle = compiled.createConsoleHandler(root);
    const server = createHttpServer((req, res) => {
      if (!handle(req, res)) res.writeHead(418).end('left for the API');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const get = async (path: string, method = 'GET'): Promise<[number, string]> => {
        const res = await fetch(base + path, { method });
        return [res.status, await res.text()];
      };
      expect(await get('/')).toEqual([200, '<!doctype html><title>t</title>']);
      expect(await get('/console/sub/a.js')).toEqual([200, 'export {};']);
      expect((await get('/console/notes.md'))[0]).toBe(404);
      expect((await get('/console/link.js'))[0]).toBe(404);
      expect(await get('/v1/agents')).toEqual([418, 'left for the API']);
      expect(await get('/consolex/a.js')).toEqual([418, 'left for the API']);
      expect(await get('/console/sub/a.js', 'DELETE')).toEqual([418, 'left for the API']);
    } finally {
      server.close();
    }
  });
});

describe('console in a browser', () => {
  it('refuses a wrong token with the API error, logs in with the right one, shows the dashboard, logs out', async () => {
    const { page, problems } = await newPage();
    await logIn(page, 'cairn-admin-wrong');
    await see(page.getByRole('alert'), 'UNAUTHENTICATED');
    await see(page.getByRole('alert'), 'valid admin token');
    expect(await page.evaluate(() => sessionStorage.getItem('cairn.adminToken'))).toBeNull();

    await page.getByLabel('Admin API token').fill(token);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('heading', { name: 'Dashboard', level: 1 }).waitFor();
    expect(page.url()).toMatch(/#\/dashboard$/);
    await page.getByRole('img', { name: /^Agents: 0 online, 0 offline, 0 revoked$/ }).waitFor();
    await page.getByRole('img', { name: /^Job results in the last 24 hours: 0 ok, 0 failed, 0 cancelled$/ }).waitFor();
    expect(await page.evaluate(() => sessionStorage.getItem('cairn.adminToken'))).toBe(token);

    // The token lives in this tab's session: a reload keeps it, logging out forgets it.
    await page.reload();
    await page.getByRole('heading', { name: 'Dashboard', level: 1 }).waitFor();

    // A token the API stops accepting logs the tab out, says why, and the next login returns to the page.
    // Token and navigation in one step: the dashboard's polling could otherwise meet the stale
    // token first and log out before the link is clicked.
    await page.evaluate(() => {
      sessionStorage.setItem('cairn.adminToken', 'cairn-admin-stale');
      location.hash = '#/vaults';
    });
    await see(page.getByRole('alert'), 'Logged out: UNAUTHENTICATED');
    await page.getByLabel('Admin API token').fill(token);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('heading', { name: 'Vaults', level: 1 }).waitFor();
    expect(page.url()).toMatch(/#\/vaults$/);
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.getByLabel('Admin API token').waitFor();
    expect(await page.evaluate(() => sessionStorage.getItem('cairn.adminToken'))).toBeNull();
    expect(await page.getByRole('navigation', { name: 'Sections' }).isHidden()).toBe(true);
    expect(problems).toEqual([]);

    // The browser enforces the CSP: an inline script does not run, and the refusal is reported.
    const inlineRan = await page.evaluate(() => {
      const script = document.createElement('script');
      script.textContent = 'window.inlineRan = true';
      document.body.append(script);
      return (window as unknown as { inlineRan?: boolean }).inlineRan === true;
    });
    expect(inlineRan).toBe(false);
    await expect.poll(() => problems.join('\n')).toContain('Content Security Policy');
    await page.close();
  });

  it('creates and edits a vault and a policy, binds and unbinds it, and shows API errors in the page', async () => {
    const { page, problems } = await newPage();
    await logIn(page);
    await page.getByRole('link', { name: 'Vaults' }).click();
    await page.getByRole('button', { name: 'New vault' }).click();
    await page.getByLabel('Vault name').fill('offsite');
    await page.getByLabel('Type').selectOption('disk');
    await page.getByLabel('Location').fill('s3://backups/offsite');
    await page.getByLabel('Capacity (GiB)').fill('2');
    await page.getByRole('button', { name: 'Create vault' }).click();
    await see(page.getByRole('status'), 'Vault offsite created.');
    await page.getByRole('cell', { name: 'offsite', exact: true }).waitFor();
    expect((await apiCall('GET', '/v1/vaults')).vaults).toEqual([
      expect.objectContaining({ name: 'offsite', type: 'disk', location: 's3://backups/offsite', capacityBytes: 2 * 1024 ** 3 }),
    ]);

    // A location with credentials is refused by the API, and the page says so.
    await page.getByRole('button', { name: 'Edit vault offsite' }).click();
    expect(await page.getByLabel('Vault name').inputValue()).toBe('offsite');
    await page.getByLabel('Location').fill('s3://key:secret@backups/offsite');
    await page.getByRole('button', { name: 'Save vault' }).click();
    await see(page.getByRole('alert'), 'USAGE');
    await page.getByLabel('Location').fill('s3://backups/offsite2');
    await page.getByRole('button', { name: 'Save vault' }).click();
    await see(page.getByRole('status'), 'Vault offsite saved.');
    await page.getByRole('cell', { name: 's3://backups/offsite2' }).waitFor();
    await page.screenshot({ path: screenshotPath('console-vaults.png'), fullPage: true });

    await page.getByRole('link', { name: 'Policies' }).click();
    await page.getByRole('button', { name: 'New policy' }).click();
    await page.getByLabel('Policy name').fill('nightly');
    await page.getByLabel('Trigger patterns').fill('FREQ=DAILY;BYHOUR=02;BYMINUTE=00');
    await page.getByLabel('Time zone', { exact: true }).fill('Europe/Berlin');
    await page.getByLabel('Keep at most (backups)').fill('7');
    await page.getByRole('button', { name: 'Create policy' }).click();
    await see(page.getByRole('status'), 'Policy nightly created.');
    expect((await apiCall('GET', '/v1/policies/nightly')).policy).toEqual({
      name: 'nightly',
      enabled: true,
      trigger: { patterns: ['FREQ=DAILY;BYHOUR=02;BYMINUTE=00'], timezone: 'Europe/Berlin' },
      retention: { max_backups: 7 },
      vaults: [],
    });

    // A taken name: the API's 409 shows in the page.
    await page.getByRole('button', { name: 'New policy' }).click();
    await page.getByLabel('Policy name').fill('nightly');
    await page.getByLabel('Cron expression').fill('0 3 * * *');
    await page.getByRole('button', { name: 'Create policy' }).click();
    await see(page.getByRole('alert'), 'ALREADY_EXISTS');
    await page.getByRole('button', { name: 'Cancel' }).click();

    await page.getByRole('button', { name: 'Edit policy nightly' }).click();
    await page.getByLabel('Trigger patterns').fill('');
    await page.getByLabel('Cron expression').fill('30 1 * * *');
    await page.getByLabel('Keep at most (backups)').fill('');
    await page.getByLabel('Daily backups kept').fill('7');
    await page.getByLabel('Weekly backups kept').fill('4');
    await page.getByRole('button', { name: 'Save policy' }).click();
    await see(page.getByRole('status'), 'Policy nightly saved.');
    expect((await apiCall('GET', '/v1/policies/nightly')).policy).toMatchObject({
      trigger: { cron: '30 1 * * *', timezone: 'Europe/Berlin' },
      retention: { day_backups: 7, week_backups: 4 },
    });

    await page.getByLabel('Vault to bind policy nightly to').selectOption('offsite');
    await page.getByRole('button', { name: 'Bind policy nightly' }).click();
    await see(page.getByRole('status'), 'Policy nightly bound to vault offsite.');
    expect((await apiCall('GET', '/v1/policies/nightly')).policy.vaults).toEqual(['offsite']);
    await page.screenshot({ path: screenshotPath('console-policies.png'), fullPage: true });
    await page.getByRole('button', { name: 'Unbind policy nightly from vault offsite' }).click();
    await see(page.getByRole('status'), 'Policy nightly unbound from vault offsite.');
    expect((await apiCall('GET', '/v1/policies/nightly')).policy.vaults).toEqual([]);

    page.once('dialog', (d) => void d.accept());
    await page.getByRole('button', { name: 'Delete policy nightly' }).click();
    await see(page.getByRole('status'), 'Policy nightly deleted.');
    expect((await apiCall('GET', '/v1/policies')).policies).toEqual([]);

    // An enrollment token, with the command that uses it.
    await page.getByRole('link', { name: 'Agents' }).click();
    await page.getByRole('cell', { name: 'No agents enrolled yet.' }).waitFor();
    await page.getByLabel('Token valid for (hours)').fill('2');
    await page.getByRole('button', { name: 'Create enrollment token' }).click();
    await see(page.getByLabel('Enrollment command'), /^cairn agent enroll \S+ --config /);

    // Names are text, never markup.
    await apiCall('PUT', `/v1/vaults/${encodeURIComponent('<i>x</i>')}`, { type: 'server', location: '/srv/x', capacityBytes: null });
    // The dashboard draws the vault's usage against its capacity.
    await page.getByRole('link', { name: 'Dashboard' }).click();
    await page.getByRole('img', { name: /^Vault <i>x<\/i>: 0 B used of no capacity limit/ }).waitFor();
    expect(await page.locator('main i').count()).toBe(0);
    await page.getByRole('img', { name: /^Vault offsite: 0 B used of 2\.00 GiB capacity \(0 %\)/ }).waitFor();
    await page.screenshot({ path: screenshotPath('console-dashboard.png'), fullPage: true });
    expect(problems).toEqual([]);
    await page.close();
  });
});

describe('acceptance: policy, binding and a one-off backup through the console', () => {
  // The two tests share the agent and the backup the first one makes.
  let agent: ChildProcess | undefined;
  let agentLog = '';

  afterAll(() => {
    if (agent && agent.exitCode === null) agent.kill('SIGKILL');
  });

  const logs = (): string => `agent output:\n${agentLog}\ncontrol plane log:\n${serverLog.join('\n')}`;

  const waitFor = <T,>(what: string, check: () => Promise<T | undefined>, timeoutMs: number): Promise<T> => waitForValue(what, check, timeoutMs, logs, 100);

  it('logs in, creates a policy, binds it to a vault, triggers a backup and sees it finish in the backups list', async () => {
    // A real agent, enrolled with a token from the API, with one resource (a disk image) in vault "main".
    const vaultPath = await sb.initVault('vault');
    await writeFile(sb.path('vault.pass'), PASSPHRASE + '\n');
    await makeImage(sb.path('disk.img'), [
      { kind: 'random', length: 6 * MiB },
      { kind: 'hole', length: 2 * MiB },
    ]);
    const configPath = sb.path('agent.json');
    await writeFile(
      configPath,
      JSON.stringify({
        stateDir: 'agent-state',
        logDir: 'agent-log',
        status: { port: await unusedPort() },
        vaults: { main: { url: vaultPath, passphraseFile: 'vault.pass' } },
        resources: { web: { vault: 'main', disks: [sb.path('disk.img')] } },
      }),
    );
    const { token: enrollment } = await apiCall('POST', '/v1/enrollment-tokens', { ttlSeconds: 600 });
    const enrolled = await sb.cairn(['agent', 'enroll', enrollment, '--config', configPath]);
    expect(enrolled.code, enrolled.stdout + enrolled.stderr).toBe(0);
    agent = spawn(process.execPath, [cliPath, 'agent', 'run', '--config', configPath], {
      cwd: sb.dir,
      env: { ...process.env, CAIRN_PASSPHRASE: undefined, JOURNAL_STREAM: undefined, INVOCATION_ID: undefined },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    agent.stdout!.on('data', (d: Buffer) => (agentLog += d.toString()));
    agent.stderr!.on('data', (d: Buffer) => (agentLog += d.toString()));
    await apiCall('PUT', '/v1/vaults/main', { type: 'server', location: vaultPath, capacityBytes: 64 * MiB });

    await waitFor('the agent online', async () => ((await apiCall('GET', '/v1/agents')).agents[0]?.status === 'online' ? true : undefined), 15_000);

    const { page, problems } = await newPage();
    await logIn(page);
    await page.getByRole('img', { name: /^Agents: 1 online, 0 offline, 0 revoked$/ }).waitFor();

    await page.getByRole('link', { name: 'Policies' }).click();
    await page.getByRole('button', { name: 'New policy' }).click();
    await page.getByLabel('Policy name').fill('weekly');
    await page.getByLabel('Trigger patterns').fill('FREQ=WEEKLY;BYDAY=SU;BYHOUR=03;BYMINUTE=00');
    await page.getByLabel('Time zone', { exact: true }).fill('UTC');
    await page.getByLabel('Keep at most (backups)').fill('5');
    await page.getByRole('button', { name: 'Create policy' }).click();
    await see(page.getByRole('status'), 'Policy weekly created.');
    await page.getByLabel('Vault to bind policy weekly to').selectOption('main');
    await page.getByRole('button', { name: 'Bind policy weekly' }).click();
    await see(page.getByRole('status'), 'Policy weekly bound to vault main.');

    await page.getByRole('link', { name: 'Vaults' }).click();
    await page.getByRole('button', { name: 'Back up vault main now' }).click();
    await see(page.getByRole('status'), 'Backup of vault main requested: 1 command(s)');

    await page.getByRole('link', { name: 'Backups' }).click();
    await page.getByLabel('Vault').selectOption('main');
    await page.getByRole('button', { name: 'Apply filters' }).click();
    const row = page.getByRole('row').filter({ hasText: /manualbk_[a-z0-9]+/ });
    await row.waitFor({ timeout: 30_000 }).catch((err: Error) => {
      throw new Error(`${err.message}\n${logs()}`);
    });
    await see(row, 'web');
    await see(row, 'available');
    await page.screenshot({ path: screenshotPath('console-backups.png'), fullPage: true });

    const { backups } = await apiCall('GET', '/v1/backups?vault=main');
    expect(backups).toHaveLength(1);
    expect(backups[0]).toMatchObject({ vault: 'main', resource: 'web', status: 'available' });
    expect(backups[0].name).toMatch(/^manualbk_/);

    const name: string = backups[0].name;
    await page.getByRole('link', { name: 'Jobs' }).click();
    await page.getByRole('cell', { name: `backup ${name}` }).waitFor();
    await page.getByRole('link', { name: 'Dashboard' }).click();
    await page.getByRole('img', { name: /^Job results in the last 24 hours: 1 ok, 0 failed, 0 cancelled$/ }).waitFor();
    await page.getByRole('img', { name: /^Vault main: 6\.\d\d MiB used of 64\.0 MiB capacity/ }).waitFor();
    await page.screenshot({ path: screenshotPath('console-dashboard-after-backup.png'), fullPage: true });
  });

  it('restores that backup through the dialog, follows it under Jobs, then deletes the backup', async () => {
    const [backup] = (await apiCall('GET', '/v1/backups?vault=main')).backups;
    expect(backup, 'the backup of the test before').toBeDefined();
    const { page, problems } = await newPage();
    await logIn(page);
    await page.getByRole('link', { name: 'Backups' }).click();
    await page.getByRole('button', { name: `Restore backup ${backup.name}` }).click();
    const dialog = page.getByRole('dialog');
    const target = sb.path('restored.img');
    await dialog.getByLabel('Restore target').fill(target);
    await page.screenshot({ path: screenshotPath('console-restore.png') });
    await dialog.getByRole('button', { name: 'Start restore' }).click();
    await see(page.getByRole('status'), `Restore of ${backup.name} to ${target} requested`);
    await page.getByRole('link', { name: 'Jobs' }).click();
    const restoreRow = page.getByRole('row').filter({ hasText: 'restore' });
    await restoreRow.getByRole('cell', { name: 'ok', exact: true }).waitFor({ timeout: 30_000 }).catch((err: Error) => {
      throw new Error(`${err.message}\n${logs()}`);
    });
    await page.screenshot({ path: screenshotPath('console-jobs.png'), fullPage: true });
    expect((await readFile(target)).equals(await readFile(sb.path('disk.img'))), 'the restored image is the original').toBe(true);

    await page.getByRole('link', { name: 'Backups' }).click();
    page.once('dialog', (d) => void d.accept());
    await page.getByRole('button', { name: `Delete backup ${backup.name}` }).click();
    await see(page.getByRole('status'), `Deletion of backup ${backup.name} requested`);
    // The list polls: the backup leaves the list of available ones once the agent has deleted it.
    await page.getByRole('cell', { name: 'No backups match.' }).waitFor({ timeout: 30_000 });
    expect((await apiCall('GET', `/v1/backups/${backup.id}`)).backup.status).toBe('deleted');

    // The agents page shows it online with the policy version it acknowledged; revoking it ends that.
    const { policyVersion } = await apiCall('GET', '/v1/policies');
    const [enrolled] = (await apiCall('GET', '/v1/agents')).agents;
    await page.getByRole('link', { name: 'Agents' }).click();
    const agentRow = page.getByRole('row').filter({ hasText: enrolled.agentId });
    await agentRow.getByRole('cell', { name: 'online', exact: true }).waitFor();
    await agentRow.getByRole('cell', { name: String(policyVersion), exact: true }).waitFor();
    await see(agentRow, / CPUs · /);
    await page.screenshot({ path: screenshotPath('console-agents.png'), fullPage: true });
    page.once('dialog', (d) => void d.accept());
    await agentRow.getByRole('button', { name: `Revoke ${enrolled.hostname} (${enrolled.agentId})` }).click();
    await see(page.getByRole('status'), `Agent ${enrolled.hostname} revoked.`);
    await agentRow.getByRole('cell', { name: 'revoked', exact: true }).waitFor();
    expect((await apiCall('GET', `/v1/agents/${enrolled.agentId}`)).agent.revokedAt).not.toBeNull();
    expect(problems).toEqual([]);
    await page.close();
  });
});

// The development sign-in (auth.dev_login): a session cookie written as an Express app would,
// and a token from the development endpoint; off by default, and refused by check-config in a
// configuration that looks like production.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { context, feedIds, launch, screenshot, status } from '../support/browser.mjs';
import { binary, eventually, startServer } from '../support/server.mjs';

describe('development sign-in in Chromium', () => {
  let server;
  let browser;
  const outside = [];
  before(async () => {
    server = await startServer({ services: true, devLogin: true });
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    await server?.close();
    assert.deepEqual(outside, [], 'no request left the machine');
  });

  test('signs in with a session cookie: a session row and a signed connect.sid, used by the WebSocket', async () => {
    const ctx = await context(browser, outside);
    const page = await ctx.newPage();
    await page.goto(`${server.httpUrl}/app/`);
    await page.getByTestId('dev-user').fill('kim');
    await page.getByTestId('dev-cookie').click();
    await status(page, 'connected');
    await page.getByTestId('user').filter({ hasText: 'kim' }).waitFor();
    const cookie = (await ctx.cookies()).find((c) => c.name === 'connect.sid');
    assert.ok(cookie?.httpOnly, 'an HttpOnly connect.sid');
    assert.match(decodeURIComponent(cookie.value), /^s:[A-Za-z0-9_-]+\.[A-Za-z0-9+/]+$/);
    assert.equal(await page.evaluate(() => localStorage.getItem('palisade.token')), null, 'no token involved');
    const id = (await server.publish('user:kim', 'cookie-event', {})).id;
    await eventually(async () => (await feedIds(page)).includes(id), 10_000, 'the event');
    await page.reload();
    await status(page, 'connected');
    await screenshot(page, 'cookie-sign-in');
    await ctx.close();
  });

  test('when the session is logged out elsewhere the app says so and asks to sign in again', async () => {
    const ctx = await context(browser, outside);
    const page = await ctx.newPage();
    await page.goto(`${server.httpUrl}/app/`);
    await page.getByTestId('dev-user').fill('max');
    await page.getByTestId('dev-cookie').click();
    await status(page, 'connected');
    // What the Express app's logout does: the row goes. Palisade re-checks every second here.
    execFileSync('psql', [server.databaseUrl, '-qc', `DELETE FROM session WHERE sess::jsonb #>> '{passport,user}' = 'max'`]);
    await status(page, 'disconnected', 15_000);
    await page.getByTestId('connection-message').filter({ hasText: 'Your session ended' }).waitFor();
    await page.getByTestId('sign-in').waitFor();
    await screenshot(page, 'session-expired');
    await ctx.close();
  });

  test('signs in with a token from the development endpoint, kept in localStorage', async () => {
    const ctx = await context(browser, outside);
    const page = await ctx.newPage();
    await page.goto(`${server.httpUrl}/app/`);
    await page.getByTestId('dev-user').fill('lee');
    await page.getByTestId('dev-token').click();
    await status(page, 'connected');
    await page.locator('[data-testid="presence"] [data-user-id="lee"]').waitFor();
    assert.match(await page.evaluate(() => localStorage.getItem('palisade.token')), /^eyJ/);
    await ctx.close();
  });

  test('is off by default: the development endpoints answer 404', async () => {
    const plain = await startServer();
    try {
      for (const [method, path] of [['GET', '/auth/dev'], ['POST', '/auth/dev-token'], ['POST', '/auth/dev-login']]) {
        const r = await fetch(`${plain.httpUrl}${path}`, { method, headers: { 'content-type': 'application/json' }, body: method === 'POST' ? '{"user":"x"}' : undefined });
        assert.equal(r.status, 404, path);
      }
    } finally {
      await plain.close();
    }
  });

  test('check-config refuses it with TLS or a separate admin listener', () => {
    const dir = mkdtempSync(join(tmpdir(), 'palisade-devlogin-'));
    const refused = (yaml) => {
      const file = join(dir, 'hardening.yaml');
      writeFileSync(file, yaml);
      try {
        execFileSync(binary, ['check-config', file], { stdio: 'pipe' });
        return null;
      } catch (error) {
        return String(error.stderr);
      }
    };
    assert.equal(refused('auth: { dev_login: true }\n'), null, 'fine on its own');
    assert.match(refused('server: { admin_listen: 127.0.0.1:9999 }\nauth: { dev_login: true }\n'), /auth\.dev_login/);
    assert.match(refused('server: { tls: { cert: c.pem, key: k.pem } }\nauth: { dev_login: true }\n'), /auth\.dev_login/);
  });
});

// The app in Chromium against the real Palisade, with PostgreSQL and Redis: what a person sees
// when signing in, receiving events, flooding, losing the server, and chatting with others.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { context, feedIds, launch, screenshot, signIn, status, xadd } from '../support/browser.mjs';
import { eventually, startServer, token } from '../support/server.mjs';

describe('the web app in Chromium', () => {
  let server;
  let browser;
  const outside = [];
  const conversation = randomUUID();
  const jwt = (sub, ttl) => token(sub, { conversations: [conversation] }, ttl);

  before(async () => {
    server = await startServer({ services: true, rateLimit: 20, replayLimit: 5 });
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    await server?.close();
    assert.deepEqual(outside, [], 'no request left the machine');
  });

  test('signs in with a pasted JWT, keeps it in localStorage and starts signed in after a reload', async () => {
    const ctx = await context(browser, outside);
    const ann = jwt('ann');
    const page = await signIn(ctx, server, ann);
    await page.getByTestId('user').filter({ hasText: 'ann' }).waitFor();
    assert.equal(await page.evaluate(() => localStorage.getItem('palisade.token')), ann);
    await page.reload();
    await status(page, 'connected');
    assert.equal(await page.getByTestId('sign-in').count(), 0, 'no sign-in form when a token is stored');
    await screenshot(page, 'signed-in');
    await ctx.close();
  });

  test('a refused token shows disconnected with the reason and asks to sign in again', async () => {
    const ctx = await context(browser, outside);
    const page = await ctx.newPage();
    await page.goto(`${server.httpUrl}/app/`);
    const forged = `${jwt('eve').split('.').slice(0, 2).join('.')}.AAAA`;
    await page.getByTestId('token-input').fill(forged);
    await page.getByTestId('sign-in-submit').click();
    await status(page, 'disconnected');
    await page.getByTestId('connection-message').filter({ hasText: 'refused your credentials' }).waitFor();
    await page.getByTestId('sign-in').waitFor();
    assert.equal(await page.evaluate(() => localStorage.getItem('palisade.token')), null);
    await screenshot(page, 'refused');
    await ctx.close();
  });

  test('published events appear in the feed, in order', async () => {
    const ctx = await context(browser, outside);
    const page = await signIn(ctx, server, jwt('ben'));
    await page.locator('[data-testid="presence"] [data-user-id="ben"]').waitFor();
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push((await server.publish('user:ben', 'invoice.paid', { invoice: i })).id);
    await eventually(async () => (await feedIds(page)).length === 3, 10_000, 'three events');
    assert.deepEqual(await feedIds(page), ids);
    await screenshot(page, 'feed');
    await ctx.close();
  });

  test('flooding shows the warning toast, then the cut-off banner, then recovers', async () => {
    const ctx = await context(browser, outside);
    const page = await signIn(ctx, server, jwt('cid'));
    await page.locator('[data-testid="presence"] [data-user-id="cid"]').waitFor();
    const before = (await server.publish('user:cid', 'before', {})).id;
    await eventually(async () => (await feedIds(page)).includes(before), 10_000, 'the first event');
    for (let i = 0; i < 25; i++) await page.getByTestId('server-info').click();
    const toast = page.getByTestId('rate-limit-toast');
    await toast.filter({ hasText: /of 20 operations in 60 s/ }).waitFor();
    await page.getByTestId('cut-banner').filter({ hasText: '4420' }).waitFor();
    await screenshot(page, 'flood-cut');
    assert.equal(await toast.count(), 1, 'one toast, updated in place');
    await status(page, 'connected');
    await page.getByTestId('cut-banner').filter({ hasText: 'back with a fresh budget' }).waitFor();
    const afterCut = (await server.publish('user:cid', 'after', {})).id;
    await eventually(async () => (await feedIds(page)).includes(afterCut), 10_000, 'an event after the cut');
    assert.deepEqual(await feedIds(page), [before, afterCut], 'resumed without a duplicate');
    await screenshot(page, 'flood-recovered');
    await ctx.close();
  });

  test('stopping and restarting the server shows reconnecting, then connected, with no missed and no duplicated event', async () => {
    const ctx = await context(browser, outside);
    const page = await signIn(ctx, server, jwt('dee'));
    await page.locator('[data-testid="presence"] [data-user-id="dee"]').waitFor();
    const ids = [];
    for (let i = 0; i < 2; i++) ids.push((await server.publish('user:dee', 'before', { i })).id);
    await eventually(async () => (await feedIds(page)).length === 2, 10_000, 'the first events');
    await server.stop();
    await status(page, /^reconnecting \d+$/);
    await screenshot(page, 'server-down');
    // Published while no Palisade is running: a backend writing to the stream directly.
    for (let i = 0; i < 2; i++) ids.push(xadd(server, 'user:dee', 'while-down', { i }));
    await server.start();
    await status(page, 'connected', 30_000);
    ids.push((await server.publish('user:dee', 'after', {})).id);
    await eventually(async () => (await feedIds(page)).length >= 5, 10_000, 'every event');
    await new Promise((ok) => setTimeout(ok, 300));
    assert.deepEqual(await feedIds(page), ids);
    await screenshot(page, 'server-back');
    await ctx.close();
  });

  test('a resume that cannot be replayed in full shows a GAP and says so', async () => {
    const ctx = await context(browser, outside);
    const page = await signIn(ctx, server, jwt('gus'));
    // The feed subscribes once the app knows who it is (after its `me` query): an event
    // published before that is not the feed's to show.
    await page.locator('[data-testid="presence"] [data-user-id="gus"]').waitFor();
    const first = (await server.publish('user:gus', 'before', {})).id;
    await eventually(async () => (await feedIds(page)).includes(first), 10_000, 'the first event');
    await server.stop();
    await status(page, /^reconnecting \d+$/);
    for (let i = 0; i < 8; i++) xadd(server, 'user:gus', 'missed', { i });
    await server.start();
    await status(page, 'connected', 30_000);
    await page.getByTestId('gap-notice').filter({ hasText: 'missed' }).waitFor();
    await page.locator('[data-testid="event-feed"] .gap-marker').waitFor();
    await screenshot(page, 'gap');
    await ctx.close();
  });

  test('the presence list updates when a second browser context joins and leaves', async () => {
    const first = await context(browser, outside);
    const page = await signIn(first, server, jwt('eli'));
    await page.locator('[data-testid="presence"] [data-user-id="eli"]').waitFor();
    const second = await context(browser, outside);
    await signIn(second, server, jwt('fay'));
    await page.locator('[data-testid="presence"] [data-user-id="fay"]').waitFor();
    await screenshot(page, 'presence');
    await second.close();
    await page.locator('[data-testid="presence"] [data-user-id="fay"]').waitFor({ state: 'detached' });
    await first.close();
  });

  test('the conversation sends with sendMessage and shows validation errors next to the field', async () => {
    const ctx = await context(browser, outside);
    const page = await signIn(ctx, server, jwt('hal'));
    await page.locator('[data-testid="presence"] [data-user-id="hal"]').waitFor();
    await page.getByTestId('message-input').fill('hello from the browser');
    await page.getByTestId('send-message').click();
    await page.locator('[data-testid="messages"] li').filter({ hasText: 'hello from the browser' }).waitFor();
    await page.getByTestId('message-input').fill('');
    await page.getByTestId('send-message').click();
    await page.getByTestId('content-error').waitFor();
    assert.ok((await page.getByTestId('content-error').textContent()).length > 0);
    await screenshot(page, 'conversation');
    await ctx.close();
  });

  test('on TOKEN_EXPIRING the app refreshes the token over the live connection and keeps its subscriptions', async () => {
    const ctx = await context(browser, outside);
    // Expires in 65 s; the server warns 60 s before.
    const page = await signIn(ctx, server, jwt('ivy', 65));
    const input = page.getByTestId('refresh-token-input');
    await input.waitFor({ timeout: 20_000 });
    const fresh = jwt('ivy', 3600);
    await input.fill(fresh);
    await page.getByTestId('refresh-token').click();
    await page.getByTestId('auth-notice').filter({ hasText: 'Token refreshed over the live connection' }).waitFor();
    const id = (await server.publish('user:ivy', 'still-here', {})).id;
    await eventually(async () => (await feedIds(page)).includes(id), 10_000, 'an event after the refresh');
    assert.equal(page.sockets.length, 1, 'the same socket throughout');
    assert.equal(await page.evaluate(() => localStorage.getItem('palisade.token')), fresh, 'the refreshed token is kept');
    await screenshot(page, 'refreshed');
    await ctx.close();
  });

  test('the Apollo page receives the same events as the urql page', async () => {
    const ctx = await context(browser, outside);
    const urql = await signIn(ctx, server, jwt('jo'));
    const apollo = await ctx.newPage();
    await apollo.goto(`${server.httpUrl}/app/apollo.html`);
    await status(apollo, 'connected');
    await apollo.getByText('on Apollo Client').waitFor();
    await apollo.locator('[data-testid="presence"] [data-user-id="jo"]').waitFor();
    await urql.locator('[data-testid="presence"] [data-user-id="jo"]').waitFor();
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push((await server.publish('user:jo', 'shared', { i })).id);
    await eventually(async () => (await feedIds(apollo)).length === 3 && (await feedIds(urql)).length === 3, 10_000, 'both feeds');
    assert.deepEqual(await feedIds(apollo), ids);
    assert.deepEqual(await feedIds(urql), ids);
    await screenshot(apollo, 'apollo');
    await ctx.close();
  });
});

// GraphiQL on first load: on the development-only secret it opens with the printed token in its
// Headers tab and the schema loaded, and a subscription receives a published event; with a real
// secret the Headers tab stays empty. Nothing the page loads comes from outside the machine.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { context, launch, screenshot } from '../support/browser.mjs';
import { eventually, startServer } from '../support/server.mjs';

describe('GraphiQL in Chromium', () => {
  let browser;
  const outside = [];
  before(async () => {
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    assert.deepEqual(outside, [], 'no request left the machine');
  });

  async function open(server) {
    const ctx = await context(browser, outside);
    const page = await ctx.newPage();
    const introspections = [];
    page.on('response', async (response) => {
      if (response.request().method() === 'POST' && (response.request().postData() ?? '').includes('__schema')) {
        introspections.push({ status: response.status(), body: await response.text().catch(() => '') });
      }
    });
    await page.goto(`${server.httpUrl}/graphql`);
    await page.locator('.graphiql-container').waitFor();
    return { ctx, page, introspections };
  }

  test('on the development secret it opens with the printed token, loads the schema and receives a subscription', async () => {
    const server = await startServer({ devSecret: true });
    try {
      const printed = /"Authorization": "Bearer ([^"]+)"/.exec(server.log())?.[1];
      assert.ok(printed, 'the server printed a development token');
      const { ctx, page, introspections } = await open(server);
      await eventually(() => introspections.length > 0, 10_000, 'the schema request');
      assert.equal(introspections[0].status, 200);
      assert.match(introspections[0].body, /"__schema"/);
      assert.doesNotMatch(introspections[0].body, /UNAUTHENTICATED/);
      const headers = await page.locator('.graphiql-editor-tool').innerText();
      assert.ok(headers.replace(/\s+/g, '').includes(`"Bearer${printed}"`.replace(/\s+/g, '')), `the Headers tab holds the printed token: ${headers}`);
      // The default document is the `user:dev` events subscription.
      await page.locator('.graphiql-execute-button').click();
      const published = await eventually(async () => {
        const event = await server.publish('user:dev', 'hello-graphiql', { msg: 'hi' });
        await new Promise((ok) => setTimeout(ok, 300));
        const result = await page.locator('.result-window').textContent();
        return result.includes(event.id) && event;
      }, 15_000, 'the event in the result pane');
      assert.ok(published);
      await screenshot(page, 'graphiql-dev');
      await ctx.close();
    } finally {
      await server.close();
    }
  });

  test('with a configured secret the Headers tab starts empty', async () => {
    const server = await startServer();
    try {
      const { ctx, page } = await open(server);
      const headers = await page.locator('.graphiql-editor-tool').innerText();
      assert.doesNotMatch(headers, /Bearer/, 'no token offered');
      assert.doesNotMatch(await page.content(), /Bearer eyJ/);
      await ctx.close();
    } finally {
      await server.close();
    }
  });
});

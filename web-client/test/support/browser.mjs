// Debian's Chromium driven by playwright-core: no browser is ever downloaded. Every request a
// page makes is recorded, so a test can prove nothing left the machine.

import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { repoRoot } from './server.mjs';

export const artifacts = join(repoRoot, 'web-client', 'test-results');

export async function launch() {
  mkdirSync(artifacts, { recursive: true });
  // playwright-core gives every launch a fresh temporary profile (user-data-dir).
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** A fresh context whose requests are checked against loopback. */
export async function context(browser, outside) {
  const ctx = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  ctx.on('request', (request) => {
    const url = new URL(request.url());
    if (url.protocol !== 'data:' && url.hostname !== '127.0.0.1') outside.push(request.url());
  });
  return ctx;
}

export async function screenshot(page, name) {
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
}

/** Opens a page of the app and signs in by pasting the token, as a person would. */
export async function signIn(ctx, server, jwt, path = '/app/') {
  const page = await ctx.newPage();
  const sockets = [];
  page.on('websocket', (ws) => sockets.push(ws));
  page.sockets = sockets;
  await page.goto(`${server.httpUrl}${path}`);
  await page.getByTestId('token-input').fill(jwt);
  await page.getByTestId('sign-in-submit').click();
  await status(page, 'connected');
  return page;
}

export async function status(page, text, timeout = 20_000) {
  const pattern = text instanceof RegExp ? text : new RegExp(`^${text}$`);
  await page.getByTestId('connection-status').filter({ hasText: pattern }).waitFor({ timeout });
}

export async function feedIds(page) {
  return page.$$eval('[data-testid="event-feed"] [data-event-id]', (items) => items.map((li) => li.dataset.eventId));
}

/** The shard stream of a topic (README: "Publishing with a plain XADD"). */
export function shardKey(prefix, topic, shards = 16) {
  let hash = 0x811c9dc5;
  for (const byte of Buffer.from(topic, 'utf8')) hash = Math.imul(hash ^ byte, 0x01000193) >>> 0;
  return `${prefix}:events:{${hash % shards}}`;
}

/** Writes an event straight into Redis, as a backend would while Palisade is down. */
export function xadd(server, topic, type, payload) {
  const url = new URL(server.redisUrl);
  const args = ['-h', url.hostname, '-p', url.port || '6379', 'XADD', shardKey(server.keyPrefix, topic), '*', 'topic', topic, 'type', type, 'payload', JSON.stringify(payload)];
  return execFileSync('redis-cli', args, { encoding: 'utf8' }).trim();
}

// One conformance suite, run against each npm client through a small adapter: connect,
// subscribe, receive, complete, a query on the same socket, auth rejection with its close code,
// and the rate-limit warning followed by a 4420 cut and the client's own reconnection.
//
// An adapter has `open({ url, token, reconnect, WebSocket })` returning a client, and
// `subscribe(client, query, variables, { next, error })` returning a stop function,
// `query(client, query)` (resolves to data or rejects), `close(client)`, and
// `closeCode(error)` (the close code the client surfaced in an error, if any).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { eventually, startServer, token } from './server.mjs';

/** A WebSocket class that records every socket, message sent and close, for assertions. */
export function recording() {
  const sockets = [];
  const sent = [];
  const closes = [];
  const received = [];
  class Recording extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
      this.addEventListener('message', (e) => received.push(JSON.parse(String(e.data))));
      this.addEventListener('close', (e) => closes.push({ code: e.code, reason: e.reason }));
    }
    send(data, ...rest) {
      sent.push(JSON.parse(String(data)));
      return super.send(data, ...rest);
    }
  }
  return { Recording, sockets, sent, received, closes };
}

const EVENTS = 'subscription($topic: String!, $after: ID) { events(topic: $topic, after: $after) { id type payload } }';
const WARNINGS = 'subscription { rateLimitWarning { current limit windowSeconds retryAfterSeconds final } }';

export function conformance(name, adapter) {
  describe(`${name} against Palisade`, () => {
    let server;
    let limited;
    before(async () => {
      server = await startServer();
      limited = await startServer({ rateLimit: 6 });
    });
    after(async () => {
      await server?.close();
      await limited?.close();
    });

    test('subscribes, receives published events in order, and completes the subscription', { timeout: 60_000 }, async () => {
      const ws = recording();
      const client = adapter.open({ url: server.wsUrl, token: token('alice'), reconnect: false, WebSocket: ws.Recording });
      try {
        // Subscribing after a known event makes delivery independent of when the server
        // registers the subscription: what is published meanwhile is replayed.
        // A second subscription holds the socket, as an app's would: lazy clients close an idle one.
        const holdStop = adapter.subscribe(client, 'subscription { connectionNotices { kind } }', {}, { next: () => {}, error: () => {} });
        const first = await server.publish('user:alice', 'start', {});
        const got = [];
        const stop = adapter.subscribe(client, EVENTS, { topic: 'user:alice', after: first.id }, { next: (d) => got.push(d.events), error: (e) => got.push(e) });
        const published = [];
        for (let i = 0; i < 3; i++) published.push(await server.publish('user:alice', 'tick', { i }));
        await eventually(() => got.length >= 3, 10_000, 'three events');
        assert.deepEqual(got.map((e) => e.id), published.map((p) => p.id));
        assert.deepEqual(got.map((e) => e.payload.i), [0, 1, 2]);
        stop();
        await eventually(() => ws.sent.some((m) => m.type === 'complete' || m.type === 'stop'), 5_000, 'the client to complete');
        await server.publish('user:alice', 'late', {});
        await new Promise((ok) => setTimeout(ok, 300));
        assert.equal(got.length, 3, 'nothing arrives after completing');
        assert.equal(ws.closes.length, 0, 'completing a subscription keeps the socket open');
        holdStop();
      } finally {
        adapter.close(client);
      }
    });

    test('runs a query over the same socket as its subscription', { timeout: 60_000 }, async () => {
      const ws = recording();
      const client = adapter.open({ url: server.wsUrl, token: token('bob'), reconnect: false, WebSocket: ws.Recording });
      try {
        const got = [];
        const stop = adapter.subscribe(client, EVENTS, { topic: 'user:bob', after: null }, { next: (d) => got.push(d), error: (e) => got.push(e) });
        const data = await adapter.query(client, '{ me { id } serverInfo { version } }');
        assert.equal(data.me.id, 'bob');
        assert.ok(data.serverInfo.version);
        assert.equal(ws.sockets.length, 1, 'one socket carried both');
        stop();
      } finally {
        adapter.close(client);
      }
    });

    test('a token signed with another secret is refused and the client surfaces close code 4403', { timeout: 60_000 }, async () => {
      const ws = recording();
      const forged = `${token('mallory').split('.').slice(0, 2).join('.')}.${Buffer.from('not the signature').toString('base64url')}`;
      const client = adapter.open({ url: server.wsUrl, token: forged, reconnect: false, WebSocket: ws.Recording });
      try {
        const errors = [];
        adapter.subscribe(client, EVENTS, { topic: 'user:mallory', after: null }, { next: () => {}, error: (e) => errors.push(e) });
        await eventually(() => errors.length > 0 && ws.closes.length > 0, 10_000, 'the refusal');
        assert.deepEqual(ws.closes[0], { code: 4403, reason: 'Forbidden' });
        assert.equal(adapter.closeCode(errors[0]), 4403);
      } finally {
        adapter.close(client);
      }
    });

    test('warns as the budget runs out, is cut with 4420, and reconnects by itself with its subscriptions', { timeout: 60_000 }, async () => {
      const ws = recording();
      const client = adapter.open({ url: limited.wsUrl, token: token('carol'), reconnect: true, WebSocket: ws.Recording });
      try {
        const warnings = [];
        const events = [];
        const errors = [];
        adapter.subscribe(client, WARNINGS, {}, { next: (d) => warnings.push(d.rateLimitWarning), error: (e) => errors.push(['warnings', e]) });
        const first = await limited.publish('user:carol', 'start', {});
        adapter.subscribe(client, EVENTS, { topic: 'user:carol', after: first.id }, { next: (d) => events.push(d.events), error: (e) => errors.push(['events', e]) });
        // Two subscriptions and these queries: the sixth operation reaches the warning
        // threshold (ceil(0.8 × 6) = 5), the seventh exceeds the limit.
        for (let i = 0; i < 20 && !ws.closes.some((c) => c.code === 4420); i++) {
          // A query caught by the cut may be re-sent on the next socket, or be lost with it.
          // Each query distinct: urql and Apollo share identical operations by key.
          const query = `{ serverInfo { version } n${i}: __typename }`;
          await Promise.race([adapter.query(client, query).catch(() => {}), new Promise((ok) => setTimeout(ok, 2_000))]);
        }
        await eventually(() => ws.closes.some((c) => c.code === 4420), 5_000, 'the 4420 cut');
        assert.ok(warnings.some((w) => !w.final && w.limit === 6 && w.current >= 5), `a warning before the cut: ${JSON.stringify(warnings)}`);
        assert.ok(warnings.some((w) => w.final), 'a final warning with the cut');
        await eventually(() => ws.sockets.length >= 2 && ws.sockets.at(-1).readyState === WebSocket.OPEN, 20_000, () => `the reconnection (closes so far: ${JSON.stringify(ws.closes)}, sockets: ${ws.sockets.length}, errors: ${JSON.stringify(errors)}, sent: ${JSON.stringify(ws.sent.map((m) => [m.type, m.id?.slice(0, 4)]))}, received: ${JSON.stringify(ws.received.map((m) => [m.type, m.id?.slice(0, 4)]))})`);
        const live = await eventually(async () => {
          const e = await limited.publish('user:carol', 'after-cut', {});
          await new Promise((ok) => setTimeout(ok, 200));
          return events.some((x) => x.id === e.id) && e;
        }, 20_000, 'an event on the resubscribed feed');
        assert.ok(live);
        const data = await adapter.query(client, '{ me { id } }');
        assert.equal(data.me.id, 'carol', 'the new connection has a fresh budget');
      } finally {
        adapter.close(client);
      }
    });
  });
}

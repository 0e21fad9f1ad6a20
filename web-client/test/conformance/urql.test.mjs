// @urql/core with subscriptionExchange over the graphql-ws client, every operation on the socket.
import { Client, subscriptionExchange } from '@urql/core';
import { createClient } from 'graphql-ws';
import { conformance } from '../support/conformance.mjs';

conformance('@urql/core subscriptionExchange', {
  open({ url, token, reconnect, WebSocket }) {
    const ws = createClient({
      url,
      // As in the app: eager, so the socket's life does not hang on graphql-ws counting urql's
      // operations. With the default (lazy) client, a flood of urql queries cut by 4420 sometimes
      // left the new socket closed by the client (1000) right after it resubscribed.
      lazy: false,
      webSocketImpl: WebSocket,
      connectionParams: { authorization: `Bearer ${token}` },
      retryAttempts: reconnect ? 5 : 0,
      retryWait: () => new Promise((ok) => setTimeout(ok, 300)),
    });
    const client = new Client({
      url: url.replace(/^ws/, 'http'),
      exchanges: [
        subscriptionExchange({
          enableAllOperations: true,
          forwardSubscription(request) {
            const input = { ...request, query: request.query ?? '' };
            return { subscribe: (sink) => ({ unsubscribe: ws.subscribe(input, sink) }) };
          },
        }),
      ],
    });
    client.ws = ws;
    return client;
  },
  subscribe(client, query, variables, { next, error }) {
    const { unsubscribe } = client.subscription(query, variables).subscribe((r) => (r.error ? error(r.error) : next(r.data)));
    return unsubscribe;
  },
  async query(client, query) {
    const r = await client.query(query, {}, { requestPolicy: 'network-only' }).toPromise();
    if (r.error) throw r.error;
    return r.data;
  },
  close: (client) => void client.ws.dispose(),
  closeCode: (error) => error?.networkError?.code,
});

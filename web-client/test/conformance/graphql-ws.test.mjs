// The reference graphql-ws client (createClient), unchanged.
import { createClient } from 'graphql-ws';
import { conformance } from '../support/conformance.mjs';

conformance('graphql-ws createClient', {
  open: ({ url, token, reconnect, WebSocket }) =>
    createClient({
      url,
      webSocketImpl: WebSocket,
      connectionParams: { authorization: `Bearer ${token}` },
      retryAttempts: reconnect ? 5 : 0,
      retryWait: () => new Promise((ok) => setTimeout(ok, 300)),
    }),
  subscribe: (client, query, variables, { next, error }) =>
    client.subscribe({ query, variables }, { next: (r) => (r.errors ? error(r.errors) : next(r.data)), error, complete: () => {} }),
  query: (client, query) =>
    new Promise((resolve, reject) => {
      let data;
      client.subscribe({ query }, { next: (r) => (r.errors ? reject(r.errors) : (data = r.data)), error: reject, complete: () => resolve(data) });
    }),
  close: (client) => void client.dispose(),
  closeCode: (error) => error?.code,
});

// The legacy subscriptions-transport-ws client (protocol `graphql-ws`), still used by older apps.
// It reports a refused connection_init through `connectionCallback` and leaves the close code on
// its socket, which is where an app reads it: the adapter joins the two, as such an app would.
import { SubscriptionClient } from 'subscriptions-transport-ws';
import { conformance } from '../support/conformance.mjs';

conformance('subscriptions-transport-ws (legacy)', {
  open({ url, token, reconnect, WebSocket }) {
    const refusal = { error: null, listeners: [] };
    class Reporting extends WebSocket {
      constructor(...args) {
        super(...args);
        this.addEventListener('close', (e) => {
          if (refusal.error) refusal.listeners.forEach((l) => l({ message: refusal.error.message, code: e.code }));
        });
      }
    }
    const client = new SubscriptionClient(
      url,
      {
        reconnect,
        minTimeout: 300,
        connectionParams: { authorization: `Bearer ${token}` },
        connectionCallback: (error) => {
          if (error) refusal.error = error;
        },
      },
      Reporting,
    );
    client.refusal = refusal;
    return client;
  },
  subscribe(client, query, variables, { next, error }) {
    client.refusal.listeners.push(error);
    const sub = client.request({ query, variables }).subscribe({
      next: (r) => (r.errors ? error(r.errors) : next(r.data)),
      error,
    });
    return () => sub.unsubscribe();
  },
  query(client, query) {
    return new Promise((resolve, reject) => {
      client.request({ query }).subscribe({ next: (r) => (r.errors ? reject(r.errors) : resolve(r.data)), error: reject });
    });
  },
  close: (client) => client.close(),
  closeCode: (error) => error?.code,
});

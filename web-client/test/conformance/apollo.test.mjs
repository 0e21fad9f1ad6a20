// Apollo Client with GraphQLWsLink over the graphql-ws client, as Apollo documents it.
import { ApolloClient, InMemoryCache, gql } from '@apollo/client';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';
import { conformance } from '../support/conformance.mjs';

// GraphQLWsLink compares against the global WebSocket's constants, which Node 20 lacks.
globalThis.WebSocket ??= WebSocket;

conformance('@apollo/client GraphQLWsLink', {
  open({ url, token, reconnect, WebSocket: impl }) {
    const ws = createClient({
      url,
      webSocketImpl: impl,
      connectionParams: { authorization: `Bearer ${token}` },
      retryAttempts: reconnect ? 5 : 0,
      retryWait: () => new Promise((ok) => setTimeout(ok, 300)),
    });
    const client = new ApolloClient({ link: new GraphQLWsLink(ws), cache: new InMemoryCache() });
    client.ws = ws;
    return client;
  },
  subscribe(client, query, variables, { next, error }) {
    const sub = client
      .subscribe({ query: gql(query), variables, fetchPolicy: 'no-cache' })
      .subscribe({ next: (r) => (r.error ? error(r.error) : next(r.data)), error });
    return () => sub.unsubscribe();
  },
  async query(client, query) {
    const r = await client.query({ query: gql(query), fetchPolicy: 'no-cache' });
    return r.data;
  },
  close: (client) => {
    client.stop();
    void client.ws.dispose();
  },
  closeCode: (error) => Number(/Socket closed with event (\d+)/.exec(String(error?.message))?.[1]),
});

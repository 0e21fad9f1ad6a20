// The Api over Apollo Client: `GraphQLWsLink` on the shared graphql-ws client carries every
// operation, as on the urql page.

import { ApolloClient, InMemoryCache, gql } from '@apollo/client';
import { CombinedGraphQLErrors } from '@apollo/client/errors';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions';
import type { Client as WsClient } from 'graphql-ws';
import { describeNetwork, type Api, type Result } from './api';

export function apolloApi(ws: WsClient): Api {
  const client = new ApolloClient({ link: new GraphQLWsLink(ws), cache: new InMemoryCache() });
  return {
    name: 'Apollo Client',
    async query<T>(doc: string, variables?: Record<string, unknown>) {
      const r = await client.query<T>({ query: gql(doc), variables, fetchPolicy: 'no-cache', errorPolicy: 'all' });
      return fromApollo<T>(r.data as T | undefined, r.error);
    },
    async mutate<T>(doc: string, variables?: Record<string, unknown>) {
      const r = await client.mutate<T>({ mutation: gql(doc), variables, errorPolicy: 'all' });
      return fromApollo<T>(r.data as T | undefined, r.error);
    },
    subscribe<T>(doc: string, variables: Record<string, unknown>, onResult: (r: Result<T>) => void) {
      const sub = client.subscribe<T>({ query: gql(doc), variables, fetchPolicy: 'no-cache', errorPolicy: 'all' }).subscribe({
        next: (r) => onResult(fromApollo<T>(r.data as T | undefined, r.error)),
        error: (e) => onResult(fromApollo<T>(undefined, e)),
      });
      return () => sub.unsubscribe();
    },
  };
}

function fromApollo<T>(data: T | undefined, error: unknown): Result<T> {
  if (!error) return { data, errors: [] };
  if (CombinedGraphQLErrors.is(error)) {
    return { data, errors: error.errors.map((e) => ({ message: e.message, extensions: e.extensions as Record<string, unknown> })) };
  }
  return { data, errors: [], network: describeNetwork(error) };
}

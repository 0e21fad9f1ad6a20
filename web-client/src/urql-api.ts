// The Api over urql: every operation (queries and mutations too) goes through
// `subscriptionExchange` on the WebSocket, because `refreshAuth` only exists there and the
// connection's budget should see what the tab really does.

import { Client, subscriptionExchange, type CombinedError, type OperationResult } from '@urql/core';
import type { Client as WsClient } from 'graphql-ws';
import { describeNetwork, type Api, type Result } from './api';

export function urqlApi(ws: WsClient): Api {
  const client = new Client({
    url: '/graphql',
    exchanges: [
      subscriptionExchange({
        enableAllOperations: true,
        forwardSubscription(request) {
          const payload = { ...request, query: request.query ?? '' };
          return { subscribe: (sink) => ({ unsubscribe: ws.subscribe(payload, sink) }) };
        },
      }),
    ],
  });
  const convert = <T>(r: OperationResult<T>): Result<T> => fromUrql(r.data, r.error);
  return {
    name: 'urql',
    query: async (doc, vars) => convert(await client.query(doc, vars ?? {}, { requestPolicy: 'network-only' }).toPromise()),
    mutate: async (doc, vars) => convert(await client.mutation(doc, vars ?? {}).toPromise()),
    subscribe(doc, vars, onResult) {
      const { unsubscribe } = client.subscription(doc, vars).subscribe((r) => onResult(convert(r)));
      return unsubscribe;
    },
  };
}

function fromUrql<T>(data: T | undefined, error: CombinedError | undefined): Result<T> {
  return {
    data,
    errors: (error?.graphQLErrors ?? []).map((e) => ({ message: e.message, extensions: e.extensions as Record<string, unknown> })),
    network: error?.networkError ? describeNetwork(error.networkError) : undefined,
  };
}

// One graphql-ws client per signed-in tab, shared by urql (main page) and Apollo (apollo.html).
// It owns the reconnection policy and the connection status; the GraphQL libraries above it only
// see a `Client` whose subscriptions resume where they left off.

import { createClient, type Client, type FormattedExecutionResult, type Sink, type SubscribePayload } from 'graphql-ws';
import { backoffDelay, judgeClose } from './policy';

export type Status =
  | { kind: 'connecting' }
  | { kind: 'connected' }
  | { kind: 'reconnecting'; attempt: number }
  | { kind: 'disconnected'; message: string; signInAgain: boolean };

export interface Connection {
  /** The graphql-ws client, with resuming subscriptions (see `resuming`). */
  client: Client;
  onStatus(listener: (status: Status) => void): void;
  /** Every close of the socket, before the app decides to reconnect or stop. */
  onClose(listener: (code: number, reason: string) => void): void;
  /** A new socket was acknowledged after an earlier one closed. */
  onReconnected(listener: () => void): void;
  dispose(): void;
}

interface CloseLike {
  code: number;
  reason: string;
}

function isCloseLike(value: unknown): value is CloseLike {
  return typeof value === 'object' && value !== null && 'code' in value && 'reason' in value;
}

export function graphqlUrl(): string {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/graphql`;
}

/** `token` returns null for a cookie sign-in: the browser sends the session cookie itself. */
export function connect(url: string, token: () => string | null): Connection {
  const statusListeners: Array<(s: Status) => void> = [];
  const closeListeners: Array<(code: number, reason: string) => void> = [];
  const reconnectListeners: Array<() => void> = [];
  let attempt = 0;
  let everConnected = false;
  let disposed = false;
  const emit = (status: Status) => statusListeners.forEach((l) => l(status));

  const raw = createClient({
    url,
    // A function, so a reconnect after `refreshAuth` presents the refreshed token.
    connectionParams: () => {
      const jwt = token();
      return jwt ? { authorization: `Bearer ${jwt}` } : {};
    },
    // Eager: the status indicator describes the connection even before the first subscription,
    // and the app reconnects whatever it is subscribed to.
    lazy: false,
    onNonLazyError: () => {},
    retryAttempts: Infinity,
    retryWait: (retries) => new Promise((resolve) => setTimeout(resolve, backoffDelay(retries))),
    // A socket that never opened (server down) reports an error, not a close: keep trying.
    shouldRetry: (errOrClose) => (isCloseLike(errOrClose) ? judgeClose(errOrClose.code, errOrClose.reason).reconnect : true),
    on: {
      connecting: (isRetry) => emit(isRetry ? { kind: 'reconnecting', attempt } : { kind: 'connecting' }),
      connected: () => {
        const wasReconnect = everConnected;
        everConnected = true;
        attempt = 0;
        emit({ kind: 'connected' });
        if (wasReconnect) reconnectListeners.forEach((l) => l());
      },
      closed: (event) => {
        if (disposed || !isCloseLike(event)) return;
        closeListeners.forEach((l) => l(event.code, event.reason));
        const verdict = judgeClose(event.code, event.reason);
        if (verdict.reconnect) {
          attempt += 1;
          emit({ kind: 'reconnecting', attempt });
        } else {
          emit({ kind: 'disconnected', message: verdict.message ?? '', signInAgain: verdict.signInAgain });
        }
      },
    },
  });

  return {
    client: resuming(raw),
    onStatus: (l) => statusListeners.push(l),
    onClose: (l) => closeListeners.push(l),
    onReconnected: (l) => reconnectListeners.push(l),
    dispose: () => {
      disposed = true;
      void raw.dispose();
    },
  };
}

/**
 * A client whose subscriptions with an `after` variable resume after a reconnect: graphql-ws
 * re-sends the same subscribe payload on every new socket, so the payload's `after` is moved to
 * the id of each result as it arrives, and the server replays only what came after it.
 */
export function resuming(client: Client): Client {
  return {
    ...client,
    subscribe<Data = Record<string, unknown>, Extensions = unknown>(
      payload: SubscribePayload,
      sink: Sink<FormattedExecutionResult<Data, Extensions>>,
    ) {
      if (!payload.variables || !('after' in payload.variables)) return client.subscribe(payload, sink);
      const variables: Record<string, unknown> = { ...payload.variables };
      const own: SubscribePayload = { ...payload, variables };
      return client.subscribe<Data, Extensions>(own, {
        next(result) {
          const root = result.data ? Object.values(result.data as Record<string, unknown>)[0] : undefined;
          if (root && typeof root === 'object' && typeof (root as { id?: unknown }).id === 'string') {
            variables.after = (root as { id: string }).id;
          }
          sink.next(result);
        },
        error: (e) => sink.error(e),
        complete: () => sink.complete(),
      });
    },
  };
}

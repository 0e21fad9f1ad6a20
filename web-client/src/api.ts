// What the app needs from a GraphQL client. urql (main page) and Apollo (apollo.html) each
// implement it over the same graphql-ws connection, so both drive the same views.

export interface GqlError {
  message: string;
  extensions?: Record<string, unknown>;
}

export interface Result<T> {
  data?: T | null;
  errors: GqlError[];
  /** A transport failure (the socket closed under the operation), as text. */
  network?: string;
}

export interface Api {
  /** The library's name, shown in the header. */
  name: string;
  query<T>(document: string, variables?: Record<string, unknown>): Promise<Result<T>>;
  mutate<T>(document: string, variables?: Record<string, unknown>): Promise<Result<T>>;
  /** Returns the function that stops the subscription. */
  subscribe<T>(document: string, variables: Record<string, unknown>, onResult: (r: Result<T>) => void): () => void;
}

export function errorCode(error: GqlError): string | undefined {
  const code = error.extensions?.code;
  return typeof code === 'string' ? code : undefined;
}

export function describeNetwork(error: unknown): string {
  if (typeof error === 'object' && error !== null && 'code' in error) {
    const close = error as { code: number; reason?: string };
    return `socket closed (${close.code}${close.reason ? `: ${close.reason}` : ''})`;
  }
  return error instanceof Error ? error.message : String(error);
}

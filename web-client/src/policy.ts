// How the app reacts to each way Palisade can close the connection (README: "WebSocket behaviour
// and close codes"), and the backoff between attempts.

/** Closes after which the app comes back by itself: deploys, budget cuts, slow links. */
export const RECONNECT_CODES = new Set([1001, 1006, 1013, 4420, 4503, 4504]);

/** Closes after which reconnecting would only be refused again, with what to tell the user. */
const STOP_MESSAGES: Record<number, string> = {
  1008: 'A newer connection of your account replaced this one (or you have too many open). Reload the page to use this tab again.',
  4400: 'The server could not understand a message from this app (4400). Reload the page; report it if it happens again.',
  4409: 'Two operations of this app used the same id (4409). Reload the page.',
  4429: 'This app initialised its connection twice (4429). Reload the page.',
};

/** The reasons Palisade gives with 4403, in plain words. */
const FORBIDDEN_MESSAGES: Record<string, string> = {
  Forbidden: 'The server refused your credentials. Sign in again with a valid token.',
  'Token expired': 'Your token expired before it was refreshed. Sign in again.',
  'Session expired': 'Your session ended (logged out or expired). Sign in again.',
  Revoked: 'An administrator revoked your access.',
};

/** Codes the graphql-ws client gives up on whatever `shouldRetry` says (its client.ts). */
function fatalForGraphqlWs(code: number): boolean {
  if ([1000, 1001, 1005, 1006, 1012, 1013, 1014].includes(code)) return false;
  if (code >= 1000 && code <= 1999) return true;
  return [4500, 4005, 4400, 4004, 4401, 4406, 4409, 4429].includes(code);
}

export interface CloseVerdict {
  reconnect: boolean;
  /** Why the app stopped, for `connection-message`; null while it reconnects. */
  message: string | null;
  /** The user has to sign in again (bad, expired or revoked credentials). */
  signInAgain: boolean;
}

export function judgeClose(code: number, reason: string): CloseVerdict {
  if (code === 4403) {
    const message = FORBIDDEN_MESSAGES[reason] ?? FORBIDDEN_MESSAGES.Forbidden;
    return { reconnect: false, message, signInAgain: true };
  }
  if (STOP_MESSAGES[code]) return { reconnect: false, message: STOP_MESSAGES[code], signInAgain: false };
  if (RECONNECT_CODES.has(code) || !fatalForGraphqlWs(code)) {
    return { reconnect: true, message: null, signInAgain: false };
  }
  const why = reason ? `: ${reason}` : '';
  return { reconnect: false, message: `The server closed the connection (${code}${why}).`, signInAgain: false };
}

export const BACKOFF = { initialMs: 1000, maxMs: 10_000, randomization: 0.5 };

/** Exponential backoff with jitter: 1 s, 2 s, 4 s … capped at 10 s, each ±50 %. */
export function backoffDelay(retries: number, random: () => number = Math.random): number {
  const nominal = Math.min(BACKOFF.maxMs, BACKOFF.initialMs * 2 ** retries);
  const jitter = 1 + BACKOFF.randomization * (2 * random() - 1);
  return Math.min(BACKOFF.maxMs, Math.round(nominal * jitter));
}

// A tab's session: sign-in, the connection status, and what the server says about the
// connection itself (budget warnings and cuts, token expiry). Both pages run this with their
// own GraphQL library.

import type { Client as WsClient } from 'graphql-ws';
import { errorCode, type Api } from './api';
import { connect, graphqlUrl, type Connection, type Status } from './connection';
import { h, hide, show, time } from './dom';
import { startLive, type Live } from './live';
import { ME, NOTICES, RATE_LIMIT, REFRESH_AUTH, type Notice, type RateLimitWarning } from './operations';
import * as token from './token';
import { liveViews, shell, signInForm, type Shell, type SignInForm } from './views';

export interface Page {
  library: string;
  otherPage: { href: string; label: string };
  makeApi: (ws: WsClient) => Api;
}

export function start(root: HTMLElement, page: Page): void {
  const ui = shell(root, page.library, page.otherPage);
  let session: { connection: Connection; stop: () => void } | null = null;

  /** Back to the sign-in form; why (when the server ended the session) stays in the header. */
  function signOut() {
    session?.stop();
    session = null;
    token.forget();
    hide(ui.signOut);
    hide(ui.authNotice);
    ui.user.textContent = '';
    const form = signInForm();
    form.form.addEventListener('submit', (e) => {
      e.preventDefault();
      const jwt = form.input.value.trim();
      const claims = token.decode(jwt);
      if (!claims) return show(form.error, 'That is not a JSON Web Token (three base64url parts separated by dots).');
      if (token.expired(claims)) return show(form.error, 'That token has already expired.');
      token.store(jwt);
      signIn(jwt);
    });
    offerDevLogin(form, (jwt) => {
      form.input.value = jwt;
      form.form.requestSubmit();
    }, () => {
      localStorage.setItem(token.COOKIE_KEY, '1');
      signIn(null);
    });
    ui.main.replaceChildren(form.form);
  }

  /** `jwt` null: signed in with the session cookie, which the browser sends on the upgrade. */
  function signIn(jwt: string | null) {
    hide(ui.message);
    hide(ui.authNotice);
    let current = jwt;
    const connection = connect(graphqlUrl(), () => current);
    const api = page.makeApi(connection.client);
    const stops: Array<() => void> = [];
    let live: Live | null = null;
    session = {
      connection,
      stop: () => {
        live?.stop();
        stops.forEach((s) => s());
        connection.dispose();
      },
    };
    connection.onStatus((status) => {
      renderStatus(ui, status);
      if (status.kind === 'disconnected' && status.signInAgain) signOut();
    });
    watchBudget(ui, api, connection, stops);
    connection.onReconnected(() => live?.reconnected());
    stops.push(
      api.subscribe<{ connectionNotices: Notice }>(NOTICES, {}, (r) => {
        const notice = r.data?.connectionNotices;
        if (!notice) return;
        if (notice.kind === 'TOKEN_EXPIRING') void tokenExpiring(notice);
        else show(ui.authNotice, noticeText(notice));
      }),
    );

    async function refresh(fresh: string): Promise<void> {
      const r = await api.mutate<{ refreshAuth: { expiresAt: string | null } }>(REFRESH_AUTH, { token: fresh });
      if (!r.data?.refreshAuth) {
        const why = r.errors.map((e) => `${e.message} (${errorCode(e) ?? 'error'})`).join('; ') || r.network;
        return show(ui.authNotice, `The server refused the new token: ${why}`);
      }
      current = fresh;
      token.store(fresh);
      const until = r.data.refreshAuth.expiresAt;
      show(ui.authNotice, `Token refreshed over the live connection${until ? `; it now expires at ${time(until)}` : ''}.`);
    }

    /** Another tab may already have signed in with a newer token; otherwise ask for one. */
    async function tokenExpiring(notice: Notice) {
      const newer = token.stored();
      const claims = newer ? token.decode(newer) : null;
      if (newer && newer !== current && claims && !token.expired(claims)) return refresh(newer);
      const input = h('textarea', { 'data-testid': 'refresh-token-input', rows: '2', placeholder: 'a new token for the same user' });
      const form = h(
        'form',
        {},
        `Your token expires at ${time(notice.expiresAt ?? notice.at)}. Paste a new one to stay connected: `,
        input,
        h('button', { type: 'submit', 'data-testid': 'refresh-token' }, 'Refresh'),
      );
      form.addEventListener('submit', (e) => {
        e.preventDefault();
        void refresh(input.value.trim());
      });
      ui.authNotice.replaceChildren(form);
      show(ui.authNotice);
    }

    void api.query<{ me: { id: string; claims: Record<string, unknown> } | null }>(ME).then((r) => {
      if (session?.connection !== connection) return;
      const me = r.data?.me;
      if (!me) return;
      ui.user.textContent = me.id;
      show(ui.signOut);
      const conversations = me.claims.conversations;
      const conversationId = Array.isArray(conversations) && typeof conversations[0] === 'string' ? conversations[0] : null;
      live = startLive(api, liveViews(ui.main), me.id, conversationId);
    });
    ui.main.replaceChildren(h('p', { class: 'hint' }, 'Connecting…'));
  }

  ui.signOut.addEventListener('click', () => signOut());
  const saved = token.stored();
  if (saved) signIn(saved);
  else if (localStorage.getItem(token.COOKIE_KEY)) signIn(null);
  else signOut();
}

/** The conversation every development user is in, so chat and presence work out of the box. */
const DEV_CONVERSATION = '00000000-0000-4000-8000-000000000001';

/** Shows the development sign-in when the server offers it (`GET /auth/dev` is 404 otherwise). */
function offerDevLogin(form: SignInForm, withToken: (jwt: string) => void, withCookie: () => void) {
  const post = (path: string, body: unknown) =>
    fetch(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), credentials: 'same-origin' });
  void fetch('/auth/dev').then(async (r) => {
    if (!r.ok) return;
    const offer = (await r.json()) as { token: boolean; cookie: boolean };
    form.devCookie.hidden = !offer.cookie;
    show(form.dev);
  }, () => {});
  form.devToken.addEventListener('click', async () => {
    const r = await post('/auth/dev-token', { user: form.devUser.value.trim(), claims: { conversations: [DEV_CONVERSATION] } });
    if (!r.ok) return show(form.error, `The development token was refused (${r.status}).`);
    withToken(((await r.json()) as { token: string }).token);
  });
  form.devCookie.addEventListener('click', async () => {
    const r = await post('/auth/dev-login', { user: form.devUser.value.trim() });
    if (!r.ok) return show(form.error, `The development login was refused (${r.status}).`);
    withCookie();
  });
}

function renderStatus(ui: Shell, status: Status) {
  const text = status.kind === 'reconnecting' ? `reconnecting ${status.attempt}` : status.kind;
  ui.status.textContent = text;
  ui.status.className = `status ${status.kind}`;
  if (status.kind === 'disconnected') show(ui.message, status.message);
  else if (status.kind === 'connected') hide(ui.message);
}

/** The `rateLimitWarning` toast (one element, updated in place) and the 4420 banner. */
function watchBudget(ui: Shell, api: Api, connection: Connection, stops: Array<() => void>) {
  let hideToast: ReturnType<typeof setTimeout> | undefined;
  let hideBanner: ReturnType<typeof setTimeout> | undefined;
  let cut = false;
  stops.push(
    api.subscribe<{ rateLimitWarning: RateLimitWarning }>(RATE_LIMIT, {}, (r) => {
      const w = r.data?.rateLimitWarning;
      if (!w) return;
      const numbers = `${w.current} of ${w.limit} operations in ${w.windowSeconds} s; room again in ${w.retryAfterSeconds} s`;
      show(ui.toast, `${w.final ? 'Operation budget exceeded' : 'Slow down'}: ${w.message} (${numbers})`);
      ui.toast.dataset.final = String(w.final);
      clearTimeout(hideToast);
      hideToast = setTimeout(() => hide(ui.toast), Math.max(8, w.retryAfterSeconds) * 1000);
    }),
  );
  connection.onClose((code) => {
    if (code !== 4420) return;
    cut = true;
    clearTimeout(hideBanner);
    show(ui.banner, 'The connection was cut: this tab used up its operation budget (4420). Reconnecting with a fresh budget…');
  });
  connection.onReconnected(() => {
    if (!cut) return;
    cut = false;
    show(ui.banner, 'The connection was cut for exceeding its operation budget (4420), and is back with a fresh budget.');
    hideBanner = setTimeout(() => hide(ui.banner), 10_000);
  });
}

function noticeText(notice: Notice): string {
  switch (notice.kind) {
    case 'SESSION_EXPIRED':
      return 'Your session has ended. Sign in again.';
    case 'REPLACED':
      return 'A newer connection of your account replaced this tab.';
    case 'REVOKED':
      return 'An administrator revoked your access.';
    default:
      return notice.message;
  }
}

// The page's elements. The data-testid attributes are the contract the browser tests (and teams
// copying this app) rely on.

import { h } from './dom';

export interface Shell {
  status: HTMLElement;
  message: HTMLElement;
  banner: HTMLElement;
  toast: HTMLElement;
  authNotice: HTMLElement;
  user: HTMLElement;
  signOut: HTMLButtonElement;
  main: HTMLElement;
}

export function shell(root: HTMLElement, library: string, otherPage: { href: string; label: string }): Shell {
  const status = h('span', { 'data-testid': 'connection-status', class: 'status disconnected' }, 'disconnected');
  const message = h('p', { 'data-testid': 'connection-message', class: 'connection-message', hidden: true });
  const banner = h('div', { 'data-testid': 'cut-banner', class: 'banner', role: 'alert', hidden: true });
  const toast = h('div', { 'data-testid': 'rate-limit-toast', class: 'toast', role: 'status', hidden: true });
  const authNotice = h('div', { 'data-testid': 'auth-notice', class: 'auth-notice', hidden: true });
  const user = h('span', { 'data-testid': 'user', class: 'user' });
  const signOut = h('button', { type: 'button', 'data-testid': 'sign-out', hidden: true }, 'Sign out');
  const main = h('main');
  root.replaceChildren(
    h(
      'header',
      {},
      h('h1', {}, 'Palisade'),
      h('span', { class: 'library' }, `on ${library}`),
      h('a', { href: otherPage.href }, otherPage.label),
      h('span', { class: 'spacer' }),
      user,
      status,
      signOut,
    ),
    message,
    banner,
    authNotice,
    main,
    toast,
  );
  return { status, message, banner, toast, authNotice, user, signOut, main };
}

export interface SignInForm {
  form: HTMLFormElement;
  input: HTMLTextAreaElement;
  error: HTMLElement;
  /** Shown only when the server has `auth.dev_login` on. */
  dev: HTMLElement;
  devUser: HTMLInputElement;
  devToken: HTMLButtonElement;
  devCookie: HTMLButtonElement;
}

export function signInForm(): SignInForm {
  const input = h('textarea', { id: 'token', 'data-testid': 'token-input', rows: '4', placeholder: 'eyJhbGciOi…' });
  const error = h('p', { class: 'field-error', 'data-testid': 'token-error', hidden: true });
  const form = h(
    'form',
    { 'data-testid': 'sign-in', class: 'card sign-in' },
    h('h2', {}, 'Sign in'),
    h('label', { for: 'token' }, 'JSON Web Token'),
    input,
    error,
    h('p', { class: 'hint' }, 'Mint one with `cargo run -- token --sub alice --claim conversations=\'["<uuid>"]\'`.'),
    h('button', { type: 'submit', 'data-testid': 'sign-in-submit' }, 'Sign in'),
  );
  const devUser = h('input', { id: 'dev-user', 'data-testid': 'dev-user', value: 'alice', size: '16' });
  const devToken = h('button', { type: 'button', 'data-testid': 'dev-token' }, 'Get a development token');
  const devCookie = h('button', { type: 'button', 'data-testid': 'dev-cookie' }, 'Sign in with a session cookie');
  const dev = h(
    'div',
    { class: 'dev', 'data-testid': 'dev-login', hidden: true },
    h('h3', {}, 'Development sign-in'),
    h('label', { for: 'dev-user' }, 'User '),
    devUser,
    ' ',
    devToken,
    ' ',
    devCookie,
    h('p', { class: 'hint' }, 'The server runs with auth.dev_login: anyone can sign in as anyone. Never in production.'),
  );
  form.append(dev);
  return { form, input, error, dev, devUser, devToken, devCookie };
}

export interface LiveViews {
  topic: HTMLInputElement;
  follow: HTMLFormElement;
  feed: HTMLElement;
  feedError: HTMLElement;
  gap: HTMLElement;
  presence: HTMLElement;
  presenceNote: HTMLElement;
  conversation: HTMLElement;
  messages: HTMLElement;
  sendForm: HTMLFormElement;
  content: HTMLTextAreaElement;
  contentError: HTMLElement;
  sendError: HTMLElement;
  serverInfo: HTMLButtonElement;
  serverInfoText: HTMLElement;
}

export function liveViews(main: HTMLElement): LiveViews {
  const topic = h('input', { id: 'topic', 'data-testid': 'feed-topic', size: '30' });
  const follow = h('form', { class: 'inline' }, h('label', { for: 'topic' }, 'Topic'), topic, h('button', { type: 'submit' }, 'Follow'));
  const feed = h('ul', { 'data-testid': 'event-feed', class: 'feed' });
  const feedError = h('p', { class: 'field-error', 'data-testid': 'feed-error', hidden: true });
  const gap = h('p', { class: 'gap', 'data-testid': 'gap-notice', hidden: true });
  const presence = h('ul', { 'data-testid': 'presence', class: 'presence' });
  const presenceNote = h('p', { class: 'hint', hidden: true });
  const messages = h('ul', { 'data-testid': 'messages', class: 'messages' });
  const content = h('textarea', { id: 'content', 'data-testid': 'message-input', rows: '2', 'aria-describedby': 'content-error' });
  const contentError = h('p', { id: 'content-error', class: 'field-error', 'data-testid': 'content-error', hidden: true });
  const sendError = h('p', { class: 'field-error', 'data-testid': 'send-error', hidden: true });
  const sendForm = h(
    'form',
    { class: 'send' },
    h('label', { for: 'content' }, 'Message'),
    content,
    contentError,
    sendError,
    h('button', { type: 'submit', 'data-testid': 'send-message' }, 'Send'),
  );
  const conversation = h('section', { class: 'card', 'data-testid': 'conversation' }, h('h2', {}, 'Conversation'), messages, sendForm);
  const serverInfo = h('button', { type: 'button', 'data-testid': 'server-info' }, 'Ask the server who it is');
  const serverInfoText = h('span', { 'data-testid': 'server-info-text', class: 'hint' });
  main.replaceChildren(
    h('section', { class: 'card feed-card' }, h('h2', {}, 'Events'), follow, feedError, gap, feed),
    h('div', { class: 'side' }, conversation, h('section', { class: 'card' }, h('h2', {}, 'Online'), presenceNote, presence), h('section', { class: 'card' }, serverInfo, ' ', serverInfoText)),
  );
  return { topic, follow, feed, feedError, gap, presence, presenceNote, conversation, messages, sendForm, content, contentError, sendError, serverInfo, serverInfoText };
}

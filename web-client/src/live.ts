// The live views of a signed-in tab: the event feed, the conversation and the presence list.
// Each follows one subscription; after a reconnect the subscriptions with `after` resume
// (see connection.ts) and the presence list is rebuilt from the JOINs the server re-sends.

import { errorCode, type Api, type GqlError } from './api';
import { h, hide, show, time } from './dom';
import { EVENTS, MESSAGES, PRESENCE, PRESENCE_NOW, SEND_MESSAGE, SERVER_INFO, type Event, type Message, type PresenceEvent } from './operations';
import type { LiveViews } from './views';

export interface Live {
  /** A new socket is up: presence is re-announced by the server from scratch. */
  reconnected(): void;
  stop(): void;
}

const describe = (errors: GqlError[]) => errors.map((e) => `${e.message}${errorCode(e) ? ` (${errorCode(e)})` : ''}`).join('; ');

export function startLive(api: Api, v: LiveViews, userId: string, conversationId: string | null): Live {
  const stops: Array<() => void> = [];
  let stopFeed = () => {};

  function follow(topic: string) {
    stopFeed();
    v.feed.replaceChildren();
    hide(v.feedError);
    hide(v.gap);
    stopFeed = api.subscribe<{ events: Event }>(EVENTS, { topic, after: null }, (r) => {
      if (r.errors.length) return show(v.feedError, `Cannot follow ${topic}: ${describe(r.errors)}`);
      const event = r.data?.events;
      if (!event) return;
      if (event.type === 'GAP') {
        show(v.gap, `Some events of ${topic} were missed and could not be replayed (at ${time(event.publishedAt)}); the list of who is online was refetched.`);
        void refetchPresence();
      }
      v.feed.append(
        h(
          'li',
          { 'data-event-id': event.id, class: event.type === 'GAP' ? 'event gap-marker' : 'event' },
          h('span', { class: 'type' }, event.type),
          h('time', {}, time(event.publishedAt)),
          h('code', {}, JSON.stringify(event.payload)),
        ),
      );
    });
  }
  v.topic.value = `user:${userId}`;
  v.follow.addEventListener('submit', (e) => {
    e.preventDefault();
    follow(v.topic.value.trim());
  });
  follow(v.topic.value);
  stops.push(() => stopFeed());

  const online = new Map<string, string>();
  const renderPresence = () =>
    v.presence.replaceChildren(
      ...[...online.keys()].sort().map((id) => h('li', { 'data-user-id': id }, id === userId ? `${id} (you)` : id, h('span', { class: 'hint' }, ` since ${time(online.get(id) ?? '')}`))),
    );
  const presenceTopic = conversationId ? `conversation:${conversationId}` : null;
  async function refetchPresence() {
    if (!presenceTopic) return;
    const r = await api.query<{ presence: Array<{ userId: string; since: string }> }>(PRESENCE_NOW, { topic: presenceTopic });
    if (!r.data) return;
    online.clear();
    for (const entry of r.data.presence) online.set(entry.userId, entry.since);
    renderPresence();
  }
  if (presenceTopic && conversationId) {
    stops.push(
      api.subscribe<{ presence: PresenceEvent }>(PRESENCE, { topic: presenceTopic }, (r) => {
        if (r.errors.length) return show(v.presenceNote, describe(r.errors));
        const change = r.data?.presence;
        if (!change) return;
        if (change.type === 'JOIN') online.set(change.userId, change.at);
        else online.delete(change.userId);
        renderPresence();
      }),
    );
    stops.push(conversation(api, v, conversationId));
  } else {
    show(v.presenceNote, 'Your token has no `conversations` claim, so there is no conversation to chat and be present in.');
    v.conversation.hidden = true;
  }

  v.serverInfo.addEventListener('click', async () => {
    const r = await api.query<{ serverInfo: { version: string; instanceId: string } }>(SERVER_INFO);
    v.serverInfoText.textContent = r.data ? `Palisade ${r.data.serverInfo.version} (${r.data.serverInfo.instanceId})` : describe(r.errors) || (r.network ?? '');
  });

  return {
    reconnected() {
      online.clear();
      renderPresence();
    },
    stop: () => stops.forEach((s) => s()),
  };
}

/** The chat: follows `messages` and sends with `sendMessage`, errors next to their field. */
function conversation(api: Api, v: LiveViews, conversationId: string): () => void {
  let stopMessages = () => {};
  function listen(after: string | null) {
    stopMessages();
    stopMessages = api.subscribe<{ messages: Message }>(MESSAGES, { conversationId, after }, (r) => {
      if (r.errors.some((e) => errorCode(e) === 'GAP')) {
        show(v.sendError, 'Some messages were missed and could not be replayed; the conversation was reloaded from now on.');
        v.messages.replaceChildren();
        queueMicrotask(() => listen(null));
        return;
      }
      if (r.errors.length) return show(v.sendError, describe(r.errors));
      const m = r.data?.messages;
      if (!m) return;
      v.messages.append(h('li', { 'data-message-id': m.id }, h('strong', {}, m.senderId), ' ', m.content, h('time', {}, time(m.sentAt))));
    });
  }
  listen(null);

  v.sendForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    hide(v.contentError);
    hide(v.sendError);
    const r = await api.mutate<{ sendMessage: { id: string } }>(SEND_MESSAGE, { input: { conversationId, content: v.content.value } });
    if (r.data?.sendMessage) {
      v.content.value = '';
      return;
    }
    const other: GqlError[] = [];
    for (const error of r.errors) {
      const fields = error.extensions?.fields as Record<string, string[]> | undefined;
      if (errorCode(error) === 'BAD_USER_INPUT' && fields) {
        for (const [field, messages] of Object.entries(fields)) {
          const text = messages.join('; ');
          if (field === 'content') show(v.contentError, text);
          else show(v.sendError, `${field}: ${text}`);
        }
      } else {
        other.push(error);
      }
    }
    if (other.length || r.network) show(v.sendError, describe(other) || r.network || '');
  });
  return () => stopMessages();
}

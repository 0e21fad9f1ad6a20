// The GraphQL documents of the app, as plain strings so urql and Apollo send the same text.

export const ME = `query Me { me { id claims } }`;

export const SERVER_INFO = `query ServerInfo { serverInfo { version instanceId uptimeSeconds } }`;

export const EVENTS = `subscription Events($topic: String!, $after: ID) {
  events(topic: $topic, after: $after) { id topic type payload publishedAt }
}`;

export const NOTICES = `subscription Notices { connectionNotices { kind message at expiresAt } }`;

export const RATE_LIMIT = `subscription RateLimit {
  rateLimitWarning { current limit windowSeconds retryAfterSeconds message final }
}`;

export const PRESENCE = `subscription Presence($topic: String!) { presence(topic: $topic) { type userId topic at } }`;

export const PRESENCE_NOW = `query PresenceNow($topic: String!) { presence(topic: $topic) { userId connections since } }`;

export const MESSAGES = `subscription Messages($conversationId: UUID!, $after: ID) {
  messages(conversationId: $conversationId, after: $after) { id senderId content sentAt }
}`;

export const SEND_MESSAGE = `mutation SendMessage($input: SendMessageInput!) { sendMessage(input: $input) { id } }`;

export const REFRESH_AUTH = `mutation RefreshAuth($token: String!) { refreshAuth(token: $token) { expiresAt } }`;

export interface Event {
  id: string;
  topic: string;
  type: string;
  payload: unknown;
  publishedAt: string;
}

export interface Notice {
  kind: 'TOKEN_EXPIRING' | 'SESSION_EXPIRED' | 'REPLACED' | 'REVOKED';
  message: string;
  at: string;
  expiresAt: string | null;
}

export interface RateLimitWarning {
  current: number;
  limit: number;
  windowSeconds: number;
  retryAfterSeconds: number;
  message: string;
  final: boolean;
}

export interface PresenceEvent {
  type: 'JOIN' | 'LEAVE';
  userId: string;
  topic: string;
  at: string;
}

export interface Message {
  id: string;
  senderId: string;
  content: string;
  sentAt: string;
}

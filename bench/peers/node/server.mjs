// The Node peer: what a team would deploy instead of Palisade. graphql-ws over ws, graphql-js,
// an in-process PubSub, and an HS256 check of the token at connection_init; the same schema shape
// as the workload (events(topic), publish, serverInfo). Usage: node server.mjs PORT, with
// PALISADE_JWT_SECRET set.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { WebSocketServer } from 'ws';
import { useServer } from 'graphql-ws/use/ws';
import { buildSchema } from 'graphql';

const port = Number(process.argv[2] ?? 8091);
const secret = process.env.PALISADE_JWT_SECRET ?? '';

const schema = buildSchema(`
  scalar JSON
  type Event { id: ID! topic: String! type: String! payload: JSON }
  type ServerInfo { version: String! instanceId: String! uptimeSeconds: Int! }
  type Query { serverInfo: ServerInfo! }
  type Mutation { publish(topic: String!, type: String!, payload: JSON): Event! }
  type Subscription { events(topic: String!, after: ID): Event! }
`);

// topic -> set of push functions, one per live subscription.
const topics = new Map();
let nextId = 0;

function subscribe(topic) {
  const queue = [];
  let wake = null;
  const push = (event) => {
    queue.push(event);
    if (wake) { wake(); wake = null; }
  };
  if (!topics.has(topic)) topics.set(topic, new Set());
  topics.get(topic).add(push);
  const leave = () => {
    const set = topics.get(topic);
    set?.delete(push);
    if (set?.size === 0) topics.delete(topic);
  };
  return {
    [Symbol.asyncIterator]() { return this; },
    async next() {
      while (queue.length === 0) await new Promise((r) => { wake = r; });
      return { value: { events: queue.shift() }, done: false };
    },
    async return() { leave(); return { value: undefined, done: true }; },
  };
}

const roots = {
  serverInfo: () => ({ version: '1', instanceId: 'node-peer', uptimeSeconds: Math.floor(process.uptime()) }),
  publish: ({ topic, type, payload }) => {
    const event = { id: `${nextId++}-0`, topic, type, payload };
    for (const push of topics.get(topic) ?? []) push(event);
    return event;
  },
  events: ({ topic }) => subscribe(topic),
};

function verify(bearer) {
  const token = typeof bearer === 'string' && bearer.startsWith('Bearer ') ? bearer.slice(7) : '';
  const [header, body, signature] = token.split('.');
  if (!signature) return false;
  const expected = createHmac('sha256', secret).update(`${header}.${body}`).digest();
  const given = Buffer.from(signature, 'base64url');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return false;
  const claims = JSON.parse(Buffer.from(body, 'base64url').toString());
  return typeof claims.exp === 'number' && claims.exp * 1000 > Date.now();
}

const server = new WebSocketServer({ host: '127.0.0.1', port, path: '/graphql' });
useServer(
  {
    schema,
    roots: { query: roots, mutation: roots, subscription: roots },
    onConnect: (ctx) => verify(ctx.connectionParams?.authorization),
  },
  server,
);

// Starts the real Palisade binary on a free loopback port with a temporary config, for the
// conformance and browser tests. Nothing here fakes the server: it is the same binary
// `cargo run` builds, with its own database and, for the browser tests, PostgreSQL and Redis.

import { spawn, execFileSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, openSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, '../../..');
export const binary =
  process.env.PALISADE_BIN ?? join(process.env.CARGO_TARGET_DIR ?? join(repoRoot, 'target'), 'debug', 'palisade');

export const JWT_SECRET = `web-client-tests-${randomBytes(8).toString('hex')}`;
export const PUBLISH_KEY = `publish-${randomBytes(8).toString('hex')}`;

/** An HS256 JWT signed with the test server's secret. */
export function token(sub, claims = {}, ttlSeconds = 3600) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, iat: now, exp: now + ttlSeconds, ...claims })}`;
  return `${body}.${createHmac('sha256', JWT_SECRET).update(body).digest('base64url')}`;
}

async function freePort() {
  const server = createServer();
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address();
  await new Promise((ok) => server.close(ok));
  return port;
}

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

/**
 * Options: `rateLimit` (operations per 60 s window, default 1000), `replayLimit`, `expiryWarning`
 * (e.g. "55s"), `devLogin` (auth.dev_login with session secrets), `devSecret`, and `services: true` for PostgreSQL and Redis instead of SQLite and the
 * in-process bus (events then survive a restart of the server).
 */
export async function startServer(options = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-web-'));
  const port = await freePort();
  const prefix = `palisade-web-${randomBytes(4).toString('hex')}`;
  const config = join(dir, 'hardening.yaml');
  writeFileSync(
    config,
    `server:
  listen: 127.0.0.1:${port}
  shutdown_grace: 2s
  cors: { allowed_origins: [http://127.0.0.1:${port}, http://localhost:${port}] }
auth:
  jwt: { expiry_warning: ${options.expiryWarning ?? '60s'}, leeway: 5s }
  dev_login: ${options.devLogin ? 'true' : 'false'}
  session: { revalidate_every: ${options.devLogin ? '1s' : '5m'} }
connections:
  max_per_user: 5
  reconnects_per_minute: 1000
  connects_per_minute_per_ip: 10000
operations:
  rate_limit: { limit: ${options.rateLimit ?? 1000}, window: 60s, warn_at: 0.8, on_exceed: disconnect }
  http: { per_ip_per_second: 1000, burst: 1000 }
streams: { key_prefix: ${prefix}, replay_limit: ${options.replayLimit ?? 1000} }
logging: { format: pretty, filter: "warn,palisade=info" }
`,
  );
  const env = {
    ...process.env,
    PALISADE_JWT_SECRET: JWT_SECRET,
    PALISADE_PUBLISH_KEY: PUBLISH_KEY,
    PALISADE_WEB_DIR: join(repoRoot, 'web-client', 'dist'),
    PALISADE_SESSION_SECRETS: options.devLogin ? `cookie-${randomBytes(8).toString('hex')}` : '',
  };
  // `devSecret`: no secret configured (unset: a blank one is refused), so the server generates
  // the development-only one in its working directory, here the temporary one, and prints a
  // development token.
  if (options.devSecret) delete env.PALISADE_JWT_SECRET;
  let database = null;
  if (options.services) {
    const base = process.env.DATABASE_URL ?? 'postgres://postgres:postgres@127.0.0.1:5432/postgres';
    database = `palisade_web_${randomBytes(4).toString('hex')}`;
    execFileSync('psql', [base, '-qc', `CREATE DATABASE ${database}`]);
    env.DATABASE_URL = base.replace(/\/[^/]*$/, `/${database}`);
    env.REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
  } else {
    env.DATABASE_URL = `sqlite://${join(dir, 'palisade.db')}`;
    delete env.REDIS_URL;
  }
  if (!existsSync(binary)) throw new Error(`no Palisade binary at ${binary}: run cargo build first`);
  const log = join(dir, 'server.log');
  let child = null;

  async function up() {
    const out = openSync(log, 'a');
    child = spawn(binary, ['serve', '--config', config], { cwd: options.devSecret ? dir : repoRoot, env, stdio: ['ignore', out, out] });
    const exited = new Promise((ok) => child.once('exit', ok));
    for (let i = 0; i < 200; i++) {
      const ready = await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.ok, () => false);
      if (ready) return;
      if (child.exitCode !== null) break;
      await sleep(100);
    }
    await Promise.race([exited, sleep(10)]);
    throw new Error(`Palisade did not become ready:\n${readFileSync(log, 'utf8')}`);
  }

  async function down() {
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((ok) => child.once('exit', ok));
    child.kill('SIGTERM');
    await exited;
  }

  await up();
  return {
    port,
    config,
    httpUrl: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}/graphql`,
    keyPrefix: prefix,
    redisUrl: env.REDIS_URL,
    databaseUrl: env.DATABASE_URL,
    log: () => readFileSync(log, 'utf8'),
    async publish(topic, type, payload) {
      const r = await fetch(`http://127.0.0.1:${port}/api/publish`, {
        method: 'POST',
        headers: { authorization: `Bearer ${PUBLISH_KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify({ topic, type, payload }),
      });
      if (!r.ok) throw new Error(`publish answered ${r.status}: ${await r.text()}`);
      return r.json();
    },
    stop: down,
    start: up,
    async close() {
      await down();
      if (database) {
        const base = process.env.DATABASE_URL ?? 'postgres://postgres:postgres@127.0.0.1:5432/postgres';
        execFileSync('psql', [base, '-qc', `DROP DATABASE IF EXISTS ${database} WITH (FORCE)`]);
      }
    },
  };
}

/** Polls `check` until it returns a truthy value, or fails after `ms`. */
export async function eventually(check, ms = 10_000, what = 'condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${typeof what === 'function' ? what() : what}`);
    await sleep(50);
  }
}

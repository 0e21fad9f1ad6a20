//! Presence state in Redis, shared by every instance with the same `streams.key_prefix`.
//!
//! # Key layout
//!
//! Per topic `T`, under the hash tag `{T}` so that the one script changing a topic touches one
//! slot:
//! - `{prefix}:presence:{T}:connections`, a sorted set: each present connection id, scored by the
//!   expiry of its lease in microseconds of the Redis clock (`TIME`).
//! - `{prefix}:presence:{T}:users`, a hash: each online user id → `"<since µs> <connections>"`.
//!
//! And one index over all topics, `{prefix}:presence:leases` (see [`super::sweep`]).
//!
//! No key has a TTL. A connection's entry is removed when it leaves, or by the sweeper once its
//! lease ran out; a user's field goes with their last connection; Redis deletes a sorted set or
//! hash with its last member. So a topic nobody is present on has no key at all.
//!
//! Joins and leaves change both keys of a topic in one script, so a user's count and their
//! JOIN/LEAVE are decided atomically, whichever instances their connections are on.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script, ScriptInvocation};

use super::{Entry, Online, Op, Outcome, Snapshot};
use crate::metrics::Metrics;

/// A presence call to Redis gives up after this: it never holds up a subscription for long,
/// not even while the connection is being re-established.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Joins and leaves sent in one pipeline: large refreshes go in several round trips, each well
/// within the timeout.
const CHUNK: usize = 1000;

/// The operations on one topic. KEYS[1] is the `connections` sorted set, KEYS[2] the `users`
/// hash; ARGV[1] names the operation. Every reply carries `now` (µs of the Redis clock), which
/// stamps transitions.
const TOPIC_LUA: &str = r"
-- TIME before a write needs effects replication; the default since Redis 5, a no-op in 7.
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local op = ARGV[1]

-- The user's connection count and since when they are online (0 and now when offline).
local function read(user)
  local value = redis.call('HGET', KEYS[2], user)
  if not value then return 0, now end
  local since, count = string.match(value, '^(%d+) (%d+)$')
  return tonumber(count), tonumber(since)
end

-- One connection fewer for the user; 1 when it was the last, so the user went offline.
local function drop(user)
  local count, since = read(user)
  if count <= 1 then
    redis.call('HDEL', KEYS[2], user)
    return 1
  end
  redis.call('HSET', KEYS[2], user, string.format('%d %d', since, count - 1))
  return 0
end

-- join: ARGV[2] connection, ARGV[3] user, ARGV[4] lease (µs). Adds the connection, or only
-- extends its lease when present (a refresh). Reply {added, user came online, expiry, now}.
if op == 'join' then
  local expiry = now + tonumber(ARGV[4])
  if redis.call('ZADD', KEYS[1], string.format('%d', expiry), ARGV[2]) == 0 then
    return {0, 0, expiry, now}
  end
  local count, since = read(ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[3], string.format('%d %d', since, count + 1))
  return {1, count == 0 and 1 or 0, expiry, now}
end

-- leave: ARGV[2] connection, ARGV[3] user. Reply {removed, user went offline, 0, now}; nothing
-- is removed when the sweeper got there first.
if op == 'leave' then
  if redis.call('ZREM', KEYS[1], ARGV[2]) == 0 then return {0, 0, 0, now} end
  return {1, drop(ARGV[3]), 0, now}
end

-- expire (the sweeper): a leave once the lease has run out. Reply {-1, 0, 0, now} when the
-- connection is gone, {0, 0, expiry, now} while its lease runs, else as leave.
if op == 'expire' then
  local expiry = redis.call('ZSCORE', KEYS[1], ARGV[2])
  if not expiry then return {-1, 0, 0, now} end
  if tonumber(expiry) > now then return {0, 0, tonumber(expiry), now} end
  redis.call('ZREM', KEYS[1], ARGV[2])
  return {1, drop(ARGV[3]), 0, now}
end

-- list: reply {now, {user, '<since> <connections>', ...}}.
if op == 'list' then
  return {now, redis.call('HGETALL', KEYS[2])}
end
return redis.error_reply('unknown presence operation')
";

/// Compiled once; `Script` computes the SHA1 for `EVALSHA` here.
pub static TOPIC: LazyLock<Script> = LazyLock::new(|| Script::new(TOPIC_LUA));

/// A reply of `join`, `leave` and `expire`: status, user changed, expiry, now.
pub type Reply = (i64, i64, i64, i64);

#[derive(Clone)]
pub struct RedisStore {
    /// A cheap handle onto one shared multiplexed connection.
    pub connection: ConnectionManager,
    prefix: String,
    instance: String,
    pub ttl_us: i64,
    pub metrics: Arc<Metrics>,
}

impl RedisStore {
    pub fn new(
        client: &redis::Client,
        prefix: &str,
        instance: &str,
        ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        // Lazy: a Redis that is down at startup must not keep the server from starting.
        let connection =
            ConnectionManager::new_lazy_with_config(client.clone(), ConnectionManagerConfig::new())
                .context("setting up the presence connection to Redis")?;
        Ok(Self {
            connection,
            prefix: prefix.to_string(),
            instance: instance.to_string(),
            ttl_us: i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX),
            metrics,
        })
    }

    /// The topic script with its two keys set; the caller adds the arguments.
    pub fn topic_script(&self, topic: &str) -> ScriptInvocation<'static> {
        let mut invocation = TOPIC.prepare_invoke();
        invocation
            .key(format!("{}:presence:{{{topic}}}:connections", self.prefix))
            .key(format!("{}:presence:{{{topic}}}:users", self.prefix));
        invocation
    }

    pub fn index_key(&self) -> String {
        format!("{}:presence:leases", self.prefix)
    }

    /// An entry's member in the index: everything the sweeper needs to remove and report it.
    pub fn index_member(entry: &Entry, instance: &str) -> String {
        serde_json::json!([entry.topic, instance, entry.connection, entry.user]).to_string()
    }

    /// Awaits one Redis call within [`REDIS_TIMEOUT`]; a failure is counted in
    /// `cluster_errors{part="presence"}` and returned with `what` as context.
    pub async fn call<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = RedisResult<T>>,
    ) -> anyhow::Result<T> {
        let result = match tokio::time::timeout(REDIS_TIMEOUT, call).await {
            Ok(answer) => answer.context(what),
            Err(_) => Err(anyhow::anyhow!("Redis did not answer in time")).context(what),
        };
        if result.is_err() {
            self.metrics
                .cluster_errors
                .with_label_values(&["presence"])
                .inc();
        }
        result
    }

    /// Applies joins (and refreshes) and leaves in order, then indexes the new leases.
    #[tracing::instrument(skip_all, fields(ops = ops.len()))]
    pub async fn apply(&self, mut ops: Vec<(Op, Entry)>) -> anyhow::Result<Vec<Outcome>> {
        let mut outcomes = Vec::with_capacity(ops.len());
        while !ops.is_empty() {
            let rest = ops.split_off(ops.len().min(CHUNK));
            outcomes.extend(self.apply_chunk(ops).await?);
            ops = rest;
        }
        Ok(outcomes)
    }

    async fn apply_chunk(&self, ops: Vec<(Op, Entry)>) -> anyhow::Result<Vec<Outcome>> {
        let mut pipe = redis::pipe();
        // Loading costs little and spares the NOSCRIPT retry a pipeline does not get: a Redis that
        // restarted or was flushed has forgotten the script.
        pipe.load_script(&TOPIC).ignore();
        for (op, entry) in &ops {
            let mut script = self.topic_script(&entry.topic);
            match op {
                Op::Join => script
                    .arg("join")
                    .arg(&entry.connection)
                    .arg(&entry.user)
                    .arg(self.ttl_us),
                Op::Leave => script.arg("leave").arg(&entry.connection).arg(&entry.user),
            };
            pipe.invoke_script(&script);
        }
        let mut connection = self.connection.clone();
        let replies: Vec<Reply> = self
            .call(
                "joining and leaving presence topics",
                pipe.query_async(&mut connection),
            )
            .await?;
        let mut index = redis::pipe();
        for ((op, entry), (_, _, expiry, _)) in ops.iter().zip(&replies) {
            let member = Self::index_member(entry, &self.instance);
            match op {
                Op::Join => index.zadd(self.index_key(), member, expiry).ignore(),
                Op::Leave => index.zrem(self.index_key(), member).ignore(),
            };
        }
        // Not indexed means not swept if this instance dies before its next refresh, which
        // indexes again; the joins and leaves themselves happened and are reported.
        if let Err(error) = self
            .call(
                "indexing presence leases",
                index.exec_async(&mut connection),
            )
            .await
        {
            tracing::warn!(error = format!("{error:#}"), "presence leases not indexed");
        }
        Ok(ops
            .into_iter()
            .zip(replies)
            .map(|((op, entry), (applied, changed, _, at))| Outcome {
                op,
                entry,
                applied: applied == 1,
                changed: changed == 1,
                at,
            })
            .collect())
    }

    /// Who is online on `topic`, read atomically with the Redis clock.
    #[tracing::instrument(skip(self))]
    pub async fn online(&self, topic: &str) -> anyhow::Result<Snapshot> {
        let mut script = self.topic_script(topic);
        script.arg("list");
        let mut connection = self.connection.clone();
        let (at, fields): (i64, Vec<String>) = self
            .call(
                "listing who is online",
                script.invoke_async(&mut connection),
            )
            .await?;
        let users = fields
            .chunks_exact(2)
            .filter_map(|pair| {
                let (since, connections) = pair[1].split_once(' ')?;
                Some(Online {
                    user: pair[0].clone(),
                    connections: connections.parse().ok()?,
                    since: since.parse().ok()?,
                })
            })
            .collect();
        Ok(Snapshot { at, users })
    }
}

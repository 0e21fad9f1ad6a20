//! The sweeper: forgets the presence of an instance that died without leaving.
//!
//! Every entry of every topic is indexed in `{prefix}:presence:leases`, a sorted set scored by
//! lease expiry (µs of the Redis clock) whose members are JSON `[topic, instance, connection,
//! user]`, so expired entries are found without scanning topics. Every live instance sweeps; an
//! index entry is *claimed* before it is handled, by moving its score a lease into the future in
//! the same script that finds it, so two sweepers never handle the same entry and one that dies
//! mid-way leaves it to be claimed again. The topic script then removes the entry only if its
//! lease really ran out (a refresh may have come in between), and only the script that removes it
//! reports the LEAVE. Finally the claim is settled: the index entry is removed, or scored at the
//! entry's new expiry, unless a refresh or leave changed it since the claim.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::redis::{RedisStore, Reply, TOPIC};
use super::worker::Reporter;
use super::{Entry, Op, Outcome};

/// Index entries claimed per round, and rounds per tick: a backlog (many instances died at once)
/// is worked off over the following ticks, not in one long burst.
const CLAIM: usize = 500;
const ROUNDS: usize = 8;

/// KEYS[1] is the index; ARGV[1] names the operation.
const INDEX_LUA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

-- claim: ARGV[2] how long a claim holds (µs), ARGV[3] the most entries. Reply {claim, members}.
if ARGV[1] == 'claim' then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now),
    'LIMIT', 0, tonumber(ARGV[3]))
  local claim = now + tonumber(ARGV[2])
  for _, member in ipairs(due) do
    redis.call('ZADD', KEYS[1], 'XX', string.format('%d', claim), member)
  end
  return {claim, due}
end

-- settle: ARGV[2] the claim, then pairs of member and new score ('-' removes). Touches only
-- members still scored at the claim.
if ARGV[1] == 'settle' then
  local claim = tonumber(ARGV[2])
  for i = 3, #ARGV, 2 do
    local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
    if score and tonumber(score) == claim then
      if ARGV[i + 1] == '-' then
        redis.call('ZREM', KEYS[1], ARGV[i])
      else
        redis.call('ZADD', KEYS[1], 'XX', ARGV[i + 1], ARGV[i])
      end
    end
  end
  return 0
end
return redis.error_reply('unknown presence index operation')
";

static INDEX: LazyLock<Script> = LazyLock::new(|| Script::new(INDEX_LUA));

/// Sweeps every `every` until `shutdown`.
pub async fn run(
    store: RedisStore,
    reporter: Arc<Reporter>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
        for _ in 0..ROUNDS {
            match sweep(&store).await {
                Ok((expired, more)) => {
                    store
                        .metrics
                        .swept
                        .with_label_values(&["presence_lease"])
                        .inc_by(expired.len() as u64);
                    for (outcome, instance) in &expired {
                        let entry = &outcome.entry;
                        tracing::info!(
                            topic = %entry.topic,
                            user_id = %entry.user,
                            connection_id = %entry.connection,
                            instance = %instance,
                            went_offline = outcome.changed,
                            "presence lease expired: its instance stopped refreshing it"
                        );
                        reporter.report(outcome, instance).await;
                    }
                    if !more {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "presence sweep failed");
                    break;
                }
            }
        }
    }
}

/// One round: the expired entries removed (with the instance that served each), and whether
/// more may be due.
#[tracing::instrument(skip_all)]
async fn sweep(store: &RedisStore) -> anyhow::Result<(Vec<(Outcome, String)>, bool)> {
    let mut connection = store.connection.clone();
    let mut claim = INDEX.prepare_invoke();
    claim
        .key(store.index_key())
        .arg("claim")
        .arg(store.ttl_us)
        .arg(CLAIM);
    let (claimed_at, members): (i64, Vec<String>) = store
        .call(
            "claiming expired presence entries",
            claim.invoke_async(&mut connection),
        )
        .await?;
    if members.is_empty() {
        return Ok((Vec::new(), false));
    }
    // A member that does not parse was not written by this version: dropped from the index.
    let parsed: Vec<Option<(Entry, String)>> = members.iter().map(|m| parse(m)).collect();
    let mut pipe = redis::pipe();
    pipe.load_script(&TOPIC).ignore();
    for (entry, _) in parsed.iter().flatten() {
        let mut script = store.topic_script(&entry.topic);
        script.arg("expire").arg(&entry.connection).arg(&entry.user);
        pipe.invoke_script(&script);
    }
    let replies: Vec<Reply> = store
        .call(
            "expiring presence entries",
            pipe.query_async(&mut connection),
        )
        .await?;
    let mut replies = replies.into_iter();
    let mut settle = INDEX.prepare_invoke();
    settle.key(store.index_key()).arg("settle").arg(claimed_at);
    let mut expired = Vec::new();
    for (member, parsed) in members.iter().zip(parsed) {
        let Some((entry, instance)) = parsed else {
            settle.arg(member).arg("-");
            continue;
        };
        let Some((status, changed, expiry, at)) = replies.next() else {
            break;
        };
        if status == 0 {
            settle.arg(member).arg(expiry);
            continue;
        }
        settle.arg(member).arg("-");
        if status == 1 {
            let outcome = Outcome {
                op: Op::Leave,
                entry,
                applied: true,
                changed: changed == 1,
                at,
            };
            expired.push((outcome, instance));
        }
    }
    // Unsettled claims run out and are claimed again; the removals happened and are reported.
    if let Err(error) = store
        .call(
            "settling presence claims",
            settle.invoke_async::<i64>(&mut connection),
        )
        .await
    {
        tracing::warn!(error = format!("{error:#}"), "presence claims not settled");
    }
    Ok((expired, members.len() == CLAIM))
}

fn parse(member: &str) -> Option<(Entry, String)> {
    let [topic, instance, connection, user]: [String; 4] = serde_json::from_str(member).ok()?;
    Some((
        Entry {
            topic,
            connection,
            user,
        },
        instance,
    ))
}

//! The Lua scripts behind the cluster registry. Each touches one lease set (one key), so a script
//! runs on one Redis Cluster slot, and runs alone: no other command interleaves with its
//! prune-count-admit, so two instances admitting the same user at once cannot both take the last
//! slot.
//!
//! A lease set is a sorted set whose members are `<admitted µs, 16 digits>:<instance>:<id>` and
//! whose scores are lease expiry times in milliseconds of the Redis server's clock (`TIME`), so
//! instances whose clocks disagree still agree on when a lease runs out. Sorting members as
//! strings sorts them by admission.

use std::sync::LazyLock;

use redis::Script;

/// Admits one holder into a lease set, unless it is full.
///
/// KEYS[1] = the lease set; ARGV[1] = the lease in ms; ARGV[2] = how many leases the set may
/// hold; ARGV[3] = `evict` (make room by removing the oldest leases) or `reject`;
/// ARGV[4] = `<instance>:<id>` of the new holder.
/// Returns `{'full'}`, or `{'admitted', <new member>, <evicted member>…}`.
const ADMIT_LUA: &str = r"
-- Before Redis 5, scripts were replicated verbatim and TIME refused writes; this asks for
-- effects replication. Redis 7 keeps the call as a no-op.
if redis.replicate_commands then redis.replicate_commands() end

local key = KEYS[1]
local lease = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- Leases nobody refreshed (their instance died or lost Redis) no longer count.
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local count = redis.call('ZCARD', key)
local evicted = {}
if count >= max then
  if ARGV[3] ~= 'evict' then
    return {'full'}
  end
  -- More than one goes when the set overflowed while Redis was unreachable (admission failed
  -- open) or lost its data.
  local members = redis.call('ZRANGE', key, 0, -1)
  table.sort(members)
  for i = 1, count - max + 1 do
    redis.call('ZREM', key, members[i])
    evicted[#evicted + 1] = members[i]
  end
end

local admitted = tonumber(time[1]) * 1000000 + tonumber(time[2])
local member = string.format('%016d:', admitted) .. ARGV[4]
redis.call('ZADD', key, now + lease, member)
-- Every lease in the set ends within one lease from now, so the set itself may go then.
redis.call('PEXPIRE', key, lease)
local result = {'admitted', member}
for _, gone in ipairs(evicted) do
  result[#result + 1] = gone
end
return result
";

/// Extends this instance's leases in one set.
///
/// KEYS[1] = the lease set; ARGV[1] = the lease in ms; ARGV[2] = `renew` or `restore`;
/// ARGV[3…] = members. `renew` extends only members still in the set and returns the others:
/// a member released (or evicted) while the refresh was on its way is never resurrected.
/// `restore` adds the members back, for live connections Redis forgot (it restarted, or they
/// were admitted while it was unreachable). Returns the members `renew` did not find.
pub(super) const REFRESH_LUA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end

local key = KEYS[1]
local lease = tonumber(ARGV[1])
local restore = ARGV[2] == 'restore'
local time = redis.call('TIME')
local until_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) + lease

local missing = {}
for i = 3, #ARGV do
  if restore or redis.call('ZSCORE', key, ARGV[i]) then
    redis.call('ZADD', key, until_ms, ARGV[i])
  else
    missing[#missing + 1] = ARGV[i]
  end
end
-- A no-op when every member was missing (the set is gone): nothing to keep alive.
redis.call('PEXPIRE', key, lease)
return missing
";

pub(super) static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(ADMIT_LUA));

pub(super) static REFRESH: LazyLock<Script> = LazyLock::new(|| Script::new(REFRESH_LUA));

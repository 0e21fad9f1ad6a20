//! The `topics`, `streams` and `retention` sections of hardening.yaml.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use validator::Validate;

use super::units::{ByteSize, Duration};

/// Who may subscribe to and publish on which topics.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    /// JWT claim holding the user's roles (an array of strings). Default `roles`.
    #[validate(length(min = 1))]
    pub roles_claim: String,
    /// Access rules, tried in order; the first whose pattern matches decides. A topic that matches
    /// no rule is denied.
    #[validate(nested)]
    pub rules: Vec<TopicRule>,
}

impl Default for Topics {
    fn default() -> Self {
        let rule = |pattern: &str, subscribe, publish, system| TopicRule {
            pattern: pattern.into(),
            subscribe,
            publish,
            system,
        };
        let service = || vec![Grant::Role("service".into())];
        let members = |placeholder: &str| {
            vec![Grant::Claim {
                name: "workspaces".into(),
                contains: placeholder.into(),
            }]
        };
        Self {
            roles_claim: "roles".into(),
            rules: vec![
                rule(
                    "user:{user}",
                    vec![Grant::Subject("user".into())],
                    service(),
                    false,
                ),
                rule(
                    "workspace:{workspace}:{feed}",
                    members("workspace"),
                    service(),
                    false,
                ),
                rule(
                    "conversation:{conversation}",
                    vec![Grant::Claim {
                        name: "conversations".into(),
                        contains: "conversation".into(),
                    }],
                    vec![Grant::Claim {
                        name: "conversations".into(),
                        contains: "conversation".into(),
                    }],
                    false,
                ),
                rule("system:{name}", vec![Grant::Authenticated], service(), true),
            ],
        }
    }
}

/// One topic access rule.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Validate)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// Topic pattern: literal segments and `{placeholders}` separated by `:`, e.g.
    /// `workspace:{workspace}:dashboard`. A placeholder matches one segment.
    #[validate(custom(function = "super::checks::topic_pattern"))]
    pub pattern: String,
    /// Who may subscribe; any one grant suffices. Default `[]` (nobody).
    #[serde(default, with = "serde_yaml::with::singleton_map_recursive")]
    #[schemars(with = "Vec<Grant>")]
    pub subscribe: Vec<Grant>,
    /// Who may publish; any one grant suffices. Default `[]` (nobody).
    #[serde(default, with = "serde_yaml::with::singleton_map_recursive")]
    #[schemars(with = "Vec<Grant>")]
    pub publish: Vec<Grant>,
    /// Has no effect: accepted so that files written when it made subscriptions budget-exempt
    /// still load. Opening a subscription costs budget whatever the topic; only the server's own
    /// pushes (`rateLimitWarning`, `connectionNotices` events) are free. Default `false`.
    #[serde(default)]
    pub system: bool,
}

/// One way to be granted access to a topic, written as a one-key map (`{role: service}`) or, for
/// `authenticated`, a plain word.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Grant {
    /// Any authenticated user.
    Authenticated,
    /// The token subject equals the value of this placeholder, e.g. `subject: user`.
    Subject(String),
    /// The user's roles claim contains this role, e.g. `role: service`.
    Role(String),
    /// A claim equals, or is an array containing, the value of a placeholder.
    Claim {
        /// Claim name, e.g. `workspaces`.
        name: String,
        /// Placeholder whose value must be in the claim, e.g. `workspace`.
        contains: String,
    },
    /// A row in a membership table links the user to the value of a placeholder.
    Member {
        /// Table name, e.g. `workspace_members`.
        table: String,
        /// Column holding the user id. Default `user_id`.
        #[serde(default = "default_user_column")]
        user_column: String,
        /// Column holding the placeholder's value, e.g. `workspace_id`.
        key_column: String,
        /// Placeholder whose value is looked up, e.g. `workspace`.
        placeholder: String,
    },
}

fn default_user_column() -> String {
    "user_id".into()
}

/// Event streams (the bus) and the cluster state kept in Redis when `REDIS_URL` is set.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct Streams {
    /// Prefix of every Redis key Palisade writes. Default `palisade`. Read at startup.
    #[validate(length(min = 1))]
    pub key_prefix: String,
    /// Number of Redis streams events are spread over, by a hash of the topic name; each instance
    /// runs one blocking reader per stream. Default `16`, at most `1024`. Every instance (and any
    /// service publishing with a plain `XADD`) must use the same value; changing it moves topics
    /// to other streams, so clients resuming across the change get a `GAP` event. Read at startup.
    #[validate(range(min = 1, max = 1024))]
    pub shards: u32,
    /// How long the Redis entries of a connection outlive an instance that stopped refreshing
    /// them (it crashed or lost Redis): its presence entries and connection-limit slots are
    /// forgotten, and `leave` events sent, within this time. Instances refresh their entries every
    /// third of it, so it is at least `3s`. Default `30s`. Read at startup.
    #[validate(range(min = Duration::secs(3), max = Duration::hours(1)))]
    pub presence_ttl: Duration,
    /// Events kept per stream (approximate trimming): each shard's, and the one stream of
    /// internal topics (presence transitions), so that these never trim away what clients resume
    /// from. Default `10000`. Without Redis, the events the in-process bus keeps over all client
    /// topics together, the oldest forgotten first, and as many again over internal ones
    /// (presence transitions), so that these never push out what clients resume from
    /// (`palisade_bus_retained_events` counts both).
    #[validate(range(min = 1, max = 1_000_000))]
    pub maxlen: u32,
    /// Most events replayed to a subscriber resuming with `after`. Default `1000`; when more were
    /// missed, the subscriber gets a `GAP` event first.
    #[validate(range(min = 1, max = 100_000))]
    pub replay_limit: u32,
    /// Most bytes (topic, type and payload text) one replay reads back from Redis and holds
    /// before they go out. Default `256KiB`, from `1KiB` to `64MiB`; when the missed events are more,
    /// only the newest that fit are replayed, after a `GAP` event. Read at startup.
    #[validate(range(min = ByteSize::kib(1), max = ByteSize::mib(64)))]
    pub replay_bytes: ByteSize,
    /// Replays (resumes with `after`) one instance runs at once. Default `32`, at most `4096`;
    /// more resumes wait their turn, in order, and publishes never wait behind them (they have
    /// a Redis connection of their own). Read at startup.
    #[validate(range(min = 1, max = 4096))]
    pub max_replays: u32,
    /// Replays one connection runs at once. Default `4`, at most `256`; its further resumes
    /// wait for one of them to finish. With `replay_bytes`, a connection's replays hold at most
    /// `4 × 256KiB = 1MiB` by default. Read at startup.
    #[validate(range(min = 1, max = 256))]
    pub max_replays_per_connection: u32,
    /// Presence joins and leaves waiting for the presence worker. Default `4096`, at most
    /// `1000000`; when it is full, a new subscription starts at once without being shown as
    /// present (counted in `palisade_presence_queue_dropped_total`). Leaves are always queued,
    /// so a subscription that was shown as present is never left online; they are at most one
    /// per subscription that joined. Read at startup.
    #[validate(range(min = 1, max = 1_000_000))]
    pub presence_queue: u32,
    /// How long a connection stays present on a topic after its last subscription to it ends.
    /// Default `2s`, at most `60s`; `0s` leaves at once. Subscribing again within it publishes
    /// nothing and writes no `presence_log` row, so a client cycling subscriptions costs one JOIN
    /// and one LEAVE per topic (and a pair of rows per connection and topic) per linger, not one
    /// per cycle. Read at startup.
    #[validate(range(min = Duration::secs(0), max = Duration::secs(60)))]
    pub presence_linger: Duration,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            key_prefix: "palisade".into(),
            shards: 16,
            presence_ttl: Duration::secs(30),
            maxlen: 10_000,
            replay_limit: 1_000,
            replay_bytes: ByteSize::kib(256),
            max_replays: 32,
            max_replays_per_connection: 4,
            presence_queue: 4096,
            presence_linger: Duration::secs(2),
        }
    }
}

/// How long log rows are kept. A reload applies changes here at the next scheduled cleanup (a
/// changed `cleanup_every` counts from the reload); no rows are deleted by the reload itself.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Validate, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Age after which connection-log rows are deleted. Default `7d`.
    #[validate(range(min = Duration::hours(1), max = Duration::days(36_500)))]
    pub connection_logs: Duration,
    /// Age after which presence-log rows are deleted. Default `30d`.
    #[validate(range(min = Duration::hours(1), max = Duration::days(36_500)))]
    pub presence_logs: Duration,
    /// Age after which audit rows are deleted. Default `90d`.
    #[validate(range(min = Duration::hours(1), max = Duration::days(36_500)))]
    pub audit_logs: Duration,
    /// How often the cleanup job runs. Default `1h`.
    #[validate(range(min = Duration::secs(1), max = Duration::days(7)))]
    pub cleanup_every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            connection_logs: Duration::secs(7 * DAY),
            presence_logs: Duration::secs(30 * DAY),
            audit_logs: Duration::secs(90 * DAY),
            cleanup_every: Duration::secs(3600),
        }
    }
}

/// Log output on stderr.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct Logging {
    /// `pretty` (the default) for people, `json` (one object per line) for log pipelines.
    pub format: LogFormat,
    /// Which events are written, in `tracing` filter syntax. Default `info,sqlx=warn`. The
    /// `RUST_LOG` environment variable, when set, takes precedence. Read at startup.
    #[validate(length(min = 1))]
    pub filter: String,
}

impl Default for Logging {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            filter: "info,sqlx=warn".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

//! The `topics`, `streams` and `retention` sections of hardening.yaml.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use validator::Validate;

use super::units::Duration;

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
    /// Marks topics for system announcements (incident alerts and the like). It buys no budget:
    /// opening a subscription costs budget whatever the topic, and only the server's own pushes
    /// (`rateLimitWarning`, `connectionNotices` events) are free. Default `false`.
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
    /// third of it. Default `30s`, at least `3s`. Read at startup.
    #[validate(custom(function = "super::checks::at_least_3s"))]
    pub presence_ttl: Duration,
    /// Events kept per stream (approximate trimming). Default `10000`.
    #[validate(range(min = 1))]
    pub maxlen: u32,
    /// Most events replayed to a subscriber resuming with `after`. Default `1000`; when more were
    /// missed, the subscriber gets a `GAP` event first.
    #[validate(range(min = 1))]
    pub replay_limit: u32,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            key_prefix: "palisade".into(),
            shards: 16,
            presence_ttl: Duration::secs(30),
            maxlen: 10_000,
            replay_limit: 1_000,
        }
    }
}

/// How long log rows are kept.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Age after which connection-log rows are deleted. Default `7d`.
    pub connection_logs: Duration,
    /// Age after which presence-log rows are deleted. Default `30d`.
    pub presence_logs: Duration,
    /// Age after which audit rows are deleted. Default `90d`.
    pub audit_logs: Duration,
    /// How often the cleanup job runs. Default `1h`.
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

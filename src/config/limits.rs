//! The `connections`, `operations` and `payload` sections of hardening.yaml.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use validator::Validate;

use super::units::{ByteSize, Duration};

/// Limits on WebSocket connections.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct Connections {
    /// Open connections one user may hold. Default `5`; one more triggers `on_user_limit`.
    #[validate(range(min = 1, max = 10_000))]
    pub max_per_user: u32,
    /// What happens when a user opens connection `max_per_user + 1`. Default `close_oldest`.
    pub on_user_limit: OnUserLimit,
    /// Open connections from one client IP. Default `100`; the next upgrade gets HTTP 429.
    #[validate(range(min = 1, max = 1_000_000))]
    pub max_per_ip: u32,
    /// New connections one user may open per minute. Default `5`; more are refused with a
    /// retryable close.
    #[validate(range(min = 1, max = 10_000))]
    pub reconnects_per_minute: u32,
    /// Upgrade requests one client IP may make per minute. Default `120`; more get HTTP 429.
    #[validate(range(min = 1, max = 100_000))]
    pub connects_per_minute_per_ip: u32,
    /// Leading bits of an IPv6 address that name one client, for every per-IP limit
    /// (`max_per_ip`, `connects_per_minute_per_ip`, `operations.http`) and the `ip` of log rows.
    /// Default `64` (the customary size of one host's or one home's network), range 1 to 128
    /// (`128`: each address on its own). Every address inside one prefix shares its limits.
    #[validate(range(min = 1, max = 128))]
    pub ipv6_prefix: u8,
    /// How often the server pings each connection (WebSocket ping frame). Default `25s`.
    #[validate(range(min = Duration::secs(1), max = Duration::mins(10)))]
    pub ping_interval: Duration,
    /// How long a ping may go unanswered. Default `20s`; then the connection is closed with 4504.
    #[validate(range(min = Duration::secs(1), max = Duration::mins(10)))]
    pub pong_timeout: Duration,
    /// Operations one connection may run at once. Default `100`; the next `subscribe` gets an
    /// `error` message with code `MAX_OPERATIONS_LIMIT` and the connection stays open.
    #[validate(range(min = 1, max = 10_000))]
    pub max_operations: u32,
    /// Outgoing messages queued for one connection. Default `1024`; a client that lets the queue
    /// fill is closed with 4503 (slow consumer), so it never slows anyone else.
    #[validate(range(min = 1, max = 65_536))]
    pub send_queue: u32,
    /// Bytes of outgoing messages queued for one connection, counted until each is written to the
    /// socket. Default `1MiB`, from `64KiB` to `64MiB`; a message that would take the queue past it
    /// closes the connection with 4503 (slow consumer), as a full `send_queue` does. A single message
    /// larger than this always closes, so keep it above the largest result a client may receive.
    #[validate(range(min = ByteSize::kib(64), max = ByteSize::mib(64)))]
    pub send_queue_bytes: ByteSize,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            max_per_user: 5,
            on_user_limit: OnUserLimit::CloseOldest,
            max_per_ip: 100,
            reconnects_per_minute: 5,
            connects_per_minute_per_ip: 120,
            ipv6_prefix: 64,
            ping_interval: Duration::secs(25),
            pong_timeout: Duration::secs(20),
            max_operations: 100,
            send_queue: 1024,
            send_queue_bytes: ByteSize::kib(1024),
        }
    }
}

/// Policy when a user exceeds `max_per_user`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnUserLimit {
    /// The user's oldest connection is told it was replaced and closed.
    CloseOldest,
    /// The new connection is refused.
    RejectNew,
}

/// Operation budgets.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct Operations {
    /// The budget of every connection: queries, mutations and subscription starts.
    #[validate(nested)]
    pub rate_limit: RateLimit,
    /// Budgets for single operations across all of a user's connections, keyed by operation
    /// (root field) name. Default `{sendMessage: {limit: 30, window: 60s, scope: user}}`.
    #[validate(nested)]
    pub per_operation: BTreeMap<String, OperationLimit>,
    /// Limits on plain HTTP requests per client IP.
    #[validate(nested)]
    pub http: HttpLimit,
}

impl Default for Operations {
    fn default() -> Self {
        let send_message = OperationLimit {
            limit: 30,
            window: Duration::secs(60),
            scope: LimitScope::User,
        };
        Self {
            rate_limit: RateLimit::default(),
            per_operation: BTreeMap::from([("sendMessage".to_string(), send_message)]),
            http: HttpLimit::default(),
        }
    }
}

/// A connection's operation budget.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Validate, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    /// Operations allowed per `window`. Default `100`; operation `limit + 1` is refused with
    /// `RATE_LIMITED`.
    #[validate(range(min = 1, max = 1_000_000))]
    pub limit: u32,
    /// The window the budget refills over. Default `60s`.
    #[validate(range(min = Duration::secs(1), max = Duration::days(1)))]
    pub window: Duration,
    /// Fraction of `limit` at which the client gets a `rateLimitWarning`. Default `0.8`; must be
    /// strictly between 0 and 1.
    #[validate(range(exclusive_min = 0.0, exclusive_max = 1.0))]
    #[schemars(extend("exclusiveMinimum" = 0.0, "exclusiveMaximum" = 1.0))]
    pub warn_at: f64,
    /// What happens past the limit. Default `disconnect`.
    pub on_exceed: OnExceed,
    /// Root fields that are never counted (e.g. `refreshAuth`): an operation is exempt when every
    /// root field it runs, fragments spread, is listed. The operation's name buys nothing.
    /// Default `[]`.
    pub exempt_operations: Vec<String>,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            limit: 100,
            window: Duration::secs(60),
            warn_at: 0.8,
            on_exceed: OnExceed::Disconnect,
            exempt_operations: Vec::new(),
        }
    }
}

/// Policy past a connection's budget.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnExceed {
    /// Refuse the operation, send a final warning, then close with a retryable code.
    Disconnect,
    /// Refuse the operation and keep the connection; operations pass again once the window frees.
    Reject,
}

/// A budget for one operation.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Validate)]
#[serde(deny_unknown_fields)]
pub struct OperationLimit {
    /// Calls allowed per `window`; the next is refused with `RATE_LIMITED`.
    #[validate(range(min = 1, max = 1_000_000))]
    pub limit: u32,
    /// The window the budget refills over.
    #[validate(range(min = Duration::secs(1), max = Duration::days(1)))]
    pub window: Duration,
    /// Who shares the budget. Default `user`.
    #[serde(default)]
    pub scope: LimitScope,
}

/// Who shares a per-operation budget.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// All connections of one user.
    #[default]
    User,
    /// One connection.
    Connection,
}

/// Per-IP limits on HTTP requests (queries over HTTP and WebSocket upgrades).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimit {
    /// Sustained requests per second per client IP. Default `20`; more get HTTP 429.
    #[validate(range(min = 1, max = 100_000))]
    pub per_ip_per_second: u32,
    /// Requests one IP may make in a burst above the sustained rate. Default `100`.
    #[validate(range(min = 1, max = 1_000_000))]
    pub burst: u32,
}

impl Default for HttpLimit {
    fn default() -> Self {
        Self {
            per_ip_per_second: 20,
            burst: 100,
        }
    }
}

/// Limits checked on every message and operation before it executes.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct Payload {
    /// Largest WebSocket message (and frame) accepted. Default `64KiB`; a larger one closes the
    /// connection with 1009. At least `1KiB`, or no client could even send `connection_init`.
    #[validate(range(min = ByteSize::kib(1), max = ByteSize::mib(16)))]
    pub max_message_bytes: ByteSize,
    /// Largest query document. Default `16KiB`; a larger one is refused with `PAYLOAD_TOO_LARGE`.
    #[validate(range(min = ByteSize(1), max = ByteSize::mib(16)))]
    pub max_query_bytes: ByteSize,
    /// Most lexical tokens in a query document. Default `2000` (`MAX_TOKENS_LIMIT`).
    #[validate(range(min = 1, max = 1_000_000))]
    pub max_tokens: u32,
    /// Deepest selection nesting. Default `10` (`MAX_DEPTH_LIMIT`).
    #[validate(range(min = 1, max = 64))]
    pub max_depth: u32,
    /// Highest complexity score (one per field, multiplied by list sizes). Default `1000`
    /// (`MAX_COMPLEXITY_LIMIT`).
    #[validate(range(min = 1, max = 1_000_000))]
    pub max_complexity: u32,
    /// Most aliases in one operation. Default `15` (`MAX_ALIASES_LIMIT`).
    #[validate(range(max = 10_000))]
    pub max_aliases: u32,
    /// Most root fields in one operation. Default `20` (`MAX_ROOT_FIELDS_LIMIT`).
    #[validate(range(min = 1, max = 10_000))]
    pub max_root_fields: u32,
    /// Most directives in one operation. Default `50` (`MAX_DIRECTIVES_LIMIT`).
    #[validate(range(max = 10_000))]
    pub max_directives: u32,
    /// Deepest nesting of list and object values in arguments and variables. Default `32`
    /// (`MAX_INPUT_NESTING_LIMIT`).
    #[validate(range(min = 1, max = 128))]
    pub max_input_nesting: u32,
    /// Longest topic name accepted, in bytes of UTF-8, wherever a topic comes in (the `topic`
    /// argument of `events`, `presence` and `publish`, and `POST /api/publish`). Default `256`,
    /// at most `65536`; a longer one is refused with `MAX_TOPIC_BYTES_LIMIT` (with `limit` and
    /// `measured`) before the topic rules or the bus see it.
    #[validate(range(min = 1, max = 65536))]
    pub max_topic_bytes: u32,
    /// Whether introspection queries are answered. Default `true`; turn it off in production.
    pub introspection: bool,
    /// Whether errors suggest similar field names ("did you mean …"). Default `false`.
    pub field_suggestions: bool,
    /// Rules for text users write (chat messages).
    #[validate(nested)]
    pub content: Content,
    /// Parsed documents kept for reuse, by their exact text.
    #[validate(nested)]
    pub document_cache: DocumentCache,
}

/// Parsed query documents kept for reuse, by their exact text: a document sent again skips the
/// parser (the largest single cost of a small query), and nothing else. Every request is still
/// judged by every limit of `payload` and `operations` in force at that moment, and a document is
/// kept only once it parsed and passed the shape limits. The least recently used goes first when
/// either bound is reached. Shared by all connections. Read at startup.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct DocumentCache {
    /// Documents kept. Default `1000`, at most `100000`; `0` turns the cache off.
    #[validate(range(max = 100_000))]
    pub entries: u32,
    /// Memory the documents kept may take, all together. Each is counted at 256 bytes per byte of
    /// its text: the most a parsed document took here (minimal nesting, `{a{a{…}}}`), where
    /// typical documents take 30 to 70, so the cache uses less than this. Default `16MiB`, at most
    /// `256MiB`; a document counted at more than this is not kept.
    #[validate(range(max = ByteSize::mib(256)))]
    pub bytes: ByteSize,
}

impl Default for DocumentCache {
    fn default() -> Self {
        Self {
            entries: 1000,
            bytes: ByteSize::mib(16),
        }
    }
}

/// Content policy for user-written text. Control characters (other than newline and tab) are
/// always refused with `BAD_USER_INPUT`. Clients must still escape what they display: this is
/// not an HTML sanitizer.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct Content {
    /// Whether anything that looks like an HTML tag (`<…>`) is removed from messages before they
    /// are published. Default `false`.
    pub strip_html: bool,
}

impl Default for Payload {
    fn default() -> Self {
        Self {
            max_message_bytes: ByteSize::kib(64),
            max_query_bytes: ByteSize::kib(16),
            max_tokens: 2000,
            max_depth: 10,
            max_complexity: 1000,
            max_aliases: 15,
            max_root_fields: 20,
            max_directives: 50,
            max_input_nesting: 32,
            max_topic_bytes: 256,
            introspection: true,
            field_suggestions: false,
            content: Content::default(),
            document_cache: DocumentCache::default(),
        }
    }
}

-- Connection log: one row per WebSocket connection, closed out when it ends.
CREATE TABLE IF NOT EXISTS connection_log (
    id              TEXT PRIMARY KEY,
    user_id         TEXT,
    ip              TEXT NOT NULL,
    user_agent      TEXT,
    instance_id     TEXT NOT NULL,
    subprotocol     TEXT NOT NULL,
    connected_at    TEXT NOT NULL,
    disconnected_at TEXT,
    close_code      INTEGER,
    reason          TEXT
);
CREATE INDEX IF NOT EXISTS connection_log_connected_at ON connection_log (connected_at);
CREATE INDEX IF NOT EXISTS connection_log_user_id ON connection_log (user_id);

-- Audit trail: security-relevant actions.
CREATE TABLE IF NOT EXISTS audit_log (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    action        TEXT NOT NULL,
    severity      TEXT NOT NULL,
    user_id       TEXT,
    connection_id TEXT,
    ip            TEXT,
    metadata      TEXT NOT NULL DEFAULT '{}',
    created_at    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_created_at ON audit_log (created_at);
CREATE INDEX IF NOT EXISTS audit_log_action ON audit_log (action);

-- Presence log: a row each time a connection becomes present on a topic (online) or stops being
-- present (offline).
CREATE TABLE IF NOT EXISTS presence_log (
    id            BIGSERIAL PRIMARY KEY,
    user_id       TEXT NOT NULL,
    topic         TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    instance_id   TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('online', 'offline')),
    at            TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS presence_log_at ON presence_log (at);
CREATE INDEX IF NOT EXISTS presence_log_user_id ON presence_log (user_id);

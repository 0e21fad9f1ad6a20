-- Express sessions, in connect-pg-simple's own shape (its table.sql), so Palisade and an Express
-- app share one table; an existing connect-pg-simple table is left untouched. `expire` is UTC.
CREATE TABLE IF NOT EXISTS "session" (
    "sid" varchar NOT NULL COLLATE "default",
    "sess" json NOT NULL,
    "expire" timestamp(6) NOT NULL,
    PRIMARY KEY ("sid")
);
CREATE INDEX IF NOT EXISTS "IDX_session_expire" ON "session" ("expire");

-- Express sessions, in connect-pg-simple's shape. `sess` is JSON text; `expire` is a UTC
-- timestamp as sqlx writes chrono's NaiveDateTime ("YYYY-MM-DD HH:MM:SS[.ffffff]"), which sorts
-- in time order.
CREATE TABLE IF NOT EXISTS "session" (
    "sid" TEXT NOT NULL PRIMARY KEY,
    "sess" TEXT NOT NULL,
    "expire" DATETIME NOT NULL
);
CREATE INDEX IF NOT EXISTS "IDX_session_expire" ON "session" ("expire");

-- The append-only event log. Sequences are neither gapless nor commit-ordered, so
-- positions come from feed_head.position, a counter row that every appender locks
-- until it commits: appenders are serialised and commit in position order.
CREATE TABLE feed_events (
    position       BIGINT PRIMARY KEY,
    id             TEXT   NOT NULL UNIQUE,
    stream         TEXT   NOT NULL,
    stream_version BIGINT NOT NULL,
    type           TEXT   NOT NULL,
    occurred_at    TEXT   NOT NULL,
    data           TEXT   NOT NULL,
    metadata       TEXT   NOT NULL,
    UNIQUE (stream, stream_version)
);

CREATE TABLE feed_head (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    position BIGINT  NOT NULL
);
INSERT INTO feed_head (id, position) VALUES (1, 0);

CREATE TABLE feed_page_sizes (
    from_position BIGINT PRIMARY KEY,
    page_size     BIGINT NOT NULL CHECK (page_size > 0)
);

CREATE TABLE feed_checkpoints (
    subscription TEXT   PRIMARY KEY,
    position     BIGINT NOT NULL,
    page_url     TEXT,
    page_digest  TEXT,
    updated_at   TEXT   NOT NULL
);

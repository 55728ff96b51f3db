-- The append-only event log. Positions are gapless and commit-ordered: writers are
-- serialised by SQLite's single write lock, and feed_head.position is the counter.
CREATE TABLE feed_events (
    position       INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    stream         TEXT    NOT NULL,
    stream_version INTEGER NOT NULL,
    type           TEXT    NOT NULL,
    occurred_at    TEXT    NOT NULL,
    data           TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    UNIQUE (stream, stream_version)
);

CREATE TABLE feed_head (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    position INTEGER NOT NULL
);
INSERT INTO feed_head (id, position) VALUES (1, 0);

-- Page size per range of positions: a new size applies from the first unsealed page,
-- so pages sealed under an older size keep their URLs and bytes.
CREATE TABLE feed_page_sizes (
    from_position INTEGER PRIMARY KEY,
    page_size     INTEGER NOT NULL CHECK (page_size > 0)
);

-- Where each subscription has got to in the feed it follows, saved in the same
-- transaction as the effects of the events up to that position.
CREATE TABLE feed_checkpoints (
    subscription TEXT    PRIMARY KEY,
    position     INTEGER NOT NULL,
    page_url     TEXT,
    page_digest  TEXT,
    updated_at   TEXT    NOT NULL
);

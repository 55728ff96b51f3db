-- Bumped (under the append lock) whenever the page layout in feed_page_sizes changes,
-- so every process serving this log notices on its next head read and reloads it.
ALTER TABLE feed_head ADD COLUMN layout_version INTEGER NOT NULL DEFAULT 0;

-- The hash chain of sealed pages: the SHA-256 of each sealed page's Atom bytes
-- (identity coding), filled in position order when a page is first rendered after
-- sealing, so serving page N never renders the pages before it again. The bytes hold
-- absolute links, so each public base URL has its own chain.
CREATE TABLE feed_page_digests (
    base_url      TEXT    NOT NULL,
    from_position INTEGER NOT NULL,
    to_position   INTEGER NOT NULL,
    digest        TEXT    NOT NULL,
    PRIMARY KEY (base_url, from_position)
);

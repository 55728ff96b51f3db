-- Appends may commit their events unnumbered (EventLog::append_unnumbered): such a
-- row has no position yet, only seq, the order it was inserted in. One numbering
-- transaction at a time (it locks feed_head, like an append) gives the committed
-- unnumbered rows the next positions, in seq order, and moves the head. A reader
-- only ever sees numbered rows, so positions stay gapless and commit-ordered.
ALTER TABLE feed_events ADD COLUMN seq BIGSERIAL;
ALTER TABLE feed_events DROP CONSTRAINT feed_events_pkey;
ALTER TABLE feed_events ALTER COLUMN position DROP NOT NULL;
ALTER TABLE feed_events ADD CONSTRAINT feed_events_position_key UNIQUE (position);
ALTER TABLE feed_events ADD PRIMARY KEY (seq);
CREATE INDEX feed_events_unnumbered ON feed_events (seq) WHERE position IS NULL;

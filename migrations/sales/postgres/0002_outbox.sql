-- The mailer's outbox. The `sales<-sales` subscription records each confirmation
-- email here, in the transaction that moves its checkpoint; a sender sends it outside
-- any transaction and then, in one short transaction, appends OrderConfirmationSent,
-- sets sales_orders.confirmation_sent_at and sets sent_at. A slow mail server
-- therefore never holds the database's write lock.
--
-- not_before (milliseconds since the Unix epoch) is when the row may be tried next:
-- 0 when new, a lease while a sender holds it (so replicas sharing the database do
-- not both send it), a backoff after a failed attempt.
CREATE TABLE sales_outbox (
    order_id    TEXT   PRIMARY KEY REFERENCES sales_orders (order_id),
    event_id    TEXT   NOT NULL,
    recipient   TEXT   NOT NULL,
    subject     TEXT   NOT NULL,
    body        TEXT   NOT NULL,
    created_at  TEXT   NOT NULL,
    not_before  BIGINT NOT NULL DEFAULT 0,
    attempts    BIGINT NOT NULL DEFAULT 0,
    last_error  TEXT,
    sent_at     TEXT
);

CREATE INDEX sales_outbox_pending ON sales_outbox (created_at) WHERE sent_at IS NULL;

-- One row per order the process manager has heard of: the facts received so far
-- (accepted, billed) and the stage of the process. Written in the same transaction
-- as the subscription checkpoint and the events published on a transition.
CREATE TABLE fulfilment_orders (
    order_id    TEXT    PRIMARY KEY,
    customer_id TEXT    NOT NULL,
    stage       TEXT    NOT NULL CHECK (stage IN ('awaiting_acceptance', 'awaiting_billing', 'ready', 'cancelled')),
    accepted    BIGINT  NOT NULL,
    billed      BIGINT  NOT NULL,
    -- JSON [{product_id, quantity}], once OrderAccepted arrived.
    lines       TEXT,
    -- Why the order was cancelled.
    reason      TEXT,
    updated_at  TEXT    NOT NULL
);

CREATE INDEX fulfilment_orders_stage ON fulfilment_orders (stage);

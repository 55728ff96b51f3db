-- What loyalty knows of each order, from two independent feeds: the total (sales'
-- OrderAccepted) and where OrderShipped sits in shipping's feed. An order counts
-- toward its customer's tier once both are known, in shipping-feed order.
CREATE TABLE loyalty_orders (
    order_id         TEXT    PRIMARY KEY,
    customer_id      TEXT    NOT NULL,
    total_cents      INTEGER,
    shipped_position INTEGER,
    counted          INTEGER NOT NULL
);

CREATE INDEX loyalty_orders_queue ON loyalty_orders (customer_id, counted, shipped_position);

-- Each customer's tier and the record it was earned with.
CREATE TABLE loyalty_customers (
    customer_id         TEXT    PRIMARY KEY,
    tier                TEXT    NOT NULL CHECK (tier IN ('bronze', 'silver', 'gold')),
    shipped_orders      INTEGER NOT NULL,
    shipped_total_cents INTEGER NOT NULL,
    updated_at          TEXT    NOT NULL
);

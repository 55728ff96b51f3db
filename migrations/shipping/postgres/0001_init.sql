-- Replica of the catalog: what a packing slip needs. A deleted product keeps its row
-- (deleted = 1): goods already ordered still get shipped and need a name and weight.
CREATE TABLE shipping_products (
    product_id   TEXT    PRIMARY KEY,
    name         TEXT    NOT NULL,
    weight_grams BIGINT  NOT NULL,
    deleted      BIGINT  NOT NULL
);

-- One shipment per order released by fulfilment. 'pending' while a product on it is
-- not in the replica yet; 'shipped' once the slip is complete and OrderShipped is
-- published (in the same transaction).
CREATE TABLE shipping_shipments (
    order_id           TEXT    PRIMARY KEY,
    customer_id        TEXT    NOT NULL,
    status             TEXT    NOT NULL CHECK (status IN ('pending', 'shipped')),
    parcels            BIGINT  NOT NULL,
    total_weight_grams BIGINT,
    created_at         TEXT    NOT NULL,
    shipped_at         TEXT
);

CREATE INDEX shipping_shipments_status ON shipping_shipments (status);

-- The packing slip's lines. Name and unit weight are copied from the replica when the
-- shipment ships, so a later rename does not rewrite a slip that went out.
CREATE TABLE shipping_slip_lines (
    order_id     TEXT    NOT NULL REFERENCES shipping_shipments (order_id),
    line_no      BIGINT  NOT NULL,
    product_id   TEXT    NOT NULL,
    quantity     BIGINT  NOT NULL,
    name         TEXT,
    weight_grams BIGINT,
    PRIMARY KEY (order_id, line_no)
);

CREATE INDEX shipping_slip_lines_product ON shipping_slip_lines (product_id);

-- A single row both subscriptions update first, so that "the product is not in the
-- replica yet" and "no shipment waits for this product" can never both be read from
-- snapshots that miss each other's commit (PostgreSQL runs the two concurrently).
CREATE TABLE shipping_turns (
    id    BIGINT  PRIMARY KEY CHECK (id = 1),
    turns BIGINT  NOT NULL
);
INSERT INTO shipping_turns (id, turns) VALUES (1, 0);

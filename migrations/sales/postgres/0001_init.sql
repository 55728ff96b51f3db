-- sales_products: the replica of the catalog's product names (subscription
-- `sales<-catalog`), for order validation and the confirmation email. A deleted
-- product keeps its row (deleted = 1) so that emails of older orders still name it.
CREATE TABLE sales_products (
    product_id TEXT   PRIMARY KEY,
    name       TEXT   NOT NULL,
    deleted    BIGINT NOT NULL DEFAULT 0
);

-- The prices sales owns; `version` is the version of the stream `price-<product_id>`.
CREATE TABLE sales_prices (
    product_id       TEXT   PRIMARY KEY,
    unit_price_cents BIGINT NOT NULL,
    currency         TEXT   NOT NULL,
    version          BIGINT NOT NULL,
    updated_at       TEXT   NOT NULL
);

-- Accepted orders. confirmation_sent_at is set by the mailer in the transaction that
-- appends OrderConfirmationSent.
CREATE TABLE sales_orders (
    order_id             TEXT   PRIMARY KEY,
    customer_id          TEXT   NOT NULL,
    email                TEXT   NOT NULL,
    total_cents          BIGINT NOT NULL,
    currency             TEXT   NOT NULL,
    accepted_at          TEXT   NOT NULL,
    confirmation_sent_at TEXT
);

CREATE TABLE sales_order_lines (
    order_id         TEXT   NOT NULL REFERENCES sales_orders (order_id),
    line_no          BIGINT NOT NULL,
    product_id       TEXT   NOT NULL,
    quantity         BIGINT NOT NULL,
    unit_price_cents BIGINT NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

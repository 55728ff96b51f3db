-- Customer accounts: the credit limit set through PUT /customers/{id}. Customers
-- without a row get the configured default limit.
CREATE TABLE billing_customers (
    customer_id        TEXT   PRIMARY KEY,
    credit_limit_cents BIGINT NOT NULL,
    updated_at         TEXT   NOT NULL
);

-- One decision per order, made once when its OrderAccepted arrives: 'billed' (a
-- charge on the account) or 'failed' (with the reason). The primary key on order_id
-- is what makes a replayed OrderAccepted a no-op.
CREATE TABLE billing_decisions (
    order_id     TEXT   PRIMARY KEY,
    customer_id  TEXT   NOT NULL,
    amount_cents BIGINT NOT NULL,
    currency     TEXT   NOT NULL,
    outcome      TEXT   NOT NULL CHECK (outcome IN ('billed', 'failed')),
    reason       TEXT,
    decided_at   TEXT   NOT NULL
);
CREATE INDEX billing_decisions_customer ON billing_decisions (customer_id, outcome);

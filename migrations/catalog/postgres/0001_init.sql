-- The products the catalog owns. `version` is the version of the product's stream
-- (`product-<id>`) after the last change, so a client's If-Match and the event log's
-- optimistic concurrency check agree. Pictures are a JSON array of URLs.
CREATE TABLE catalog_products (
    product_id   TEXT   PRIMARY KEY,
    name         TEXT   NOT NULL,
    description  TEXT   NOT NULL,
    pictures     TEXT   NOT NULL,
    weight_grams BIGINT NOT NULL,
    size_l       BIGINT NOT NULL,
    size_w       BIGINT NOT NULL,
    size_h       BIGINT NOT NULL,
    version      BIGINT NOT NULL,
    created_at   TEXT   NOT NULL,
    updated_at   TEXT   NOT NULL
);
CREATE INDEX catalog_products_created ON catalog_products (created_at, product_id);

//! Integration tests of the loyalty service: real sales-like and shipping-like feeds
//! over HTTP, the service on a real socket, SQLite files in temp folders (and
//! PostgreSQL when installed).

mod flow;
mod history;
mod late_joiner;
mod postgres;
mod tiers;

//! Integration tests of the shipping service: real fulfilment-like and catalog-like
//! feeds over HTTP, the service on a real socket, SQLite files in temp folders (and
//! PostgreSQL when installed).

mod cli;
mod postgres;
mod shipments;

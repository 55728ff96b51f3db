//! Integration tests of the fulfilment service: real upstream feeds over HTTP, the
//! service on a real socket, SQLite files in temp folders (and PostgreSQL when
//! installed).

mod postgres;
mod process;

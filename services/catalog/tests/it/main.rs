//! The catalog over real sockets: a real server on 127.0.0.1:0 with a fresh SQLite
//! file per test, driven by HTTP, with its feed read back as Atom. `TEST_LOG=1` shows
//! the service's logs.

mod support;

mod bad_commands;
mod hostile;
mod postgres;
mod products;
mod secrets;

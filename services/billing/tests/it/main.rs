//! Billing over real sockets, fed by a real sales service (itself following a real
//! catalog) in the same process, each with its own database. `TEST_LOG=1` shows the
//! services' logs.

mod support;

mod accounts;
mod billing;
mod hostile;
mod postgres;

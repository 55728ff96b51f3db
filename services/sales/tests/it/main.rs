//! Sales over real sockets, with a real catalog service running in the same process
//! (its feed feeds sales' replica), fresh SQLite files per test, and confirmation
//! emails written as files. `TEST_LOG=1` shows the services' logs.

mod support;

mod bad_commands;
mod crash;
mod hostile;
mod orders;
mod outage;
mod postgres;
mod restart;
mod smtp;

//! Integration tests of the feed crate: real sockets, real SQLite files, a real
//! throwaway PostgreSQL where the behaviour depends on it.

mod atom_conformance;
mod feedctl;
mod helpers;
mod html;
mod limits;
mod server;
mod store;
mod subscriber;
mod unnumbered;

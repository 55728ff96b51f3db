//! The whole retail system over real sockets: the six services behind the gateway,
//! as `cargo run` starts them.

mod support;
mod system;

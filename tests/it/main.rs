//! The whole retail system over real sockets: the six services behind the gateway,
//! as `cargo run` starts them.

mod reliability;
mod support;
mod system;

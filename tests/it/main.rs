//! The whole retail system over real sockets: the six services behind the gateway,
//! as `cargo run` starts them, in this process (`support::System`) or as the real
//! binary in a child process (`processes`), and in a real browser (`browser`).

mod browser;
mod processes;
mod reliability;
mod support;
mod system;
mod web;
mod webdriver;

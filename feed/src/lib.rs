//! feed
pub mod atom;
pub mod db;
pub mod event;
pub mod negotiate;
pub mod page;
pub mod server;
pub mod store;
pub mod subscriber;
pub const DEFAULT_PAGE_SIZE: u64 = 200;

/// Installs rustls' ring provider once (reqwest is built without a default one).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(feature = "testing")]
pub mod testing;

//! The sales service (being written).

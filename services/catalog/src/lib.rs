//! The catalog service (being written).

//! The shipping service (being written).

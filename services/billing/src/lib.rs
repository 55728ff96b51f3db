//! The billing service (being written).

//! The loyalty service (being written).

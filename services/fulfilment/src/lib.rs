//! The fulfilment service (being written).

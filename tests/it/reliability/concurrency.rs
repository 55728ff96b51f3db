//! Concurrent writers on PostgreSQL.

//! SQLite store (embedded default).

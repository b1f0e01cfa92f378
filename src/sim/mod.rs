//! The simulator (being built).

//! A blocking client of both services: what the terminal client, the tests and tools use.

pub mod cli;
mod connection;

pub use connection::{ClientError, Connection, Tls};

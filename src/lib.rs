//! A thread-per-core game server: a sans-IO protocol and world core, glommio shards that drive
//! it, a login service and a world service, and a DB pool that keeps blocking calls off the shards.
//!
//! The sans-IO core ([`protocol`], [`session`], [`world`]) takes bytes and time in and gives
//! actions out; [`server`] is the glommio driver around it.

pub mod client;
pub mod config;
pub mod dbpool;
pub mod hub;
pub mod model;
pub mod protocol;
pub mod server;
pub mod service;
pub mod session;
pub mod store;
pub mod tls;
pub mod world;

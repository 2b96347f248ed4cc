//! The Switchboard node: configuration, TLS, listeners, actors, routing, IQ handlers and the
//! admin endpoint. The `switchboard` binary (`main.rs`) is its command line.

pub mod admin;
pub mod admission;
pub mod c2s;
pub mod cluster;
pub mod config;
pub mod data_dir;
pub mod http;
pub mod im;
pub mod listener;
pub mod log_throttle;
pub mod metrics;
pub mod modules;
pub mod muc;
pub mod node;
pub mod route;
pub mod router;
pub mod s2s;
pub mod tls;
pub mod users;

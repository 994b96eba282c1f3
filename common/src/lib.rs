//! Shared parts of the woa services: the Margo data model, configuration loading, the local PKI,
//! atomic state files, logging, shutdown and time windows.

pub mod backoff;
pub mod config;
mod error;
pub mod margo;
pub mod pki;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod window;

pub use error::{Error, Result, chain};

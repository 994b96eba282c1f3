//! Shared parts of the woa services.
mod error;
pub use error::{Error, Result};
pub mod margo;

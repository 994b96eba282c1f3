//! The woa deployment service.

mod error;
pub mod package;
mod spec;
// Until the deployment runtime calls `compose::load`.
#[allow(dead_code)]
mod compose;

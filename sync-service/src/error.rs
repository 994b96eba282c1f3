use std::time::Duration;

use crate::source::SourceError;

/// Everything that can fail in woa-sync.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration, files, PKI or TLS material (from the shared crate).
    #[error(transparent)]
    Common(#[from] woa_common::Error),
    /// The device is not enrolled and the configuration does not say enough to run without.
    #[error("not enrolled: {0} (run `woa-sync enroll` or set it in the configuration)")]
    NotEnrolled(String),
    /// Enrollment with the WOS failed.
    #[error("enrollment: {0}")]
    Enrollment(String),
    /// Making the device's Margo key and CSR, or installing its SVID, failed or was refused.
    #[error("SVID provisioning: {0}")]
    Provision(String),
    /// The desired-state repository could not be fetched or read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A request to the WOS failed.
    #[error("WOS {operation}: {message}")]
    Wos {
        /// What was attempted, e.g. `status of 3f2…`.
        operation: String,
        /// HTTP status, when the WOS answered.
        status: Option<u16>,
        /// Why, for people (the problem detail when the WOS sent one).
        message: String,
        /// How long the WOS asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
        /// Whether the problem (RFC 9457, Margo's `retryable`) says trying again may succeed.
        retryable: Option<bool>,
    },
    /// A desired-state manifest that must not be used (digest, version, shape); nothing of
    /// it is handed over.
    #[error("{code}: {message}")]
    Manifest {
        /// `ERR_INVALID_DESIRED_STATE` or `ERR_MANIFEST_VERSION`.
        code: &'static str,
        /// What is wrong, naming the deployment or field.
        message: String,
    },
    /// A call to the deployment service failed.
    #[error("deployment service {operation}: {message}")]
    Deploy {
        /// The call.
        operation: &'static str,
        /// Why.
        message: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether trying the same request later can succeed. A problem that says so is believed;
    /// otherwise only a WOS that refuses the content itself (400, 413, 422) will refuse it
    /// again; 401/403/404 happen during certificate rotation or maintenance, and everything
    /// else is network trouble or the server's.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Wos {
                retryable: Some(retryable),
                ..
            } => *retryable,
            Error::Wos {
                status: Some(400 | 413 | 422),
                ..
            } => false,
            Error::Wos { .. }
            | Error::Deploy { .. }
            | Error::Source(_)
            | Error::Manifest { .. } => true,
            Error::Common(_)
            | Error::NotEnrolled(_)
            | Error::Enrollment(_)
            | Error::Provision(_) => false,
        }
    }

    /// Whether the WOS does not authorize this device now (403; in the Margo API, e.g. a
    /// retired client): asking again before the next regular poll only adds load.
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            Error::Wos {
                status: Some(403),
                ..
            }
        )
    }

    /// The wait the WOS or the repository asked for (`Retry-After`), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Wos { retry_after, .. } => *retry_after,
            Error::Source(source) => source.retry_after(),
            _ => None,
        }
    }
}

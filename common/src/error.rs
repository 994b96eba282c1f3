use std::path::PathBuf;

/// Everything that can fail in the shared parts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Margo document could not be understood; `field` names the offending field.
    #[error("{path}: {field}: {message}")]
    Document {
        /// Where the document came from.
        path: String,
        /// The field (dotted path) at fault, or `document` for the whole of it.
        field: String,
        /// What is wrong, for people.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// Creating keys or certificates failed.
    #[error("pki: {0}")]
    Pki(String),
    /// Loading TLS material failed.
    #[error("tls: {0}")]
    Tls(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A [`Error::File`] for `path`.
    pub fn file(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::File {
            path: path.into(),
            source,
        }
    }
}

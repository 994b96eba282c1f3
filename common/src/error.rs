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

/// `error` and its causes, joined with ": ", leaving out a cause whose text an earlier part
/// already shows (many errors repeat their source in their own message). Libraries such as
/// reqwest, tonic and gix say only "error sending request" or "transport error" on top; the
/// cause below names what failed.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(error) = current {
        let text = error.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        current = error.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_names_every_cause_once() {
        let io = std::io::Error::other("connection refused");
        let file = Error::file("/state/x.json", io);
        // `File` shows its source in its own message: the cause is not repeated.
        assert_eq!(chain(&file), "/state/x.json: connection refused");

        #[derive(Debug, thiserror::Error)]
        #[error("sending request")]
        struct Outer(#[source] std::io::Error);
        let outer = Outer(std::io::Error::other("dns error"));
        assert_eq!(chain(&outer), "sending request: dns error");
    }
}

//! Logging setup shared by both services.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global subscriber writing to stderr, filtered by [`filter`] over `RUST_LOG`.
pub fn init(format: LogFormat) {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    // Colour codes only for a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The log filter for `RUST_LOG` (`info` when unset or invalid). A bare level (`debug`) is
/// woa's own: dependencies stay at `warn` unless named (`debug,bollard=debug`), because at
/// debug level some write what they send and receive, and for the engine's client that is
/// container definitions with the apps' environment, secrets included.
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    let mut directives = vec!["warn".to_owned(), "woa=info".to_owned()];
    for directive in rust_log.unwrap_or_default().split(',').map(str::trim) {
        if directive.is_empty() {
            continue;
        }
        let bare_level = directive
            .parse::<tracing_subscriber::filter::LevelFilter>()
            .is_ok();
        directives.push(if bare_level {
            format!("woa={directive}")
        } else {
            directive.to_owned()
        });
    }
    EnvFilter::try_new(directives.join(",")).unwrap_or_else(|_| EnvFilter::new("warn,woa=info"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_level_is_woas_own_and_named_targets_keep_theirs() {
        assert_eq!(filter(None).to_string(), "woa=info,warn");
        let debug = filter(Some("debug")).to_string();
        assert!(
            debug.contains("woa=debug") && !debug.contains(",debug"),
            "{debug}"
        );
        let named = filter(Some("trace,bollard=debug")).to_string();
        assert!(
            named.contains("bollard=debug") && named.contains("woa=trace"),
            "{named}"
        );
        assert_eq!(filter(Some("not a filter=[")).to_string(), "woa=info,warn");
    }
}

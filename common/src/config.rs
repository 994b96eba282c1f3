//! Configuration loading, the same for both services: defaults, then a TOML file, then
//! environment variables (`<PREFIX>__SECTION__KEY`). Unknown keys are errors, and a named file
//! that does not exist is an error rather than silently running on defaults.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Loads a configuration of type `T` from `file` (if given) over `T::default()`, then applies
/// environment variables starting with `env_prefix` (e.g. `WOA_DEPLOY__`, where `__` also
/// separates nested keys: `WOA_DEPLOY__TLS__CA`).
pub fn load<T: Serialize + DeserializeOwned + Default>(
    file: Option<&Path>,
    env_prefix: &str,
) -> Result<T> {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(file) = file {
        if !file.is_file() {
            return Err(Error::Config(format!("{}: no such file", file.display())));
        }
        figment = figment.merge(Toml::file_exact(file));
    }
    figment
        .merge(Env::prefixed(env_prefix).split("__"))
        .extract()
        .map_err(|e| Error::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::result_large_err)]
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        listen: String,
        nested: Nested,
    }
    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Nested {
        ca: String,
    }

    #[test]
    fn file_then_env_and_strict_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "listen = \"a\"\n[nested]\nca = \"x\"\n").unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("WOA_T__NESTED__CA", "y");
            let c: Sample = load(Some(&file), "WOA_T__").unwrap();
            assert_eq!(
                c,
                Sample {
                    listen: "a".into(),
                    nested: Nested { ca: "y".into() }
                }
            );
            Ok(())
        });
        std::fs::write(&file, "lisen = \"a\"\n").unwrap();
        let err = load::<Sample>(Some(&file), "WOA_T__")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
        let err = load::<Sample>(Some(&dir.path().join("nope.toml")), "WOA_T__").unwrap_err();
        assert!(err.to_string().contains("nope.toml"));
    }
}

//! The service's configuration file.

use std::path::Path;

use serde::Deserialize;

/// What `--config FILE` may set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The first word of every greeting.
    #[serde(default = "default_greeting")]
    pub greeting: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            greeting: default_greeting(),
        }
    }
}

fn default_greeting() -> String {
    "hello".to_string()
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It cannot be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// It is not valid TOML of the right shape.
    #[error("`{path}` is not a valid configuration: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
}

impl Config {
    /// Reads and checks `path`.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: shown, source })
    }
}

//! The `[package.metadata.docker]` table: first the raw serde model, then the validated config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::reference::Repository;
use crate::template::{Placeholder, Template};

/// The table exactly as written; every key is optional here so that later layers (workspace
/// defaults) can fill it before it is validated.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    /// Repository of the final image, without tag.
    pub image: Option<String>,
    /// The Dockerfile, relative to the package's directory.
    pub dockerfile: Option<String>,
    /// The build context, relative to the package's directory.
    pub context: Option<String>,
    /// The final stage; default: the Dockerfile's last stage.
    pub target: Option<String>,
    /// Tags of the final image.
    pub tags: Option<Vec<String>>,
    /// Repository of the stage caches; default: `image`.
    pub cache_image: Option<String>,
    /// `--build-arg`s of every build.
    pub build_args: Option<BTreeMap<String, String>>,
    /// `--network` of every build.
    pub network: Option<String>,
    /// `--platform` of every build.
    pub platform: Option<String>,
    /// Cached stage -> tag of its cache image.
    pub stages: Option<BTreeMap<String, String>>,
}

/// The keys of the table, for messages that list them.
pub const KEYS: &[&str] = &[
    "image",
    "dockerfile",
    "context",
    "target",
    "tags",
    "cache-image",
    "build-args",
    "network",
    "platform",
    "stages",
];

/// A package's validated configuration; paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The package's name.
    pub package: String,
    /// The package's version.
    pub version: String,
    /// The folder of the package's Cargo.toml.
    pub manifest_dir: PathBuf,
    /// Repository of the final image.
    pub image: Repository,
    /// The Dockerfile.
    pub dockerfile: PathBuf,
    /// The build context.
    pub context: PathBuf,
    /// The final stage, as written; `None` means the last stage.
    pub target: Option<String>,
    /// Tags of the final image.
    pub tags: Vec<Template>,
    /// Repository of the stage caches.
    pub cache_image: Repository,
    /// Build arguments.
    pub build_args: BTreeMap<String, String>,
    /// `--network`.
    pub network: Option<String>,
    /// `--platform`.
    pub platform: Option<String>,
    /// Cached stage (as written) -> cache tag.
    pub stages: BTreeMap<String, Template>,
}

/// Where a table comes from, for error messages and path resolution.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The package's name.
    pub package: String,
    /// The package's version.
    pub version: String,
    /// The package's Cargo.toml.
    pub manifest_path: PathBuf,
}

impl RawConfig {
    /// Reads the table from `cargo metadata`'s JSON for one package.
    pub fn from_json(value: &serde_json::Value) -> Result<RawConfig, String> {
        RawConfig::deserialize(value).map_err(|e| {
            let text = e.to_string();
            if text.starts_with("unknown field") {
                format!("{text}\nnote: the keys are {}", KEYS.join(", "))
            } else {
                text
            }
        })
    }

    /// Validates the table: every error names the key, stage or path at fault.
    pub fn validate(self, origin: &Origin) -> anyhow::Result<Config> {
        let manifest_dir = origin
            .manifest_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let image = self
            .image
            .context("key `image` is missing\nnote: it names the final image's repository, e.g. `image = \"ghcr.io/acme/service\"`")?;
        let image = Repository::parse(&image).map_err(|e| anyhow::anyhow!("key `image`: {e}"))?;
        let cache_image = match self.cache_image {
            Some(c) => {
                Repository::parse(&c).map_err(|e| anyhow::anyhow!("key `cache-image`: {e}"))?
            }
            None => image.clone(),
        };

        let dockerfile = manifest_dir.join(self.dockerfile.as_deref().unwrap_or("Dockerfile"));
        if !dockerfile.is_file() {
            bail!("key `dockerfile`: `{}` is not a file", dockerfile.display());
        }
        let context = manifest_dir.join(self.context.as_deref().unwrap_or("."));
        if !context.is_dir() {
            bail!("key `context`: `{}` is not a folder", context.display());
        }

        if let Some(target) = &self.target {
            not_a_flag("target", target)?;
        }
        let tags = self
            .tags
            .unwrap_or_else(|| vec!["latest".to_string()])
            .iter()
            .map(|t| Template::parse(t, Placeholder::FOR_TAGS))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("key `tags`: {e}"))?;
        if tags.is_empty() {
            bail!("key `tags` is empty\nnote: leave it out for the default `[\"latest\"]`");
        }

        let build_args = self.build_args.unwrap_or_default();
        for name in build_args.keys() {
            if name.is_empty()
                || name.starts_with('-')
                || name.contains('=')
                || name.contains(char::is_whitespace)
            {
                bail!("key `build-args`: `{name}` is not a build argument name");
            }
        }
        for (key, value) in [("network", &self.network), ("platform", &self.platform)] {
            if let Some(value) = value {
                not_a_flag(key, value)?;
                if value.is_empty() {
                    bail!("key `{key}` is empty");
                }
            }
        }

        let mut stages = BTreeMap::new();
        for (stage, tag) in self.stages.unwrap_or_default() {
            not_a_flag("stages", &stage)?;
            let tag = Template::parse(&tag, Placeholder::FOR_CACHE_TAGS)
                .map_err(|e| anyhow::anyhow!("key `stages.{stage}`: {e}"))?;
            stages.insert(stage, tag);
        }

        Ok(Config {
            package: origin.package.clone(),
            version: origin.version.clone(),
            manifest_dir,
            image,
            dockerfile,
            context,
            target: self.target,
            tags,
            cache_image,
            build_args,
            network: self.network,
            platform: self.platform,
            stages,
        })
    }
}

/// Refuses a value that docker would take as a flag.
fn not_a_flag(key: &str, value: &str) -> anyhow::Result<()> {
    if value.starts_with('-') {
        bail!("key `{key}`: `{value}` starts with `-`, and docker would take it as a flag");
    }
    Ok(())
}

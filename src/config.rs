//! The `[package.metadata.docker]` table: first the raw serde model, then the validated config.
//!
//! `[workspace.metadata.docker]` takes the same keys and gives every member its defaults; a
//! member's own keys win, and tables merge key by key. Merging comes first, validation after, so
//! `image` is required of the merged table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::reference::Repository;
use crate::template::{Placeholder, Template};

/// The table exactly as written; every key is optional here so that workspace defaults can fill
/// it before it is validated.
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
    pub target: Option<RawTarget>,
    /// Tags of the final image.
    pub tags: Option<Vec<String>>,
    /// Repository of the stage caches; default: `image`.
    pub cache_image: Option<String>,
    /// `--build-arg`s of every build.
    pub build_args: Option<BTreeMap<String, String>>,
    /// `--network` of every build.
    pub network: Option<String>,
    /// `--platform` of every build: one, or a list for a multi-platform image.
    pub platform: Option<OneOrMany>,
    /// Cached stage -> tag of its cache image.
    pub stages: Option<BTreeMap<String, String>>,
    /// `"inline"` or `"registry"`.
    pub cache: Option<String>,
    /// The tag of the registry cache (`cache = "registry"`).
    pub cache_tag: Option<String>,
    /// The branch whose caches other branches fall back to.
    pub default_branch: Option<String>,
    /// Let builds of every branch write the tags shared by all branches (and markers).
    pub trust_all_branches: Option<bool>,
    /// `"required"` or `"best-effort"`: whether a failed cache push fails the run.
    pub push_cache: Option<String>,
    /// buildx's `--provenance`: `true`, `false`, or its own value such as `"mode=max"`.
    pub provenance: Option<BoolOrString>,
    /// buildx's `--sbom`: `true`, `false`, or its own value.
    pub sbom: Option<BoolOrString>,
    /// Build secrets: id -> where the value comes from.
    pub secrets: Option<BTreeMap<String, RawSecret>>,
    /// Labels of the final image, added to or replacing the OCI labels made from Cargo.toml.
    pub labels: Option<BTreeMap<String, String>>,
    /// Which `RUN --mount=type=cache` folders travel between agents through the registry.
    pub cache_mounts: Option<RawCacheMounts>,
    /// The size past which a travelling cache mount is not exported.
    pub cache_mount_limit: Option<RawSize>,
}

/// `cache-mounts`: `true` (every cache mount of the stages built), a list of ids, or a table
/// id -> tag template.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RawCacheMounts {
    /// All or none.
    All(bool),
    /// These ids, each under its default tag.
    Ids(Vec<String>),
    /// These ids, each under the tag given.
    Tags(BTreeMap<String, String>),
}

/// A size: bytes as an integer, or a string with a unit (`"4GiB"`, `"500 MB"`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RawSize {
    /// Bytes.
    Bytes(u64),
    /// With a unit.
    Text(String),
}

/// A stage: a name, or its index as an integer (`target = 0`) or in a string (`"0"`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged, expecting = "expected a stage name or an index")]
pub enum RawTarget {
    /// The stage's index, counted from 0.
    Index(u64),
    /// The stage's name, or its index written as a string.
    Name(String),
}

impl RawTarget {
    /// The stage as written, an index in decimal: what the stage graph's `find` takes.
    fn into_name(self) -> String {
        match self {
            RawTarget::Index(index) => index.to_string(),
            RawTarget::Name(name) => name,
        }
    }
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged, expecting = "expected a string or a list of strings")]
pub enum OneOrMany {
    /// One value.
    One(String),
    /// A list.
    Many(Vec<String>),
}

/// A boolean or a string.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged, expecting = "expected a boolean or a string")]
pub enum BoolOrString {
    /// `true` or `false`.
    Bool(bool),
    /// Anything the flag takes.
    String(String),
}

/// Where a secret comes from: `{ env = "NAME" }` or `{ file = "path" }`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    /// An environment variable of the docker CLI.
    pub env: Option<String>,
    /// A file, relative to the package's directory; `~/` is the home folder.
    pub file: Option<String>,
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
    "cache",
    "cache-tag",
    "default-branch",
    "trust-all-branches",
    "push-cache",
    "provenance",
    "sbom",
    "secrets",
    "labels",
    "cache-mounts",
    "cache-mount-limit",
];

/// How stage caches are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Each cached stage's image carries its own cache (`BUILDKIT_INLINE_CACHE=1`).
    Inline,
    /// One BuildKit registry cache (`--cache-to type=registry,mode=max`) holds every stage.
    Registry,
}

/// Whether a cache push that fails fails the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushCache {
    /// It does.
    Required,
    /// It is a warning (a pull request from a fork has no credentials).
    BestEffort,
}

/// Where a secret's value comes from. Only the name or path is ever held, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// An environment variable, read by the docker CLI.
    Env(String),
    /// A file, read by the docker CLI.
    File(PathBuf),
}

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
    /// `--platform`: none, one, or several (a multi-platform image).
    pub platforms: Vec<String>,
    /// Cached stage (as written) -> cache tag.
    pub stages: BTreeMap<String, Template>,
    /// How caches are stored.
    pub cache: CacheMode,
    /// The registry cache's tag.
    pub cache_tag: Template,
    /// The branch other branches' caches fall back to, when the key names it; else the run
    /// detects it (the CI, `origin/HEAD`, else `main`).
    pub default_branch: Option<String>,
    /// Builds of every branch may write the tags shared by all branches, and markers: the
    /// team trusts every branch's builds as it trusts the default branch's.
    pub trust_all_branches: bool,
    /// Whether a failed cache push fails the run.
    pub push_cache: PushCache,
    /// `--provenance`, when set.
    pub provenance: Option<String>,
    /// `--sbom`, when set.
    pub sbom: Option<String>,
    /// Build secrets by id.
    pub secrets: BTreeMap<String, Secret>,
    /// Labels that add to or replace the OCI labels.
    pub labels: BTreeMap<String, String>,
    /// Which cache mounts travel between agents through the registry.
    pub cache_mounts: CacheMounts,
    /// The size, in bytes, past which a travelling cache mount is not exported.
    pub cache_mount_limit: u64,
}

/// Which `RUN --mount=type=cache` folders travel between agents through the registry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CacheMounts {
    /// None (the default).
    #[default]
    None,
    /// Every cache mount of the stages built, each under its default tag.
    All,
    /// These ids, each under its tag template (`None`: the default tag).
    Chosen(BTreeMap<String, Option<Template>>),
}

/// `cache-mount-limit` when the table leaves it out.
pub const DEFAULT_CACHE_MOUNT_LIMIT: u64 = 4 << 30;

/// Where a table comes from, for error messages, placeholders and path resolution.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The package's name.
    pub package: String,
    /// The package's version.
    pub version: String,
    /// The package's Cargo.toml.
    pub manifest_path: PathBuf,
    /// The workspace root, for `{workspace}` in paths.
    pub workspace_root: PathBuf,
}

impl RawConfig {
    /// Reads a table given as JSON (as `cargo metadata` gives it, and `manifest` converts it).
    ///
    /// Every error names its key (`key `tags`: invalid type: ...`), and a string with a NUL
    /// byte is refused here: no program's argv can carry one, so it would fail later with an
    /// error that names nothing.
    pub fn from_json(value: &serde_json::Value) -> Result<RawConfig, String> {
        let mut path = Vec::new();
        nul_bytes(value, &mut path)?;
        RawConfig::deserialize(value).map_err(|e| {
            let text = e.to_string();
            let path = culprit(Vec::new(), value);
            if text.starts_with("unknown field") && path.len() <= 1 {
                // serde's text lists every key after `expected one of`; the note lists them
                // once, so the error keeps only the culprit.
                let culprit = text.split(", expected").next().unwrap_or(&text);
                let culprit = culprit.replacen("unknown field", "unknown key", 1);
                format!("{culprit}\nnote: the keys are {}", KEYS.join(", "))
            } else if path.is_empty() {
                text
            } else {
                format!("key `{}`: {text}", path.join("."))
            }
        })
    }

    /// This table over `defaults`: its own keys win, and tables merge key by key.
    pub fn over(self, defaults: &RawConfig) -> RawConfig {
        fn table<V: Clone>(
            own: Option<BTreeMap<String, V>>,
            defaults: &Option<BTreeMap<String, V>>,
        ) -> Option<BTreeMap<String, V>> {
            match (own, defaults) {
                (None, d) => d.clone(),
                (Some(own), None) => Some(own),
                (Some(own), Some(d)) => {
                    let mut merged = d.clone();
                    merged.extend(own);
                    Some(merged)
                }
            }
        }
        let d = defaults.clone();
        RawConfig {
            image: self.image.or(d.image),
            dockerfile: self.dockerfile.or(d.dockerfile),
            context: self.context.or(d.context),
            target: self.target.or(d.target),
            tags: self.tags.or(d.tags),
            cache_image: self.cache_image.or(d.cache_image),
            build_args: table(self.build_args, &defaults.build_args),
            network: self.network.or(d.network),
            platform: self.platform.or(d.platform),
            stages: table(self.stages, &defaults.stages),
            cache: self.cache.or(d.cache),
            cache_tag: self.cache_tag.or(d.cache_tag),
            default_branch: self.default_branch.or(d.default_branch),
            trust_all_branches: self.trust_all_branches.or(d.trust_all_branches),
            push_cache: self.push_cache.or(d.push_cache),
            provenance: self.provenance.or(d.provenance),
            sbom: self.sbom.or(d.sbom),
            secrets: table(self.secrets, &defaults.secrets),
            labels: table(self.labels, &defaults.labels),
            // Two tables merge key by key, as the other tables do; any other form wins whole.
            cache_mounts: match (self.cache_mounts, d.cache_mounts) {
                (Some(RawCacheMounts::Tags(own)), Some(RawCacheMounts::Tags(d))) => {
                    table(Some(own), &Some(d)).map(RawCacheMounts::Tags)
                }
                (own, d) => own.or(d),
            },
            cache_mount_limit: self.cache_mount_limit.or(d.cache_mount_limit),
        }
    }

    /// Validates the table: every error names the key, stage or path at fault.
    pub fn validate(self, origin: &Origin) -> anyhow::Result<Config> {
        let manifest_dir = origin
            .manifest_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        // `{package}` lets one workspace default serve every member.
        let fill = |text: &str| text.replace("{package}", &origin.package);
        let repository = |key: &str, value: &str| {
            Repository::parse(&fill(value)).map_err(|e| anyhow::anyhow!("key `{key}`: {e}"))
        };
        let image = self.image.context(
            "key `image` is missing\nnote: it names the final image's repository, e.g. `image = \"ghcr.io/acme/service\"`",
        )?;
        let image = repository("image", &image)?;
        let cache_image = match &self.cache_image {
            Some(c) => repository("cache-image", c)?,
            None => image.clone(),
        };

        let path = |value: Option<&str>, default: &str| {
            let value = fill(value.unwrap_or(default));
            let value = value.replace("{workspace}", &origin.workspace_root.to_string_lossy());
            if value == "." {
                manifest_dir.clone()
            } else {
                manifest_dir.join(value)
            }
        };
        let dockerfile = path(self.dockerfile.as_deref(), "Dockerfile");
        if !dockerfile.is_file() {
            bail!("key `dockerfile`: `{}` is not a file", dockerfile.display());
        }
        let context = path(self.context.as_deref(), ".");
        if !context.is_dir() {
            bail!("key `context`: `{}` is not a folder", context.display());
        }

        let target = self.target.map(RawTarget::into_name);
        if let Some(target) = &target {
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
        if let Some(network) = &self.network {
            plain_value("network", network)?;
        }
        let platforms = match self.platform {
            None => Vec::new(),
            Some(OneOrMany::One(p)) => vec![p],
            Some(OneOrMany::Many(list)) if list.is_empty() => {
                bail!("key `platform` is an empty list")
            }
            Some(OneOrMany::Many(list)) => list,
        };
        for platform in &platforms {
            plain_value("platform", platform)?;
            if platform.contains(',') {
                bail!("key `platform`: `{platform}` holds a `,`\nnote: give several platforms as a list, `platform = [\"linux/amd64\", \"linux/arm64\"]`");
            }
        }

        let mut stages = BTreeMap::new();
        for (stage, tag) in self.stages.unwrap_or_default() {
            not_a_flag("stages", &stage)?;
            let tag = Template::parse(&tag, Placeholder::FOR_CACHE_TAGS)
                .map_err(|e| anyhow::anyhow!("key `stages.{stage}`: {e}"))?;
            stages.insert(stage, tag);
        }

        let cache = match self.cache.as_deref() {
            None | Some("inline") => CacheMode::Inline,
            Some("registry") => CacheMode::Registry,
            Some(other) => bail!("key `cache`: `{other}` is not a cache mode\nnote: the modes are `inline` and `registry`"),
        };
        if platforms.len() > 1 && cache == CacheMode::Inline {
            bail!("key `platform`: a multi-platform image needs `cache = \"registry\"`\nnote: inline cache rides on one image per stage, and a multi-platform build makes an image index");
        }
        let cache_tag = Template::parse(
            self.cache_tag.as_deref().unwrap_or("buildcache"),
            Placeholder::FOR_CACHE_TAGS,
        )
        .map_err(|e| anyhow::anyhow!("key `cache-tag`: {e}"))?;
        if let Some(default_branch) = &self.default_branch {
            plain_value("default-branch", default_branch)?;
        }
        let default_branch = self.default_branch;
        let trust_all_branches = self.trust_all_branches.unwrap_or(false);
        let push_cache = match self.push_cache.as_deref() {
            None | Some("required") => PushCache::Required,
            Some("best-effort") => PushCache::BestEffort,
            Some(other) => bail!("key `push-cache`: `{other}` is not a policy\nnote: the policies are `required` and `best-effort`"),
        };
        let attestation =
            |key: &str, value: Option<BoolOrString>| -> anyhow::Result<Option<String>> {
                Ok(match value {
                    None => None,
                    Some(BoolOrString::Bool(b)) => Some(b.to_string()),
                    Some(BoolOrString::String(s)) => {
                        plain_value(key, &s)?;
                        Some(s)
                    }
                })
            };
        let provenance = attestation("provenance", self.provenance)?;
        let sbom = attestation("sbom", self.sbom)?;

        let mut secrets = BTreeMap::new();
        for (id, raw) in self.secrets.unwrap_or_default() {
            if id.is_empty()
                || id.starts_with('-')
                || id.contains([',', '='])
                || id.contains(char::is_whitespace)
            {
                bail!("key `secrets`: `{id}` is not a secret id");
            }
            let secret = match (raw.env, raw.file) {
                (Some(env), None) => {
                    if env.is_empty() || env.contains([',', '=']) {
                        bail!(
                            "key `secrets.{id}.env`: `{env}` is not an environment variable name"
                        );
                    }
                    Secret::Env(env)
                }
                (None, Some(file)) => {
                    if file.contains(',') {
                        bail!("key `secrets.{id}.file`: `{file}` holds a `,`, which `--secret` cannot take");
                    }
                    Secret::File(match file.strip_prefix("~/") {
                        Some(rest) => home_dir().join(rest),
                        None => manifest_dir.join(file),
                    })
                }
                _ => bail!("key `secrets.{id}`: give exactly one of `env` and `file`"),
            };
            secrets.insert(id, secret);
        }

        let labels = self.labels.unwrap_or_default();
        for key in labels.keys() {
            crate::labels::validate_label_key(key)
                .map_err(|e| anyhow::anyhow!("key `labels`: {e}"))?;
        }

        let chosen = |ids: Vec<(String, Option<String>)>| -> anyhow::Result<CacheMounts> {
            let mut chosen = BTreeMap::new();
            for (id, tag) in ids {
                if id.is_empty() {
                    bail!("key `cache-mounts`: an empty id");
                }
                let tag = tag
                    .map(|t| {
                        Template::parse(&t, Placeholder::FOR_CACHE_TAGS)
                            .map_err(|e| anyhow::anyhow!("key `cache-mounts.\"{id}\"`: {e}"))
                    })
                    .transpose()?;
                chosen.insert(id, tag);
            }
            Ok(CacheMounts::Chosen(chosen))
        };
        let cache_mounts = match self.cache_mounts {
            None | Some(RawCacheMounts::All(false)) => CacheMounts::None,
            Some(RawCacheMounts::All(true)) => CacheMounts::All,
            Some(RawCacheMounts::Ids(ids)) => {
                chosen(ids.into_iter().map(|id| (id, None)).collect())?
            }
            Some(RawCacheMounts::Tags(tags)) => {
                chosen(tags.into_iter().map(|(id, t)| (id, Some(t))).collect())?
            }
        };
        let cache_mount_limit = match self.cache_mount_limit {
            None => DEFAULT_CACHE_MOUNT_LIMIT,
            Some(RawSize::Bytes(bytes)) => bytes,
            Some(RawSize::Text(text)) => parse_size(&text).ok_or_else(|| {
                anyhow::anyhow!("key `cache-mount-limit`: `{text}` is not a size\nnote: write bytes, or a number with a unit: `\"4GiB\"`, `\"500MiB\"`, `\"2GB\"`")
            })?,
        };

        Ok(Config {
            package: origin.package.clone(),
            version: origin.version.clone(),
            manifest_dir,
            image,
            dockerfile,
            context,
            target,
            tags,
            cache_image,
            build_args,
            network: self.network,
            platforms,
            stages,
            cache,
            cache_tag,
            default_branch,
            trust_all_branches,
            push_cache,
            provenance,
            sbom,
            secrets,
            labels,
            cache_mounts,
            cache_mount_limit,
        })
    }
}

/// Refuses a string or a table key with a NUL byte anywhere in `value`, naming its key.
fn nul_bytes(value: &serde_json::Value, path: &mut Vec<String>) -> Result<(), String> {
    use serde_json::Value;
    let key = |path: &[String]| path.join(".");
    match value {
        Value::String(text) if text.contains('\0') => Err(format!(
            "key `{}`: the value holds a NUL byte, which no command line can carry",
            key(path)
        )),
        Value::Array(items) => items.iter().try_for_each(|item| nul_bytes(item, path)),
        Value::Object(map) => {
            for (name, item) in map {
                if name.contains('\0') {
                    return Err(format!(
                        "key `{}`: a key holds a NUL byte, which no command line can carry",
                        key(path)
                    ));
                }
                path.push(name.clone());
                let result = nul_bytes(item, path);
                path.pop();
                result?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The key (as a path of table keys) whose value the table cannot be read with: each key is
/// tried alone, then, inside the first that fails, each of its own keys, down to the deepest
/// that still fails. Only run on an error, so its cost does not matter.
fn culprit(path: Vec<String>, value: &serde_json::Value) -> Vec<String> {
    let fails = |path: &[String], leaf: &serde_json::Value| {
        let table = path.iter().rev().fold(leaf.clone(), |inner, key| {
            serde_json::Value::Object([(key.clone(), inner)].into_iter().collect())
        });
        RawConfig::deserialize(&table).is_err()
    };
    if let serde_json::Value::Object(map) = value {
        for (key, child) in map {
            let mut deeper = path.clone();
            deeper.push(key.clone());
            if fails(&deeper, child) {
                return culprit(deeper, child);
            }
        }
    }
    path
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Refuses a value that docker would take as a flag.
fn not_a_flag(key: &str, value: &str) -> anyhow::Result<()> {
    if value.starts_with('-') {
        bail!("key `{key}`: `{value}` starts with `-`, and docker would take it as a flag");
    }
    Ok(())
}

/// A value passed on as a flag's argument: not empty, not a flag.
fn plain_value(key: &str, value: &str) -> anyhow::Result<()> {
    not_a_flag(key, value)?;
    if value.trim().is_empty() {
        bail!("key `{key}` is empty");
    }
    Ok(())
}

/// A size with a unit (`KiB`, `MiB`, `GiB`, `TiB`, and decimal `KB`, `MB`, `GB`, `TB`, or
/// `B`), case-insensitive, a space allowed before the unit; `None` if it is none.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    let bytes = number * factor as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes <= u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    /// Any JSON value, a few levels deep.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
            prop::sample::select(vec![
                "-x",
                "{branch}",
                "{git_sha}",
                "a/b",
                "latest",
                "{",
                "}",
                "..",
                "Dockerfile",
                "."
            ])
            .prop_map(|s| Value::String(s.to_string())),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A table whose keys are mostly the real ones, with values of any type.
    fn table() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            prop::sample::select(KEYS.to_vec()).prop_map(str::to_string),
            ".{0,8}"
        ];
        prop::collection::btree_map(key, json(), 0..8)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Any table in: an error or a config out, never a panic; and a merge never panics.
        #[test]
        fn any_table_is_an_error_or_a_config(own in table(), defaults in table()) {
            // A package folder with a Dockerfile, so that validation goes past the paths.
            let dir = std::env::temp_dir().join("xtask-docker-config-property");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("Dockerfile"), "FROM scratch AS a\n").unwrap();
            let origin = Origin {
                package: "p".into(),
                version: "1.0.0".into(),
                manifest_path: dir.join("Cargo.toml"),
                workspace_root: dir.clone(),
            };
            let defaults = RawConfig::from_json(&defaults).unwrap_or_default();
            if let Ok(raw) = RawConfig::from_json(&own) {
                let _ = raw.over(&defaults).validate(&origin);
            }
        }
    }
}

/// Configs for the unit tests of the modules that come after this one.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;

    use super::{CacheMode, Config, PushCache};
    use crate::reference::Repository;
    use crate::template::{Placeholder, Template};

    /// A config as the table would give it, with every optional key at its default.
    pub(crate) fn config(stages: &[(&str, &str)], tags: &[&str]) -> Config {
        let template = |t: &str, allowed| Template::parse(t, allowed).unwrap();
        Config {
            package: "service".into(),
            version: "0.3.1".into(),
            manifest_dir: "/src/service".into(),
            image: Repository::parse("registry.example/acme/service").unwrap(),
            dockerfile: "/src/service/Dockerfile".into(),
            context: "/src/service".into(),
            target: None,
            tags: tags
                .iter()
                .map(|t| template(t, Placeholder::FOR_TAGS))
                .collect(),
            cache_image: Repository::parse("registry.example/acme/service").unwrap(),
            build_args: BTreeMap::new(),
            network: None,
            platforms: Vec::new(),
            stages: stages
                .iter()
                .map(|(s, t)| (s.to_string(), template(t, Placeholder::FOR_CACHE_TAGS)))
                .collect(),
            cache: CacheMode::Inline,
            cache_tag: template("buildcache", Placeholder::FOR_CACHE_TAGS),
            default_branch: None,
            trust_all_branches: false,
            push_cache: PushCache::Required,
            provenance: None,
            sbom: None,
            secrets: BTreeMap::new(),
            labels: BTreeMap::new(),
            cache_mounts: super::CacheMounts::None,
            cache_mount_limit: super::DEFAULT_CACHE_MOUNT_LIMIT,
        }
    }
}

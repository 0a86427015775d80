//! Which `RUN --mount=type=cache` folders of a package travel between agents through the
//! registry (`cache-mounts`), under which tag, and what their restore and export builds run on.
//!
//! A cache mount lives in one builder: a fresh CI agent starts with it empty. The tool carries
//! it in an image of its own (`FROM scratch`, the mount's files), exported after a build in
//! which a step that uses it ran, and restored into the mount before the next build on an agent
//! that lacks it. Both are small builds of a generated Dockerfile that run `sh` and `cp` in the
//! image the mount's stage starts from (its chain's first `FROM`), which the package's own build
//! pulls anyway.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::bail;

use crate::config::CacheMounts;
use crate::dockerfile::{CacheMount, StageGraph};
use crate::template::{Placeholder, Template};

/// A cache mount that travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TravellingMount {
    /// The cache's id, as the stages' `RUN`s name it (global `ARG`s expanded; BuildKit's
    /// platform args such as `$TARGETARCH` left for the restore and export builds to expand,
    /// as the package's own build does).
    pub id: String,
    /// The tag its image travels under, under `cache-image`.
    pub tag: Template,
    /// The steps that use it: (stage index, the `RUN`'s command, its line).
    pub uses: Vec<(usize, String, usize)>,
    /// The first use's options: the restore creates the mount with its `uid`, `gid`, `mode`.
    pub options: CacheMount,
    /// The image the restore and export builds run in: the first `FROM` of the first using
    /// stage's chain.
    pub base: String,
    /// The platform that `FROM` asks for (`--platform=$BUILDPLATFORM`, say), as written.
    pub base_platform: Option<String>,
    /// A step that uses it also mounts a secret, which it could write into the cache.
    pub with_secret: bool,
}

impl TravellingMount {
    /// The warning for a mount that a step which also mounts a secret uses: whatever that step
    /// writes into the mount (a token in a config file, say) is pushed to the registry.
    pub fn secret_warning(&self, graph: &StageGraph) -> Option<String> {
        self.with_secret.then(|| {
            format!(
                "a step that uses the travelling cache mount `{}` also mounts a secret: whatever it writes into the mount is pushed to the registry with it\nnote: keep secrets out of the mount's folder, or leave the mount out of `cache-mounts`; the steps: {}",
                self.id,
                self.uses
                    .iter()
                    .map(|(stage, _, line)| format!("stage `{}` line {line}", graph.name(*stage)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// How `check` shows it: its id, its tag and the steps that use it.
    pub fn describe(&self, graph: &StageGraph, cache_image: &str) -> String {
        let uses: Vec<String> = self
            .uses
            .iter()
            .map(|(stage, command, line)| {
                format!("`{}` line {line} `RUN {command}`", graph.name(*stage))
            })
            .collect();
        format!(
            "cache mount `{}` travels as `{cache_image}:{}` (restored and exported in `{}`); used by {}",
            self.id,
            self.tag,
            self.base,
            uses.join(", ")
        )
    }
}

/// The travelling mounts of the stages `built` (every stage a build of the package runs).
pub(super) fn travelling(
    graph: &StageGraph,
    built: &BTreeSet<usize>,
    chosen: &CacheMounts,
) -> anyhow::Result<Vec<TravellingMount>> {
    let wanted = |id: &str| match chosen {
        CacheMounts::None => None,
        CacheMounts::All => Some(None),
        CacheMounts::Chosen(ids) => ids.get(id).cloned(),
    };
    if matches!(chosen, CacheMounts::None) {
        return Ok(Vec::new());
    }
    let mut mounts: BTreeMap<String, TravellingMount> = BTreeMap::new();
    let mut order = Vec::new();
    for &index in built {
        let stage = &graph.stages[index];
        for used in &stage.cache_mounts {
            let id = used.mount.id.clone();
            let Some(tag) = wanted(&id) else { continue };
            let name = graph.name(index);
            if used.mount.from.is_some() || used.mount.source.is_some() {
                bail!(
                    "key `cache-mounts`: the cache mount `{id}` of stage `{name}` (line {}) is seeded with `from`/`source`, and such a mount cannot travel: BuildKit keeps it apart from the plain mount of the same id\nnote: leave it out of `cache-mounts`, or drop `from`/`source` from the mount",
                    used.line
                );
            }
            if let Some(mount) = mounts.get_mut(&id) {
                mount.uses.push((index, used.command.clone(), used.line));
                mount.with_secret |= used.with_secret;
                continue;
            }
            let (base, base_platform) = first_from(graph, index);
            if base == "scratch" {
                bail!(
                    "key `cache-mounts`: stage `{name}` (line {}) uses the travelling cache mount `{id}`, but its first `FROM` is `scratch`: the builds that restore and export the mount run `sh` and `cp` in that image\nnote: start the stage's chain from an image with a shell, or leave the mount out of `cache-mounts`",
                    used.line
                );
            }
            let tag = match tag {
                Some(tag) => tag,
                None => default_tag(&id)?,
            };
            order.push(id.clone());
            mounts.insert(
                id.clone(),
                TravellingMount {
                    id,
                    tag,
                    uses: vec![(index, used.command.clone(), used.line)],
                    options: used.mount.clone(),
                    base,
                    base_platform,
                    with_secret: used.with_secret,
                },
            );
        }
    }
    if let CacheMounts::Chosen(ids) = chosen {
        for id in ids.keys() {
            if !mounts.contains_key(id) {
                let known: BTreeSet<String> = built
                    .iter()
                    .flat_map(|&i| graph.stages[i].cache_mounts.iter())
                    .map(|u| format!("`{}`", u.mount.id))
                    .collect();
                let note = if known.is_empty() {
                    "note: no stage the package builds has a `RUN --mount=type=cache`".to_string()
                } else {
                    format!(
                        "note: the cache mounts of the stages built are {}",
                        known.into_iter().collect::<Vec<_>>().join(", ")
                    )
                };
                bail!("key `cache-mounts`: no stage the package builds mounts a cache of id `{id}`\n{note}");
            }
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|id| mounts.remove(&id))
        .collect())
}

/// The first `FROM` of `stage`'s chain (its base, its base's base, ...), with its platform.
fn first_from(graph: &StageGraph, stage: usize) -> (String, Option<String>) {
    let mut at = &graph.stages[stage];
    while let Some(base) = at.base_stage {
        at = &graph.stages[base];
    }
    (at.base.clone(), at.platform.clone())
}

/// `mount-<id as a tag>-{branch}`: the id made tag-safe, with a hash of it when that changed
/// it (so `a/b` and `a-b` travel apart), under the current branch.
fn default_tag(id: &str) -> anyhow::Result<Template> {
    use sha2::{Digest, Sha256};
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut safe = safe.trim_matches(|c| c == '-' || c == '.').to_string();
    while safe.contains("--") {
        safe = safe.replace("--", "-");
    }
    safe.truncate(48);
    if safe != id || safe.is_empty() {
        let hash = Sha256::digest(id.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        safe = format!("{safe}-{}", &hash[..8])
            .trim_start_matches('-')
            .to_string();
    }
    Template::parse(
        &format!("mount-{safe}-{{branch}}"),
        Placeholder::FOR_CACHE_TAGS,
    )
    .map_err(|e| anyhow::anyhow!("the cache mount `{id}`'s tag: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(dockerfile: &str, chosen: CacheMounts) -> anyhow::Result<Vec<TravellingMount>> {
        let graph = StageGraph::parse(dockerfile).unwrap();
        let built: BTreeSet<usize> = (0..graph.stages.len()).collect();
        travelling(&graph, &built, &chosen)
    }

    const CHEF: &str = "\
FROM rust@sha256:0000000000000000000000000000000000000000000000000000000000000000 AS chef
RUN cargo install cargo-chef
FROM chef AS deps
RUN --mount=type=cache,target=/usr/local/cargo/registry,uid=1000 cargo chef cook
FROM deps AS build
RUN --mount=type=cache,target=/usr/local/cargo/registry --mount=type=cache,id=target,target=/app/target cargo build
FROM debian AS runtime
";

    #[test]
    fn every_mount_or_the_chosen_ones_travel_from_their_chain_s_first_image() {
        let all = mounts(CHEF, CacheMounts::All).unwrap();
        let ids: Vec<&str> = all.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["/usr/local/cargo/registry", "target"]);
        let registry = &all[0];
        assert!(
            registry.base.starts_with("rust@sha256:"),
            "{}",
            registry.base
        );
        assert_eq!(
            registry.uses.iter().map(|u| u.0).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(
            registry.options.uid.as_deref(),
            Some("1000"),
            "the first use's options"
        );
        assert_eq!(
            registry.tag.to_string(),
            "mount-usr-local-cargo-registry-bc7aac6c-{branch}"
        );
        assert_eq!(all[1].tag.to_string(), "mount-target-{branch}");

        let chosen = CacheMounts::Chosen(BTreeMap::from([(
            "target".to_string(),
            Some(Template::parse("t-{branch}", Placeholder::FOR_CACHE_TAGS).unwrap()),
        )]));
        let one = mounts(CHEF, chosen).unwrap();
        assert_eq!(
            (one.len(), one[0].tag.to_string()),
            (1, "t-{branch}".to_string())
        );
        assert!(mounts(CHEF, CacheMounts::None).unwrap().is_empty());
    }

    #[test]
    fn a_mount_that_cannot_travel_says_why_and_what_to_do() {
        let typo = CacheMounts::Chosen(BTreeMap::from([("targte".to_string(), None)]));
        let err = mounts(CHEF, typo).unwrap_err().to_string();
        assert!(
            err.contains("id `targte`") && err.contains("`target`"),
            "{err}"
        );
        let scratch = "FROM scratch AS base\nCOPY busybox /bin/\nFROM base AS build\nRUN --mount=type=cache,target=/c make\n";
        let err = mounts(scratch, CacheMounts::All).unwrap_err().to_string();
        assert!(
            err.contains("stage `build` (line 4)") && err.contains("`scratch`"),
            "{err}"
        );
        let seeded =
            "FROM rust AS build\nRUN --mount=type=cache,target=/c,from=rust,source=/x make\n";
        let err = mounts(seeded, CacheMounts::All).unwrap_err().to_string();
        assert!(err.contains("`from`/`source`"), "{err}");
    }

    #[test]
    fn ids_that_a_tag_cannot_hold_get_a_hash() {
        let a = default_tag("a/b").unwrap().to_string();
        let b = default_tag("a-b").unwrap().to_string();
        assert_ne!(a, b);
        assert_eq!(b, "mount-a-b-{branch}");
        assert!(default_tag("$TARGETARCH")
            .unwrap()
            .to_string()
            .starts_with("mount-targetarch-"));
        assert!(default_tag(&"x".repeat(300)).unwrap().to_string().len() < 80);
    }

    #[test]
    fn check_shows_each_mount_and_warns_of_a_secret_beside_it() {
        let with_secret = "FROM rust AS build\nRUN --mount=type=secret,id=npm --mount=type=cache,target=/root/.npm npm ci\n";
        let graph = StageGraph::parse(with_secret).unwrap();
        let all = mounts(with_secret, CacheMounts::All).unwrap();
        let warning = all[0].secret_warning(&graph).expect("a warning");
        assert!(
            warning.contains("`/root/.npm`") && warning.contains("stage `build` line 2"),
            "{warning}"
        );
        assert_eq!(
            all[0].describe(&graph, "r/x"),
            "cache mount `/root/.npm` travels as `r/x:mount-root-.npm-9a9bd570-{branch}` (restored and exported in `rust`); used by `build` line 2 `RUN npm ci`"
        );
        let plain = mounts(CHEF, CacheMounts::All).unwrap();
        let graph = StageGraph::parse(CHEF).unwrap();
        assert!(plain.iter().all(|m| m.secret_warning(&graph).is_none()));
    }
}

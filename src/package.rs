//! A package's configuration checked against its Dockerfile's stage graph.

use std::collections::BTreeMap;

use anyhow::{bail, Context};

use crate::config::Config;
use crate::dockerfile::StageGraph;
use crate::template::{Placeholder, Template};

mod mounts;

pub use mounts::TravellingMount;

/// A package ready to be planned: its config, its stage graph, and which stages are cached.
#[derive(Debug, Clone)]
pub struct Package {
    /// The validated configuration.
    pub config: Config,
    /// The Dockerfile's stages.
    pub graph: StageGraph,
    /// The final stage.
    pub target: usize,
    /// Every cached stage (the final target always is) -> its cache tag.
    pub cached: BTreeMap<usize, Template>,
    /// The Dockerfile's text, as read: what the registry check's fingerprint hashes.
    pub dockerfile_text: String,
    /// The cache mounts that travel between agents (`cache-mounts`), in the order the stages
    /// built use them first.
    pub mounts: Vec<TravellingMount>,
}

impl Package {
    /// Parses the Dockerfile text and checks that every stage the config names exists.
    pub fn resolve(config: Config, dockerfile: &str) -> anyhow::Result<Package> {
        let graph =
            StageGraph::parse_with_args(dockerfile, &config.build_args).with_context(|| {
                format!(
                    "cannot read the stages of `{}`",
                    config.dockerfile.display()
                )
            })?;
        let stage_names = || {
            let names: Vec<String> = (0..graph.stages.len())
                .map(|i| format!("`{}`", graph.name(i)))
                .collect();
            names.join(", ")
        };
        let target = match &config.target {
            Some(name) => graph.find(name).with_context(|| {
                format!(
                    "key `target`: `{}` has no stage `{name}`\nnote: its stages are {}",
                    config.dockerfile.display(),
                    stage_names()
                )
            })?,
            None => graph.last(),
        };
        unnamed_buildable(&graph, target, "target")?;
        let mut cached = BTreeMap::new();
        for (name, tag) in &config.stages {
            let stage = graph.find(name).with_context(|| {
                format!(
                    "key `stages.{name}`: `{}` has no stage `{name}`\nnote: its stages are {}",
                    config.dockerfile.display(),
                    stage_names()
                )
            })?;
            unnamed_buildable(&graph, stage, &format!("stages.{name}"))?;
            if cached.insert(stage, tag.clone()).is_some() {
                bail!("key `stages`: stage `{}` is named twice", graph.name(stage));
            }
        }
        if let std::collections::btree_map::Entry::Vacant(entry) = cached.entry(target) {
            let tag = Template::parse(&graph.name(target), Placeholder::FOR_CACHE_TAGS)
                .map_err(|e| anyhow::anyhow!("the final stage's cache tag: {e}"))?;
            entry.insert(tag);
        }
        // Every stage a build of the package runs: the target's and the cached stages' chains.
        let built: std::collections::BTreeSet<usize> = cached
            .keys()
            .chain([&target])
            .flat_map(|&s| std::iter::once(s).chain(graph.ancestors(s)))
            .collect();
        let mounts = mounts::travelling(&graph, &built, &config.cache_mounts)?;
        Ok(Package {
            config,
            graph,
            target,
            cached,
            dockerfile_text: dockerfile.to_string(),
            mounts,
        })
    }

    /// The `--target` that builds `stage`: its name, or none for an unnamed stage (which
    /// [`Package::resolve`] allows only as the last one, what a build without `--target` builds).
    pub fn target_arg(&self, stage: usize) -> Option<String> {
        self.graph
            .stages
            .get(stage)
            .and_then(|s| s.name.clone())
            .or_else(|| (stage != self.graph.last()).then(|| self.graph.name(stage)))
    }

    /// The cached stages in build order: dependencies first (ties in Dockerfile order), the
    /// final target last unless a cached stage needs it.
    pub fn build_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = self
            .graph
            .topo_order()
            .into_iter()
            .filter(|s| self.cached.contains_key(s))
            .collect();
        let needed_by_other = self
            .cached
            .keys()
            .any(|&s| s != self.target && self.graph.ancestors(s).contains(&self.target));
        if !needed_by_other {
            order.retain(|&s| s != self.target);
            order.push(self.target);
        }
        order
    }

    /// The cached stages that `stage` needs, transitively, nearest first.
    pub fn cached_ancestors(&self, stage: usize) -> Vec<usize> {
        self.graph
            .ancestors(stage)
            .into_iter()
            .filter(|s| self.cached.contains_key(s))
            .collect()
    }

    /// The stages whose cache images a build of `stage` reads, in order: its own first, then
    /// those of the cached stages it needs (nearest first); the final target then reads every
    /// other cached stage's too.
    pub fn cache_sources(&self, stage: usize) -> Vec<usize> {
        let mut sources = vec![stage];
        sources.extend(self.cached_ancestors(stage));
        if stage == self.target {
            for &other in self.cached.keys() {
                if !sources.contains(&other) {
                    sources.push(other);
                }
            }
        }
        sources
    }
}

/// Refuses a stage the tool would have to build by `--target` when it has no `AS` name:
/// BuildKit resolves `--target` by name only (`target stage stage-0 could not be found`), and
/// builds an unnamed stage only as the last one, without `--target`.
fn unnamed_buildable(graph: &StageGraph, stage: usize, key: &str) -> anyhow::Result<()> {
    let Some(found) = graph.stages.get(stage) else {
        return Ok(());
    };
    if found.name.is_none() && stage != graph.last() {
        bail!(
            "key `{key}`: stage `{}` (line {}) has no name, and BuildKit builds an unnamed stage only as the last one, without `--target`\nnote: name it (`FROM ... AS name`) and use the name",
            graph.name(stage),
            found.line
        );
    }
    Ok(())
}

//! The branch boundary: which of a package's tags a run may write.
//!
//! A cache tag is an input to every later build that reads it. A build of a branch other than
//! the default one runs that branch's code (its Dockerfile, its xtask) on an agent that often
//! holds registry credentials, so it writes only tags that belong to its branch: cache tags
//! whose template has `{branch}`, and never one that the default branch's builds read (a tag
//! shared by all branches, or one a branch's name happens to render into) nor a marker tag.
//! Its final tags are its job's business (`--push` publishes them), except one that is also a
//! tag the default branch's builds read. `trust-all-branches` lifts the boundary. A run that
//! pushes nothing writes nothing to the registry, and so is not bounded.

use std::collections::BTreeSet;

use super::{cache_refs, CacheRefs, Options, Push};
use crate::git::{DefaultBranch, DefaultSource, NoBranch};
use crate::package::Package;
use crate::template::{Placeholder, Template, Vars};

/// What a package's run may write, decided once per package.
#[derive(Debug, Clone)]
pub struct Boundary {
    /// The default branch: the package's `default-branch` key, else the run's.
    pub default: DefaultBranch,
    /// The run writes every tag: it builds the default branch, or the config trusts every
    /// branch (`trust-all-branches`).
    pub trusted: bool,
    /// The run pushes: only then is anything written where other builds read it.
    pushes: bool,
    /// Every ref the default branch's builds of the package read: its cache tags, its
    /// registry cache, its cache mounts' copies.
    pub default_reads: BTreeSet<String>,
}

/// The tag of a marker (`inputs-<sha256>`, see `marker`): only a trusted build writes one.
fn is_marker(image: &str) -> bool {
    image
        .rsplit_once(':')
        .is_some_and(|(_, tag)| tag.starts_with("inputs-"))
}

/// Every cache tag template of a package, with what it caches and the config line that scopes
/// it to the branch (for the warning's note).
fn templates(package: &Package) -> Vec<(&Template, String, String)> {
    use crate::config::CacheMode;
    let config = &package.config;
    let scoped = |t: &Template| format!("{t}-{{branch}}");
    let mut out = Vec::new();
    match config.cache {
        CacheMode::Inline => {
            for (&stage, template) in &package.cached {
                let name = package.graph.name(stage);
                out.push((
                    template,
                    format!("stage `{name}`"),
                    format!("`{name} = \"{}\"` under `stages`", scoped(template)),
                ));
            }
        }
        CacheMode::Registry => out.push((
            &config.cache_tag,
            "the registry cache".to_string(),
            format!("`cache-tag = \"{}\"`", scoped(&config.cache_tag)),
        )),
    }
    for mount in &package.mounts {
        out.push((
            &mount.tag,
            format!("cache mount `{}`", mount.id),
            format!(
                "`cache-mounts = {{ \"{}\" = \"{}\" }}`",
                mount.id,
                scoped(&mount.tag)
            ),
        ));
    }
    out
}

impl Boundary {
    /// The boundary of `package` built with `vars` (the branch) and `options` (the default
    /// branch the run detected, what it pushes).
    pub fn of(package: &Package, vars: &Vars, options: &Options) -> anyhow::Result<Boundary> {
        let config = &package.config;
        let default = match &config.default_branch {
            Some(name) => DefaultBranch {
                name: name.clone(),
                source: DefaultSource::Config,
            },
            None => options.default_branch.clone(),
        };
        let trusted =
            config.trust_all_branches || vars.branch.as_deref() == Some(default.name.as_str());
        let on_default = Vars {
            branch: Some(default.name.clone()),
            ..vars.clone()
        };
        let mut default_reads = BTreeSet::new();
        for (template, what, _) in templates(package) {
            let refs = cache_refs(template, &config.cache_image, &on_default, &default.name)
                .map_err(|e| anyhow::anyhow!("package `{}`, {what}: {e}", config.package))?;
            default_reads.extend(refs.read);
        }
        Ok(Boundary {
            default,
            trusted,
            pushes: options.push != Push::Nothing,
            default_reads,
        })
    }

    /// Whether the run may write `image`.
    pub fn allows(&self, image: &str) -> bool {
        !self.pushes || self.trusted || !(self.default_reads.contains(image) || is_marker(image))
    }

    /// Whether the run writes markers, and so runs the registry check: only a trusted one.
    pub fn writes_markers(&self) -> bool {
        self.trusted
    }

    /// [`cache_refs`] of `template` within the boundary: read from the branch, then from the
    /// default branch; written only where [`Boundary::allows`] it.
    pub fn refs(
        &self,
        template: &Template,
        repository: &crate::reference::Repository,
        vars: &Vars,
    ) -> Result<CacheRefs, String> {
        let mut refs = cache_refs(template, repository, vars, &self.default.name)?;
        if refs.write.as_deref().is_some_and(|w| !self.allows(w)) {
            refs.write = None;
        }
        Ok(refs)
    }

    /// The ref of the default branch's that a branch-scoped `template` falls back to, when the
    /// run builds another branch (or none): asked of the registry, so that a missing one is
    /// told as the default branch's.
    pub fn fallback(
        &self,
        template: &Template,
        repository: &crate::reference::Repository,
        vars: &Vars,
    ) -> Option<String> {
        if !template.uses(Placeholder::Branch)
            || vars.branch.as_deref() == Some(self.default.name.as_str())
        {
            return None;
        }
        let refs = cache_refs(template, repository, vars, &self.default.name).ok()?;
        refs.read
            .last()
            .filter(|r| refs.write.as_ref() != Some(*r))
            .cloned()
    }
}

/// The warnings of a package's run about what its boundary keeps it from writing: the tags
/// shared with the default branch that it does not push, and the branch-scoped tags it cannot
/// write without a branch. None when the run pushes nothing.
pub(super) fn warnings(
    package: &Package,
    vars: &Vars,
    options: &Options,
    boundary: &Boundary,
    finals: &[String],
) -> Vec<String> {
    if options.push == Push::Nothing {
        return Vec::new();
    }
    let config = &package.config;
    let name = &config.package;
    let who = match (&vars.branch, options.no_branch) {
        (Some(branch), _) => format!("branch `{branch}`"),
        (None, Some(NoBranch::NoCommit)) => "no branch: git names no commit".to_string(),
        (None, _) => "no branch: a detached HEAD".to_string(),
    };
    // Without a branch the build may well be the default branch's, which git cannot tell.
    let name_it = match vars.branch {
        Some(_) => "",
        None => "; a build of the default branch names it with `--branch`",
    };
    let mut shared = Vec::new();
    let mut fixes = Vec::new();
    let mut unbranched = Vec::new();
    for (template, what, fix) in templates(package) {
        let Ok(refs) = cache_refs(template, &config.cache_image, vars, &boundary.default.name)
        else {
            continue;
        };
        match refs.write {
            Some(image) if !boundary.allows(&image) => {
                shared.push(format!("`{image}` ({what})"));
                fixes.push(fix);
            }
            Some(_) => {}
            None => unbranched.push(format!("`{}:{template}` ({what})", config.cache_image)),
        }
    }
    if options.push == Push::All {
        for image in finals.iter().filter(|f| !boundary.allows(f)) {
            shared.push(format!("`{image}` (a final tag)"));
            fixes.push("a final tag of its own, apart from every cache tag".to_string());
        }
    }
    let mut out = Vec::new();
    if !shared.is_empty() {
        let one = shared.len() == 1;
        out.push(format!(
            "package `{name}`: this build ({who}) does not push {}: the builds of the default branch {} read {}, and only they write {}\nnote: scope {} to the branch, so that this branch keeps a cache of its own: {}; or, if every branch's builds may write what the default branch's builds read, set `trust-all-branches = true` (see the README's Security section){name_it}",
            shared.join(", "),
            boundary.default.describe(),
            if one { "it" } else { "them" },
            if one { "it" } else { "them" },
            if one { "it" } else { "each" },
            fixes.join(", "),
        ));
    }
    if !unbranched.is_empty() {
        let why = match options.no_branch {
            Some(NoBranch::NoCommit) => {
                "git names no commit (not a git checkout, or no commit yet)"
            }
            Some(NoBranch::Detached) | None => {
                "git is on a detached HEAD, and neither `--branch` nor a CI variable names a branch"
            }
        };
        let one = unbranched.len() == 1;
        out.push(format!(
            "package `{name}`: this build has no branch ({why}), so it does not write {}{}: {} read from the default branch {} only\nnote: pass `--branch NAME` to build as a branch, or build from a branch's checkout",
            if one { "" } else { "any of " },
            unbranched.join(", "),
            if one { "it is" } else { "they are" },
            boundary.default.describe(),
        ));
    }
    out
}

/// What `check` says of a package's boundary: the tags the default branch's builds read
/// (which only they write), and those a build of another branch may write. `detected` is the
/// default branch the run detected; the package's `default-branch` key wins.
pub fn describe(package: &Package, detected: &DefaultBranch) -> String {
    let config = &package.config;
    let default = match &config.default_branch {
        Some(name) => DefaultBranch {
            name: name.clone(),
            source: DefaultSource::Config,
        },
        None => detected.clone(),
    };
    let on_default = Vars {
        version: config.version.clone(),
        git_sha: None,
        branch: Some(default.name.clone()),
    };
    let repo = &config.cache_image;
    let mut reads = Vec::new();
    let mut branch_writes = Vec::new();
    let mut shared = Vec::new();
    for (template, what, _) in templates(package) {
        let rendered = cache_refs(template, repo, &on_default, &default.name)
            .ok()
            .and_then(|r| r.read.into_iter().next())
            .unwrap_or_else(|| format!("{repo}:{template}"));
        reads.push(format!("`{rendered}` ({what})"));
        if template.uses(Placeholder::Branch) {
            branch_writes.push(format!("`{repo}:{template}` ({what})"));
        } else {
            shared.push(format!("`{rendered}` ({what})"));
        }
    }
    let finals: Vec<String> = config
        .tags
        .iter()
        .map(|t| format!("`{}:{t}`", config.image))
        .collect();
    let mut out = format!(
        "  branch boundary: the default branch is {}\n    the default branch's builds read {}, and its markers `{repo}:inputs-*`\n",
        default.describe(),
        reads.join(", ")
    );
    if config.trust_all_branches {
        out.push_str("    `trust-all-branches = true`: a build of any branch writes every one of them, markers included\n");
        return out;
    }
    out.push_str(&format!(
        "    a build of another branch writes {}; with `--push` its final tags {} (but none that is a tag above); never a marker\n",
        if branch_writes.is_empty() {
            "no cache tag".to_string()
        } else {
            branch_writes.join(", ")
        },
        finals.join(", ")
    ));
    if !shared.is_empty() {
        out.push_str(&format!(
            "    shared by all branches, so written by the default branch's builds only: {}\n",
            shared.join(", ")
        ));
    }
    out
}

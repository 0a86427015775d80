//! The plan: every command a run may start, as a pure value that prints as shell lines.
//!
//! Nothing here runs anything. The executor runs each step once the steps it waits for are done
//! (independent steps at once) and decides, from what the run has learned, whether a step that
//! may be skipped is; the dry run prints every step in order, with those rules as comments.
//!
//! With inline cache, the final target is built first, reading every cached stage's cache: that
//! one BuildKit build runs (in parallel, inside BuildKit) whatever changed. The other cached
//! stages are built after it, from the engine's now warm cache, only to tag and push their cache
//! images, and not at all when nothing in them ran and the registry already holds their cache
//! image: on a fresh CI agent with nothing changed, no intermediate stage image is downloaded.
//!
//! The rooms: [`inline`] and [`registry`] plan one package for each cache mode, [`marker`]
//! names a package's build and wraps its steps between the registry check and the marker's
//! push, [`shell`] prints steps as shell lines.

use std::collections::BTreeMap;

use crate::package::Package;
use crate::template::{Placeholder, Template, Vars};

mod boundary;
mod inline;
mod marker;
mod mounts;
mod registry;
mod shell;

pub use boundary::{describe as describe_boundary, Boundary};
pub use marker::may_skip;
pub use mounts::{
    exporting_whole, on_base, on_scratch, printed_added, printed_size, MountKind, MountStep,
    COPIED, MAX_LAYERS, MOUNTED, WHOLE,
};

/// What to push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Nothing.
    Nothing,
    /// Cache images only, never the final tags (pull requests), and a refused cache push is a
    /// warning.
    CacheOnly,
    /// Cache images and final tags.
    All,
}

/// What the plan needs to know of the docker CLI and the engine's builder: which progress form
/// its builds can print (BuildKit's machine-readable `rawjson` tells a cache hit whose layers
/// were downloaded from a step that ran; the plain form can lose the difference, see
/// `progress`), and whether a build can push the image it makes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cli {
    /// `docker build` goes through buildx (Docker 23 and later); else it is the classic
    /// BuildKit client (`DOCKER_BUILDKIT=1`), which prints plain progress only.
    pub build_through_buildx: bool,
    /// buildx prints `--progress=rawjson` (0.13 and later; 0.12 has it too, untried here).
    pub rawjson: bool,
    /// The engine keeps its images in the containerd image store: its own builder can then
    /// push from a build an image compressed as asked, without the store's copy and `docker
    /// push`'s gzip.
    pub containerd_store: bool,
}

impl Cli {
    /// A current CLI on an engine with the classic image store: what a run plans for until its
    /// preflight has asked, and what a dry run prints.
    pub const CURRENT: Cli = Cli {
        build_through_buildx: true,
        rawjson: true,
        containerd_store: false,
    };

    /// The `--progress` flag of a build: of `docker buildx build` when `buildx`, else of
    /// `docker build`.
    fn progress(self, buildx: bool) -> &'static str {
        if self.rawjson && (buildx || self.build_through_buildx) {
            "--progress=rawjson"
        } else {
            "--progress=plain"
        }
    }
}

/// What builds, where it changes the image and the checkout does not say: the marker hashes it
/// (see `marker`), so that a build by another engine, builder or CLI setting is another build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The engine's platform and version (`linux/amd64 20.10.24`), as the preflight tells (before
    /// it, as the engine's socket told; `None` when not known).
    pub engine: Option<String>,
    /// A builder other than the engine's own (`--builder`, `BUILDX_BUILDER`): its driver,
    /// BuildKit version and platform, as `docker buildx inspect` tells (`None` when not known).
    /// `None` outside: no builder is named.
    pub builder: Option<Option<String>>,
    /// The docker CLI's environment variables that change what it builds, with their values
    /// (`SOURCE_DATE_EPOCH`, `DOCKER_DEFAULT_PLATFORM`, ...), sorted.
    pub env: Vec<(String, String)>,
}

/// How to plan.
#[derive(Debug, Clone)]
pub struct Options {
    /// The docker CLI to run.
    pub docker: String,
    /// What it can do.
    pub cli: Cli,
    /// What to push.
    pub push: Push,
    /// `docker pull` every cache image before the builds (`--pull-cache always`).
    pub pull_first: bool,
    /// A buildx builder other than the engine's own.
    pub builder: Option<String>,
    /// Load the final image into the engine even where the build pushes it itself.
    pub load: bool,
    /// Build every step, reading no cache.
    pub no_cache: bool,
    /// Build even when the registry holds this build (the marker is still pushed).
    pub rebuild: bool,
    /// Build arguments from the command line; they win over the config's.
    pub build_args: BTreeMap<String, String>,
    /// Tags from the command line, added to every package's final tags.
    pub tags: Vec<String>,
    /// The run's name (its start time and process), which the builds that restore and export
    /// cache mounts carry so that BuildKit runs them every time.
    pub run_id: String,
    /// What builds (the engine, the builder, the CLI's environment).
    pub facts: Facts,
    /// The default branch as the run detected it (a package's `default-branch` key wins).
    pub default_branch: crate::git::DefaultBranch,
    /// Why `{branch}` has no value, when the packages' vars have no branch.
    pub no_branch: Option<crate::git::NoBranch>,
}

#[cfg(test)]
impl Options {
    /// Options for `docker` that push nothing and pull nothing.
    pub fn new(docker: &str) -> Options {
        Options {
            docker: docker.to_string(),
            cli: Cli::CURRENT,
            push: Push::Nothing,
            pull_first: false,
            builder: None,
            load: false,
            no_cache: false,
            rebuild: false,
            build_args: BTreeMap::new(),
            tags: Vec::new(),
            run_id: "run".into(),
            facts: Facts::default(),
            default_branch: crate::git::DefaultBranch::assumed(),
            no_branch: None,
        }
    }
}

/// One package to plan, with the values its tags are filled with and its final image's labels.
#[derive(Debug, Clone)]
pub struct Input {
    /// The package.
    pub package: Package,
    /// Placeholder values.
    pub vars: Vars,
    /// Labels of the final image.
    pub labels: BTreeMap<String, String>,
    /// The fingerprint of what the build reads from the checkout (see `fingerprint`), when the
    /// run may skip a build that the registry already holds.
    pub sources: Option<String>,
}

/// What a step does, with what the executor and the report need to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `docker manifest inspect` of one image: asks the registry what it holds.
    Inspect(Inspect),
    /// `docker pull` of a cache image; a missing image is "no cache yet", not an error.
    Pull(Pull),
    /// A build of one stage.
    Build(Build),
    /// `docker push` of one tag.
    Push(PushTag),
    /// Pushes the marker tag, once every other step of the package succeeded (where the final
    /// build does not push it with the image).
    Mark {
        /// The marker tag.
        marker: String,
    },
    /// A restore, export or push of a travelling cache mount.
    Mount(MountStep),
}

/// A question to the registry: whether it holds `image`, and which image manifests it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspect {
    /// The image reference.
    pub image: String,
    /// What the answer decides.
    pub role: Role,
    /// For a [`Role::Fallback`] question: the default branch and where its name came from, as
    /// the warning about a missing cache says it (display only).
    pub default_branch: Option<String>,
}

/// What the answer of an [`Inspect`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The marker tag (`<cache-image>:inputs-<fingerprint>`): when the registry holds it, and
    /// every [`Role::Final`] tag holds the same image, no other step of the package runs.
    Marker,
    /// A final tag, which must hold the marker's image for the package to be skipped.
    Final,
    /// The registry cache that a build which pushes the marker with its image exports: a failed
    /// export follows the push, so it too must be there for the package to be skipped.
    Export,
    /// A cache image whose presence decides whether a stage build or a push is skipped, and
    /// whether a stage build may start at once (a stage whose cache the registry lacks cannot
    /// be skipped).
    Cache,
    /// After a best-effort registry cache export (`ignore-error=true` hides a failed one):
    /// whether the cache was written.
    Written,
    /// The default branch's cache that a build of another branch falls back to: decides
    /// nothing, but a missing one is warned of as the default branch's (a wrong default branch
    /// reads a cache that never exists).
    Fallback,
    /// After the final build that pushed it without exporting the registry cache: the final
    /// image's layers, which the export-only build's skip compares with the registry cache's.
    Built,
}

impl Role {
    /// Whether the answer belongs to the registry check that may skip the whole package.
    pub fn is_lookup(self) -> bool {
        matches!(self, Role::Marker | Role::Final | Role::Export)
    }

    /// Whether the question is asked before any build (all but [`Role::Written`]), and so may
    /// go out early, while the preflight runs.
    pub fn is_asked_first(self) -> bool {
        !matches!(self, Role::Written | Role::Built)
    }
}

/// A `docker pull` of a cache image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    /// The image reference.
    pub image: String,
    /// When it runs.
    pub when: PullWhen,
    /// When the image is the default branch's tag that a build of another branch falls back
    /// to: the default branch and where its name came from, as the warning about a missing
    /// one says it (display only).
    pub default_branch: Option<String>,
}

/// When a [`Pull`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullWhen {
    /// Before the builds (`--pull-cache always`).
    First,
    /// Before the stage build that writes `image`, only when a step of `chain` ran and the
    /// registry holds the image: with inline cache, a stage image whose steps partly ran and
    /// partly came from the registry is exported with cache keys that lack the latter unless
    /// the engine holds the old image (moby/buildkit#1981). It may start while the final build
    /// still goes on, once a step of `chain` is seen to have run.
    BeforeRebuild {
        /// The stages whose steps make the image.
        chain: Vec<String>,
    },
}

/// A build step's particulars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    /// The stage built (`--target`).
    pub stage: String,
    /// Whether this is the package's final target.
    pub is_final: bool,
    /// The cache image it writes (its inline-cache tag), if any.
    pub writes: Option<String>,
    /// The cache refs it reads, in order.
    pub reads: Vec<String>,
    /// Of those, the refs of the stage's own cache (with a registry cache: all of them).
    pub own_cache: Vec<String>,
    /// The final tags it carries.
    pub finals: Vec<String>,
    /// The stages whose steps make it: the stage and every stage it needs.
    pub chain: Vec<String>,
    /// Not run when no step of `chain` ran in this run, the engine did not hold `writes` before
    /// the run, and the registry holds it.
    pub skip_if_current: bool,
    /// The registry cache it exports (`--cache-to`), if any.
    pub exports: Option<String>,
    /// A failed cache export is a warning (`ignore-error=true`), checked after the build.
    pub export_best_effort: bool,
    /// The build pushes its own tags (buildx `--push`).
    pub pushes: bool,
    /// An export-only build (`--output type=cacheonly`) after the final build, which pushed
    /// this final image without exporting the registry cache: skipped when no step of `chain`
    /// ran and every layer of this image is among the layers of the registry cache (`exports`)
    /// as the registry held it before the run. Either evidence that something is new exports.
    pub export_only: Option<String>,
    /// For an export-only build: whether it may start beside the final build, once a step of
    /// `chain` is seen to run. Not where a step of `chain` uses a cache mount: BuildKit does
    /// not always share a step that the other build is running or has just run (the two
    /// builds' contexts are different sources), and a second run of such a step changes what
    /// the mount holds. After the final build has ended, every step is in the engine's cache.
    pub starts_early: bool,
    /// `(stage, command)` of every `RUN` in `chain`, whitespace collapsed: when another build
    /// ran a shared step that failed, this build's progress shows only BuildKit's error, which
    /// quotes the command.
    pub runs: Vec<(String, String)>,
}

impl Build {
    /// The stage whose `RUN` failed with `error` (BuildKit's message, which quotes the
    /// command), if one matches; the longest command wins.
    pub fn stage_of_failed_command(&self, error: &str) -> Option<&str> {
        let error = crate::dockerfile::collapse_whitespace(error);
        self.runs
            .iter()
            .filter(|(_, command)| !command.is_empty() && error.contains(command.as_str()))
            .max_by_key(|(_, command)| command.len())
            .map(|(stage, _)| stage.as_str())
    }
}

/// A `docker push` of one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTag {
    /// The image reference.
    pub image: String,
    /// The step that built it.
    pub build: usize,
    /// A cache tag (true) or a final tag (false).
    pub cache: bool,
    /// Left as it is when no step of `chain` ran in this run, the engine did not hold the tag
    /// before the run, and the registry holds it: re-pushing an image built from remote cache
    /// hits would replace one whose inline cache is complete with one whose cache misses the
    /// steps that copy from other stages (moby/buildkit#1981).
    pub skip_if_current: bool,
    /// The stages whose steps make this image.
    pub chain: Vec<String>,
    /// A refused push is a warning, not a failure.
    pub best_effort: bool,
}

/// One command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Its position in the plan.
    pub id: usize,
    /// The package it belongs to.
    pub package: String,
    /// What it does.
    pub action: Action,
    /// The program to run.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables to set.
    pub env: Vec<(String, String)>,
    /// What to give the program on stdin (a generated Dockerfile); nothing when `None`.
    pub stdin: Option<String>,
    /// The steps that must finish first.
    pub after: Vec<usize>,
}

impl Step {
    /// Whether the step asks the registry a question: a round trip that neither builds nor
    /// transfers layers, so `--jobs` does not count it.
    pub fn is_question(&self) -> bool {
        matches!(self.action, Action::Inspect(_))
    }
}

/// Every step of a run, each after the steps it needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The steps, in an order that satisfies `after`.
    pub steps: Vec<Step>,
    /// Warnings about what the plan leaves out, `(package, message)`: the tags its branch
    /// boundary keeps it from writing (see `boundary`).
    pub warnings: Vec<(String, String)>,
}

impl Plan {
    /// The stage a step belongs to: a build's, or for a push or a pull before a rebuild, the
    /// stage of the build it serves.
    pub fn stage_of(&self, id: usize) -> Option<&str> {
        match &self.steps.get(id)?.action {
            Action::Build(b) => Some(&b.stage),
            Action::Push(p) => self.stage_of(p.build),
            Action::Pull(Pull {
                when: PullWhen::BeforeRebuild { chain },
                ..
            }) => chain.first().map(String::as_str),
            Action::Pull(_) | Action::Inspect(_) | Action::Mark { .. } | Action::Mount(_) => None,
        }
    }

    /// Adds a step; returns its id.
    fn add(
        &mut self,
        package: &str,
        action: Action,
        program: &str,
        args: Vec<String>,
        env: Vec<(String, String)>,
        after: Vec<usize>,
    ) -> usize {
        let id = self.steps.len();
        self.steps.push(Step {
            id,
            package: package.to_string(),
            action,
            program: program.to_string(),
            args,
            env,
            stdin: None,
            after,
        });
        id
    }

    /// Adds a build whose Dockerfile is `stdin` (`-f -`), run with `DOCKER_BUILDKIT=1` for the
    /// classic client. Returns its id.
    fn add_with_stdin(
        &mut self,
        package: &str,
        action: Action,
        options: &Options,
        args: Vec<String>,
        stdin: String,
        after: Vec<usize>,
    ) -> usize {
        let env = vec![("DOCKER_BUILDKIT".to_string(), "1".to_string())];
        let id = self.add(package, action, &options.docker, args, env, after);
        self.steps[id].stdin = Some(stdin);
        id
    }

    /// Adds `docker manifest inspect -v` of `image` (with `--insecure` for a registry on
    /// loopback: the CLI, unlike the daemon, speaks HTTPS even there). Returns its id.
    fn inspect(
        &mut self,
        package: &str,
        docker: &str,
        image: &str,
        role: Role,
        after: Vec<usize>,
    ) -> usize {
        let mut args = vec!["manifest".to_string(), "inspect".into(), "-v".into()];
        if crate::reference::is_loopback_registry(image) {
            args.push("--insecure".into());
        }
        args.push(image.to_string());
        let action = Action::Inspect(Inspect {
            image: image.to_string(),
            role,
            default_branch: None,
        });
        self.add(package, action, docker, args, vec![], after)
    }

    /// Appends `steps`, renumbered, each also waiting for `before`, except the questions whose
    /// answers decide the skips of single steps: those need not wait. Returns the new ids.
    fn append(&mut self, steps: Plan, before: &[usize]) -> Vec<usize> {
        let offset = self.steps.len();
        steps
            .steps
            .into_iter()
            .map(|mut step| {
                step.id += offset;
                let waits = !matches!(&step.action, Action::Inspect(i) if matches!(i.role, Role::Cache | Role::Fallback));
                step.after = before
                    .iter()
                    .copied()
                    .filter(|_| waits)
                    .chain(step.after.iter().map(|a| a + offset))
                    .collect();
                if let Action::Push(push) = &mut step.action {
                    push.build += offset;
                }
                let id = step.id;
                self.steps.push(step);
                id
            })
            .collect()
    }
}

/// The refs a cache tag template gives: the one written, and those read, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRefs {
    /// Written: `None` for a branch-scoped tag when there is no branch (a detached HEAD).
    pub write: Option<String>,
    /// Read: the current branch's, then the default branch's.
    pub read: Vec<String>,
}

/// Fills a cache tag template. A tag with `{branch}` is written under the current branch only
/// and read from the current branch first, then from the default branch.
pub fn cache_refs(
    template: &Template,
    repository: &crate::reference::Repository,
    vars: &Vars,
    default_branch: &str,
) -> Result<CacheRefs, String> {
    let render = |vars: &Vars| template.render(vars).map(|tag| repository.with_tag(&tag));
    if !template.uses(Placeholder::Branch) {
        let one = render(vars)?;
        return Ok(CacheRefs {
            write: Some(one.clone()),
            read: vec![one],
        });
    }
    let write = match &vars.branch {
        Some(_) => Some(render(vars)?),
        None => None,
    };
    let fallback = render(&Vars {
        branch: Some(default_branch.to_string()),
        ..vars.clone()
    })?;
    let mut read: Vec<String> = write.iter().cloned().collect();
    if !read.contains(&fallback) {
        read.push(fallback);
    }
    Ok(CacheRefs { write, read })
}

/// Plans the pulls, builds and pushes of every input.
pub fn plan(inputs: &[Input], options: &Options) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    for input in inputs {
        let boundary = Boundary::of(&input.package, &input.vars, options)?;
        let name = &input.package.config.package;
        for warning in boundary::warnings(
            &input.package,
            &input.vars,
            options,
            &boundary,
            &final_images(input, options)?,
        ) {
            plan.warnings.push((name.clone(), warning));
        }
        let mut steps = Plan::default();
        let restores = mounts::restores(&mut steps, input, options, &boundary)?;
        match input.package.config.cache {
            crate::config::CacheMode::Inline => {
                inline::plan(&mut steps, input, options, &restores, &boundary)?
            }
            crate::config::CacheMode::Registry => {
                registry::plan(&mut steps, input, options, &restores, &boundary)?
            }
        }
        mounts::exports(&mut steps, input, options, &boundary)?;
        let marker = match boundary.writes_markers() {
            true => marker::marker(input, options, &steps),
            false => None,
        };
        match marker {
            Some(marker) => marker::append_marked(&mut plan, steps, input, options, &marker),
            None => {
                plan.append(steps, &[]);
            }
        }
    }
    Ok(plan)
}

/// Whether a run with `options` asks the registry whether it holds `package`'s build (and so
/// needs its fingerprint): it may skip (see [`may_skip`]), and writes markers there.
pub fn checks_registry(package: &Package, vars: &Vars, options: &Options) -> bool {
    may_skip(options) && Boundary::of(package, vars, options).is_ok_and(|b| b.writes_markers())
}

/// The final tags of a package: its own, then the command line's.
fn final_images(input: &Input, options: &Options) -> anyhow::Result<Vec<String>> {
    let config = &input.package.config;
    let extra = options
        .tags
        .iter()
        .map(|t| {
            Template::parse(t, Placeholder::FOR_TAGS)
                .map_err(|e| anyhow::anyhow!("option `--tag`: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut images = Vec::new();
    for template in config.tags.iter().chain(&extra) {
        let image = template
            .render(&input.vars)
            .map(|tag| config.image.with_tag(&tag))
            .map_err(|e| anyhow::anyhow!("package `{}`, key `tags`: {e}", config.package))?;
        if !images.contains(&image) {
            images.push(image);
        }
    }
    Ok(images)
}

/// Flags every build of a package shares: build args, network, platforms, secrets; the
/// Dockerfile and the context come last in `tail`.
struct Common {
    head: Vec<String>,
    tail: Vec<String>,
}

fn common(input: &Input, options: &Options) -> Common {
    use crate::config::Secret;
    let config = &input.package.config;
    let mut head = Vec::new();
    if options.no_cache {
        head.push("--no-cache".to_string());
    }
    let mut args = config.build_args.clone();
    args.extend(options.build_args.clone());
    for (key, value) in &args {
        head.extend(["--build-arg".into(), format!("{key}={value}")]);
    }
    if let Some(network) = &config.network {
        head.extend(["--network".into(), network.clone()]);
    }
    if !config.platforms.is_empty() {
        head.extend(["--platform".into(), config.platforms.join(",")]);
    }
    for (id, secret) in &config.secrets {
        let source = match secret {
            Secret::Env(name) => format!("env={name}"),
            Secret::File(path) => format!("src={}", path.display()),
        };
        head.extend(["--secret".into(), format!("id={id},{source}")]);
    }
    let tail = vec!["-f".into(), path(&config.dockerfile), path(&config.context)];
    Common { head, tail }
}

/// `(stage, command)` of every `RUN` of the stages `chain` names.
fn runs(package: &Package, chain: &[String]) -> Vec<(String, String)> {
    package
        .graph
        .stages
        .iter()
        .map(|s| (package.graph.name(s.index), s))
        .filter(|(name, _)| chain.contains(name))
        .flat_map(|(name, s)| s.runs.iter().map(move |r| (name.clone(), r.clone())))
        .collect()
}

/// The stage `stage` and every stage it needs, by name: the stages whose steps make its image.
fn chain(package: &Package, stage: usize) -> Vec<String> {
    std::iter::once(stage)
        .chain(package.graph.ancestors(stage))
        .map(|s| package.graph.name(s))
        .collect()
}

fn add_attestations(args: &mut Vec<String>, config: &crate::config::Config) {
    if let Some(p) = &config.provenance {
        args.push(format!("--provenance={p}"));
    }
    if let Some(s) = &config.sbom {
        args.push(format!("--sbom={s}"));
    }
}

fn path(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

#[cfg(test)]
pub(crate) mod tests;

//! The plan: every command a build runs, as a pure value that prints as shell lines.
//!
//! Nothing here runs anything. The executor runs each step once the steps it waits for are done
//! (independent steps at once), and the dry run prints them in order.
//!
//! With inline cache, the final target is built first, reading every cached stage's cache: that
//! one BuildKit build runs (in parallel, inside BuildKit) whatever changed. The other cached
//! stages are built after it, from the engine's now warm cache, only to tag and push their cache
//! images, and not at all when nothing in them ran and the registry already holds their cache
//! image: on a fresh CI agent with nothing changed, no intermediate stage image is downloaded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::cli::PullCache;
use crate::config::{CacheMode, PushCache, Secret};
use crate::package::Package;
use crate::template::{Placeholder, Template, Vars};

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

/// How to plan.
#[derive(Debug, Clone)]
pub struct Options {
    /// The docker CLI to run.
    pub docker: String,
    /// What to push.
    pub push: Push,
    /// When to pull cache images first.
    pub pull_cache: PullCache,
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
}

impl Options {
    /// Options for `docker` that push nothing and pull nothing.
    pub fn new(docker: &str) -> Options {
        Options {
            docker: docker.to_string(),
            push: Push::Nothing,
            pull_cache: PullCache::Auto,
            builder: None,
            load: false,
            no_cache: false,
            rebuild: false,
            build_args: BTreeMap::new(),
            tags: Vec::new(),
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
    /// `docker pull` of a cache image; a missing image is "no cache yet", not an error.
    Pull {
        /// The image reference.
        image: String,
    },
    /// Asks the registry whether it holds a build of exactly this plan. If so, no other step of
    /// the package runs.
    Check(Check),
    /// Pushes the marker tag, once every other step of the package succeeded (where the final
    /// build does not push it with the image).
    Mark {
        /// The marker tag.
        marker: String,
    },
    /// A build of one stage.
    Build(Build),
    /// `docker push` of one tag.
    Push {
        /// The image reference.
        image: String,
        /// The step that built it.
        build: usize,
        /// A cache tag (true) or a final tag (false).
        cache: bool,
        /// Left as it is when no step of `chain` ran in this run, the engine did not hold the tag
        /// before the run, and the registry holds it: re-pushing an image built from remote cache
        /// hits would replace one whose inline cache is complete with one whose cache misses the
        /// steps that copy from other stages (moby/buildkit#1981).
        skip_if_current: bool,
        /// The stages whose steps make this image.
        chain: Vec<String>,
        /// A refused push is a warning, not a failure.
        best_effort: bool,
    },
}

/// A registry check's particulars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The marker tag: `<cache-image>:inputs-<fingerprint>`.
    pub marker: String,
    /// The final tags that must hold the marker's manifest.
    pub finals: Vec<String>,
    /// The cache images of stage builds that may be skipped, asked at the same time: a stage
    /// build whose cache image the registry lacks cannot be skipped, and so starts at once
    /// instead of after the final build (on a cold registry, every one of them).
    pub caches: Vec<String>,
    /// The registry cache of a build that pushes the marker with its image: it too must be in
    /// the registry, since a failed cache export follows the push.
    pub export: Option<String>,
}

impl Check {
    /// Every image the check asks the registry about: the marker, the finals, the caches, the
    /// export, in that order.
    pub fn questions(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.marker)
            .chain(&self.finals)
            .chain(&self.caches)
            .chain(&self.export)
    }
}

/// A build step's particulars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    /// The stage's label.
    pub stage: String,
    /// Whether this is the package's final target.
    pub is_final: bool,
    /// The cache image it writes (its inline-cache tag), if any.
    pub writes: Option<String>,
    /// The cache refs it reads, in order.
    pub reads: Vec<String>,
    /// Of those, the refs of the stage's own cache (with a registry cache: all of them).
    pub own: Vec<String>,
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

/// `(stage, command)` of every `RUN` of the stages `chain` names.
fn runs(package: &Package, chain: &[String]) -> Vec<(String, String)> {
    package
        .graph
        .stages
        .iter()
        .map(|s| (package.graph.label(s.index), s))
        .filter(|(label, _)| chain.contains(label))
        .flat_map(|(label, s)| s.runs.iter().map(move |r| (label.clone(), r.clone())))
        .collect()
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
    /// The steps that must finish first.
    pub after: Vec<usize>,
}

/// Every step of a run, each after the steps it needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The steps, in an order that satisfies `after`.
    pub steps: Vec<Step>,
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
        let mut steps = Plan::default();
        match input.package.config.cache {
            CacheMode::Inline => plan_inline(&mut steps, input, options)?,
            CacheMode::Registry => plan_registry(&mut steps, input, options)?,
        }
        match marker(input, options, &steps) {
            Some(marker) => plan.append_marked(steps, input, options, &marker),
            None => {
                plan.append(steps, &[]);
            }
        }
    }
    Ok(plan)
}

/// Whether a run with `options` may find its build in the registry and skip it: it pushes the
/// final tags, need not leave the image in the engine, and was not told to build everything.
/// (`--rebuild` still records the build, so it is not excluded here.)
pub fn may_skip(options: &Options) -> bool {
    options.push == Push::All && !options.load && !options.no_cache
}

/// The marker tag of a package's steps: `<cache-image>:inputs-<sha256>` of the sources'
/// fingerprint and of every command with the checkout's paths left out (another agent checks
/// out elsewhere), or `None` when the run does not skip: it pushes no final tag, must leave the
/// image in the engine, or was told to build everything.
fn marker(input: &Input, options: &Options, steps: &Plan) -> Option<String> {
    use sha2::{Digest, Sha256};
    let sources = input.sources.as_ref()?;
    if !may_skip(options) {
        return None;
    }
    let config = &input.package.config;
    let paths = [
        (path(&config.dockerfile), "{dockerfile}"),
        (path(&config.context), "{context}"),
        (path(&config.manifest_dir), "{package}"),
    ];
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(b"xtask-docker build v1");
    field(env!("CARGO_PKG_VERSION").as_bytes());
    field(sources.as_bytes());
    for step in &steps.steps {
        field(crate::report::kind(&step.action).as_bytes());
        for word in step
            .args
            .iter()
            .chain(step.env.iter().flat_map(|(k, v)| [k, v]))
        {
            // Most words hold no path: they are hashed as they are, without a copy.
            let word: std::borrow::Cow<str> =
                if paths.iter().any(|(from, _)| word.contains(from.as_str())) {
                    paths
                        .iter()
                        .fold(word.clone(), |w, (from, to)| w.replace(from.as_str(), to))
                        .into()
                } else {
                    word.into()
                };
            field(word.as_bytes());
        }
    }
    let digest = crate::fingerprint::hex(&hash.finalize());
    let tag = crate::reference::Tag::parse(&format!("inputs-{digest}")).ok()?;
    Some(config.cache_image.with_tag(&tag))
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

/// Flags every build of a package shares: build args, network, platforms, secrets, the
/// Dockerfile and the context come last in `tail`.
struct Common {
    head: Vec<String>,
    tail: Vec<String>,
}

fn common(input: &Input, options: &Options) -> Common {
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

fn plan_inline(plan: &mut Plan, input: &Input, options: &Options) -> anyhow::Result<()> {
    let package = &input.package;
    let config = &package.config;
    let name = &config.package;
    let refs: BTreeMap<usize, CacheRefs> = package
        .cached
        .iter()
        .map(|(&stage, template)| {
            cache_refs(
                template,
                &config.cache_image,
                &input.vars,
                &config.default_branch,
            )
            .map(|r| (stage, r))
            .map_err(|e| {
                anyhow::anyhow!(
                    "package `{name}`, stage `{}`: {e}",
                    package.graph.label(stage)
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let finals = final_images(input, options)?;
    let common = common(input, options);
    let label = |s: usize| package.graph.label(s);
    let chain = |s: usize| -> Vec<String> {
        std::iter::once(s)
            .chain(package.graph.ancestors(s))
            .map(label)
            .collect()
    };
    let buildx = options.builder.is_some();
    let push_cache = options.push != Push::Nothing;
    let push_finals = options.push == Push::All;
    let best_effort = options.push == Push::CacheOnly || config.push_cache == PushCache::BestEffort;

    let mut pulls = Vec::new();
    if options.pull_cache == PullCache::Always {
        let mut seen = Vec::new();
        for image in refs.values().flat_map(|r| r.read.iter()) {
            if !seen.contains(image) {
                seen.push(image.clone());
                pulls.push(plan.add(
                    name,
                    Action::Pull {
                        image: image.clone(),
                    },
                    &options.docker,
                    vec!["pull".into(), image.clone()],
                    vec![],
                    vec![],
                ));
            }
        }
    }

    // The final target first, then the other cached stages in dependency order.
    let target = package.target;
    let mut order = vec![target];
    order.extend(package.build_order().into_iter().filter(|&s| s != target));
    let final_ancestors = package.graph.ancestors(target);
    let mut final_build = None;
    let mut final_pushes = Vec::new();
    for stage in order {
        let is_final = stage == target;
        let own = &refs[&stage];
        let mut reads: Vec<String> = Vec::new();
        for source in package.cache_sources(stage) {
            for r in &refs[&source].read {
                if !reads.contains(r) {
                    reads.push(r.clone());
                }
            }
        }
        // With a builder of its own, tags leave only by the build's own push: a cache-only run
        // then leaves the final tags out rather than publish them.
        let finals_here = if is_final && !(buildx && options.push == Push::CacheOnly) {
            finals.clone()
        } else {
            Vec::new()
        };
        // A stage build exists only to tag and push its cache image.
        if !is_final && own.write.is_none() {
            continue;
        }
        let mut args: Vec<String> = if buildx {
            vec![
                "buildx".into(),
                "build".into(),
                "--builder".into(),
                options.builder.clone().unwrap_or_default(),
            ]
        } else {
            vec!["build".into()]
        };
        args.push("--progress=plain".into());
        args.extend(["--build-arg".into(), "BUILDKIT_INLINE_CACHE=1".into()]);
        args.extend(common.head.iter().cloned());
        args.extend(["--target".into(), label(stage)]);
        for r in &reads {
            args.extend(["--cache-from".into(), r.clone()]);
        }
        for image in own.write.iter().chain(&finals_here) {
            args.extend(["--tag".into(), image.clone()]);
        }
        if is_final {
            args.extend(crate::labels::label_args(&input.labels));
            add_attestations(&mut args, config);
        }
        // A builder other than the engine's own keeps images to itself: the build pushes them
        // (or loads them, when asked).
        let pushes = buildx && push_cache;
        if buildx {
            if pushes {
                args.push("--push".into());
            }
            if !pushes || options.load {
                args.push("--load".into());
            }
        }
        args.extend(common.tail.iter().cloned());

        // After the final build every stage's result is in the engine's cache, so the stage
        // builds wait for it alone, not for each other.
        let mut after = pulls.clone();
        after.extend(final_build);
        let build = Build {
            stage: label(stage),
            is_final,
            writes: own.write.clone(),
            reads,
            own: own.read.clone(),
            finals: finals_here.clone(),
            runs: runs(package, &chain(stage)),
            chain: chain(stage),
            skip_if_current: !is_final
                && !buildx
                && !options.no_cache
                && final_ancestors.contains(&stage),
            exports: None,
            export_best_effort: false,
            pushes,
        };
        let env = vec![("DOCKER_BUILDKIT".to_string(), "1".to_string())];
        let id = plan.add(
            name,
            Action::Build(build),
            &options.docker,
            args,
            env,
            after,
        );
        if is_final {
            final_build = Some(id);
        }
        if buildx {
            continue;
        }
        let mut pushes: Vec<(String, bool)> = Vec::new();
        if push_cache {
            pushes.extend(own.write.iter().map(|w| (w.clone(), true)));
        }
        if push_finals {
            pushes.extend(finals_here.into_iter().map(|f| (f, false)));
        }
        // The tags of one image are pushed one after the other: the first uploads the layers,
        // the others find them there (two at once upload them twice, and Debian's registry
        // answers one of them with a 500).
        let mut previous = None;
        for (image, cache) in pushes {
            let action = Action::Push {
                image: image.clone(),
                build: id,
                cache,
                skip_if_current: cache && !options.no_cache,
                chain: chain(stage),
                best_effort: cache && best_effort,
            };
            let push = (action, vec!["push".to_string(), image], vec![id]);
            // The final target's pushes go last: the stage builds, which have pushes of their
            // own to follow, are then started first when they compete for `--jobs`.
            if is_final {
                final_pushes.push(push);
            } else {
                let mut after = push.2;
                after.extend(previous);
                previous = Some(plan.add(name, push.0, &options.docker, push.1, vec![], after));
            }
        }
    }
    let mut previous = None;
    for (action, args, mut after) in final_pushes {
        after.extend(previous);
        previous = Some(plan.add(name, action, &options.docker, args, vec![], after));
    }
    Ok(())
}

fn add_attestations(args: &mut Vec<String>, config: &crate::config::Config) {
    if let Some(p) = &config.provenance {
        args.push(format!("--provenance={p}"));
    }
    if let Some(s) = &config.sbom {
        args.push(format!("--sbom={s}"));
    }
}

fn plan_registry(plan: &mut Plan, input: &Input, options: &Options) -> anyhow::Result<()> {
    let package = &input.package;
    let config = &package.config;
    let name = &config.package;
    let refs = cache_refs(
        &config.cache_tag,
        &config.cache_image,
        &input.vars,
        &config.default_branch,
    )
    .map_err(|e| anyhow::anyhow!("package `{name}`, key `cache-tag`: {e}"))?;
    let finals = final_images(input, options)?;
    let common = common(input, options);
    let push_finals = options.push == Push::All;
    let best_effort = options.push == Push::CacheOnly || config.push_cache == PushCache::BestEffort;

    let mut args: Vec<String> = vec!["buildx".into(), "build".into()];
    if let Some(builder) = &options.builder {
        args.extend(["--builder".into(), builder.clone()]);
    }
    args.push("--progress=plain".into());
    args.extend(common.head.iter().cloned());
    args.extend(["--target".into(), package.graph.label(package.target)]);
    for r in &refs.read {
        args.extend(["--cache-from".into(), format!("type=registry,ref={r}")]);
    }
    let exports = if options.push != Push::Nothing {
        refs.write.clone()
    } else {
        None
    };
    if let Some(w) = &exports {
        let mut to =
            format!("type=registry,ref={w},mode=max,image-manifest=true,oci-mediatypes=true");
        if best_effort {
            to.push_str(",ignore-error=true");
        }
        args.extend(["--cache-to".into(), to]);
    }
    for image in &finals {
        args.extend(["--tag".into(), image.clone()]);
    }
    args.extend(crate::labels::label_args(&input.labels));
    add_attestations(&mut args, config);
    if push_finals {
        args.push("--push".into());
    }
    // Without a push the image goes into the engine, as `docker build` would leave it; a
    // multi-platform image cannot be loaded into a classic store, so it stays in the builder.
    if (!push_finals || options.load) && config.platforms.len() <= 1 {
        args.push("--load".into());
    }
    args.extend(common.tail.iter().cloned());
    let chain: Vec<String> = std::iter::once(package.target)
        .chain(package.graph.ancestors(package.target))
        .map(|s| package.graph.label(s))
        .collect();
    let build = Build {
        stage: package.graph.label(package.target),
        is_final: true,
        writes: None,
        reads: refs.read.clone(),
        own: refs.read.clone(),
        finals,
        runs: runs(package, &chain),
        chain,
        skip_if_current: false,
        exports,
        export_best_effort: best_effort,
        pushes: push_finals,
    };
    plan.add(
        name,
        Action::Build(build),
        &options.docker,
        args,
        vec![],
        vec![],
    );
    Ok(())
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl Plan {
    /// Appends `steps`, renumbered, each also waiting for `before`. Returns the new ids.
    fn append(&mut self, steps: Plan, before: &[usize]) -> Vec<usize> {
        let offset = self.steps.len();
        steps
            .steps
            .into_iter()
            .map(|mut step| {
                step.id += offset;
                step.after = before
                    .iter()
                    .copied()
                    .chain(step.after.iter().map(|a| a + offset))
                    .collect();
                if let Action::Push { build, .. } = &mut step.action {
                    *build += offset;
                }
                let id = step.id;
                self.steps.push(step);
                id
            })
            .collect()
    }

    /// Appends a package's `steps` between a check for `marker` and its push: on an agent that
    /// finds the registry holding this very build, nothing else runs. With `rebuild`, there is
    /// no check, and the marker is pushed all the same: it stands for the new image.
    fn append_marked(&mut self, mut steps: Plan, input: &Input, options: &Options, marker: &str) {
        let docker = &options.docker;
        let name = &input.package.config.package;
        let Some(final_build) = steps.steps.iter().position(
            |s| matches!(&s.action, Action::Build(b) if b.is_final && !b.finals.is_empty()),
        ) else {
            self.append(steps, &[]);
            return;
        };
        let (finals, pushes_itself, exports) = match &steps.steps[final_build].action {
            Action::Build(b) => (b.finals.clone(), b.pushes, b.exports.clone()),
            _ => unreachable!("found as a build"),
        };
        let caches: Vec<String> = steps
            .steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Build(b) if b.skip_if_current => b.writes.clone(),
                _ => None,
            })
            .collect();
        let check = (!options.rebuild).then(|| {
            self.add(
                name,
                Action::Check(Check {
                    marker: marker.to_string(),
                    finals: finals.clone(),
                    caches,
                    export: exports.filter(|_| pushes_itself),
                }),
                docker,
                vec!["manifest".into(), "inspect".into(), marker.to_string()],
                vec![],
                vec![],
            )
        });
        // The marker goes with the final image: the build tags it. It is pushed last, from the
        // engine, so that it stands for a run in which everything succeeded; where the build
        // pushes by itself it goes with that push (a copy afterwards, `buildx imagetools
        // create`, costs a buildx start and a round trip on every build), and the check then
        // also asks for the registry cache, which a failed export leaves missing.
        let build = &mut steps.steps[final_build];
        let at = build
            .args
            .iter()
            .rposition(|a| a == "--tag")
            .map_or(build.args.len(), |i| i + 2);
        build
            .args
            .splice(at..at, ["--tag".to_string(), marker.to_string()]);
        let ids = self.append(steps, check.as_slice());
        if !pushes_itself {
            self.add(
                name,
                Action::Mark {
                    marker: marker.to_string(),
                },
                docker,
                vec!["push".into(), marker.to_string()],
                vec![],
                ids,
            );
        }
    }

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
            after,
        });
        id
    }

    /// The plan as shell lines that a user can copy and run.
    pub fn to_shell(&self) -> String {
        let mut out = String::new();
        let mut package = None;
        for step in &self.steps {
            if package != Some(&step.package) {
                let _ = writeln!(out, "# package `{}`", step.package);
                package = Some(&step.package);
            }
            out.push_str(&step.to_shell());
            out.push('\n');
        }
        out
    }
}

impl Step {
    /// The step as one shell line, with what the executor decides at run time as a comment.
    pub fn to_shell(&self) -> String {
        let mut words: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        words.push(quote(&self.program));
        words.extend(self.args.iter().map(|a| quote(a)));
        let line = words.join(" ");
        match &self.action {
            Action::Pull { .. } => {
                format!("{line} || true  # a missing cache image means no cache yet")
            }
            Action::Check(_) => format!(
                "{line}  # when it and every final tag hold the same image, nothing below runs"
            ),
            Action::Build(b) if b.skip_if_current => format!(
                "{line}  # skipped when nothing in it ran and the registry holds its cache; else after `docker pull` of its cache image"
            ),
            Action::Push {
                skip_if_current: true,
                ..
            } => format!("{line}  # skipped when nothing in it ran and the registry holds it"),
            _ => line,
        }
    }
}

/// Quotes a word for a POSIX shell: as it is when it is made only of characters no shell treats
/// specially, else in single quotes. (shell-words quotes `=` too, which makes every
/// `--flag=value` and `KEY=VALUE` harder to read for no gain.)
pub fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use expect_test::expect;

    use super::*;
    use crate::config::Config;
    use crate::reference::Repository;

    const SERVICE: &str = "\
FROM scratch AS toolchain
COPY busybox /bin/busybox
FROM toolchain AS compile
RUN make
FROM toolchain AS runtime
COPY --from=compile /out /out
";

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
            default_branch: "main".into(),
            push_cache: PushCache::Required,
            provenance: None,
            sbom: None,
            secrets: BTreeMap::new(),
            labels: BTreeMap::new(),
        }
    }

    fn vars() -> Vars {
        Vars {
            version: "0.3.1".into(),
            git_sha: Some("0123456789abcdef".into()),
            branch: Some("feature/x".into()),
        }
    }

    fn input(config: Config, dockerfile: &str) -> Input {
        Input {
            package: Package::resolve(config, dockerfile).unwrap(),
            vars: vars(),
            labels: BTreeMap::new(),
            sources: None,
        }
    }

    fn shell(config: Config, dockerfile: &str, options: &Options) -> String {
        plan(&[input(config, dockerfile)], options)
            .unwrap()
            .to_shell()
    }

    fn options(push: Push, pull_cache: PullCache) -> Options {
        Options {
            push,
            pull_cache,
            ..Options::new("docker")
        }
    }

    #[test]
    fn quotes_only_what_a_shell_would_misread() {
        assert_eq!(quote("--progress=plain"), "--progress=plain");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn final_target_first_then_the_stage_caches() {
        let config = config(
            &[("compile", "compile"), ("runtime", "dev")],
            &["{version}", "latest"],
        );
        expect![[r#"
            # package `service`
            DOCKER_BUILDKIT=1 docker build --progress=plain --build-arg BUILDKIT_INLINE_CACHE=1 --target runtime --cache-from registry.example/acme/service:dev --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:dev --tag registry.example/acme/service:0.3.1 --tag registry.example/acme/service:latest -f /src/service/Dockerfile /src/service
            DOCKER_BUILDKIT=1 docker build --progress=plain --build-arg BUILDKIT_INLINE_CACHE=1 --target compile --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:compile -f /src/service/Dockerfile /src/service  # skipped when nothing in it ran and the registry holds its cache; else after `docker pull` of its cache image
            docker push registry.example/acme/service:compile  # skipped when nothing in it ran and the registry holds it
            docker push registry.example/acme/service:dev  # skipped when nothing in it ran and the registry holds it
            docker push registry.example/acme/service:0.3.1
            docker push registry.example/acme/service:latest
        "#]]
        .assert_eq(&shell(config, SERVICE, &options(Push::All, PullCache::Auto)));
    }

    #[test]
    fn pulls_first_when_asked_and_pushes_only_when_asked() {
        let config = config(&[("compile", "compile")], &["latest"]);
        expect![[r#"
            # package `service`
            docker pull registry.example/acme/service:compile || true  # a missing cache image means no cache yet
            docker pull registry.example/acme/service:runtime || true  # a missing cache image means no cache yet
            DOCKER_BUILDKIT=1 docker build --progress=plain --build-arg BUILDKIT_INLINE_CACHE=1 --target runtime --cache-from registry.example/acme/service:runtime --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:runtime --tag registry.example/acme/service:latest -f /src/service/Dockerfile /src/service
            DOCKER_BUILDKIT=1 docker build --progress=plain --build-arg BUILDKIT_INLINE_CACHE=1 --target compile --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:compile -f /src/service/Dockerfile /src/service  # skipped when nothing in it ran and the registry holds its cache; else after `docker pull` of its cache image
        "#]]
        .assert_eq(&shell(config, SERVICE, &options(Push::Nothing, PullCache::Always)));
    }

    #[test]
    fn branch_caches_fall_back_to_the_default_branch() {
        let config = config(&[("compile", "compile-{branch}")], &["latest"]);
        let text = shell(
            config.clone(),
            SERVICE,
            &options(Push::CacheOnly, PullCache::Auto),
        );
        expect![[r#"
            # package `service`
            DOCKER_BUILDKIT=1 docker build --progress=plain --build-arg BUILDKIT_INLINE_CACHE=1 --target runtime --cache-from registry.example/acme/service:runtime --cache-from registry.example/acme/service:compile-feature-x --cache-from registry.example/acme/service:compile-main --tag registry.example/acme/service:runtime --tag registry.example/acme/service:latest -f /src/service/Dockerfile /src/service
            DOCKER_BUILDKIT=1 docker build --progress=plain --build-arg BUILDKIT_INLINE_CACHE=1 --target compile --cache-from registry.example/acme/service:compile-feature-x --cache-from registry.example/acme/service:compile-main --tag registry.example/acme/service:compile-feature-x -f /src/service/Dockerfile /src/service  # skipped when nothing in it ran and the registry holds its cache; else after `docker pull` of its cache image
            docker push registry.example/acme/service:compile-feature-x  # skipped when nothing in it ran and the registry holds it
            docker push registry.example/acme/service:runtime  # skipped when nothing in it ran and the registry holds it
        "#]]
        .assert_eq(&text);
        assert!(
            !text.contains("push registry.example/acme/service:compile-main"),
            "a feature branch never writes the default branch's cache"
        );
        assert!(
            !text.contains("push registry.example/acme/service:latest"),
            "--push-cache-only publishes no final tag"
        );

        // A detached HEAD (a tag build) reads the default branch's cache and writes no branch tag.
        let detached = Input {
            vars: Vars {
                branch: None,
                ..vars()
            },
            ..input(config, SERVICE)
        };
        let text = plan(&[detached], &options(Push::All, PullCache::Auto))
            .unwrap()
            .to_shell();
        assert!(
            text.contains("--cache-from registry.example/acme/service:compile-main"),
            "{text}"
        );
        assert!(
            !text.contains("--target compile"),
            "no branch tag to write, so no stage build:\n{text}"
        );
        assert!(
            !text.contains("compile-main  #")
                && !text.contains("push registry.example/acme/service:compile"),
            "{text}"
        );
    }

    #[test]
    fn command_line_args_network_platform_secrets_labels_and_quoting() {
        let mut config = config(&[], &["{git_short_sha}"]);
        config.build_args.insert("NOTE".into(), "two words".into());
        config.build_args.insert("MODE".into(), "debug".into());
        config.network = Some("none".into());
        config.platforms = vec!["linux/amd64".into()];
        config.target = Some("compile".into());
        config.context = "/src/my service".into();
        config
            .secrets
            .insert("npm".into(), Secret::Env("NPM_TOKEN".into()));
        config.secrets.insert(
            "git".into(),
            Secret::File("/home/me/.git-credentials".into()),
        );
        let mut input = input(config, SERVICE);
        input
            .labels
            .insert("org.opencontainers.image.title".into(), "service".into());
        let options = Options {
            build_args: [("MODE".to_string(), "release".to_string())].into(),
            tags: vec!["extra".into()],
            no_cache: true,
            ..Options::new("docker")
        };
        expect![[r#"
            # package `service`
            DOCKER_BUILDKIT=1 docker build --progress=plain --build-arg BUILDKIT_INLINE_CACHE=1 --no-cache --build-arg MODE=release --build-arg 'NOTE=two words' --network none --platform linux/amd64 --secret id=git,src=/home/me/.git-credentials --secret id=npm,env=NPM_TOKEN --target compile --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:compile --tag registry.example/acme/service:0123456 --tag registry.example/acme/service:extra --label org.opencontainers.image.title=service -f /src/service/Dockerfile '/src/my service'
        "#]]
        .assert_eq(&plan(&[input], &options).unwrap().to_shell());
    }

    #[test]
    fn registry_cache_is_one_buildx_build() {
        let mut config = config(&[], &["latest"]);
        config.cache = CacheMode::Registry;
        config.cache_tag = Template::parse("cache-{branch}", Placeholder::FOR_CACHE_TAGS).unwrap();
        config.platforms = vec!["linux/amd64".into(), "linux/arm64".into()];
        config.provenance = Some("false".into());
        let pushed = shell(
            config.clone(),
            SERVICE,
            &options(Push::All, PullCache::Auto),
        );
        expect![[r#"
            # package `service`
            docker buildx build --progress=plain --platform linux/amd64,linux/arm64 --target runtime --cache-from type=registry,ref=registry.example/acme/service:cache-feature-x --cache-from type=registry,ref=registry.example/acme/service:cache-main --cache-to type=registry,ref=registry.example/acme/service:cache-feature-x,mode=max,image-manifest=true,oci-mediatypes=true --tag registry.example/acme/service:latest --provenance=false --push -f /src/service/Dockerfile /src/service
        "#]]
        .assert_eq(&pushed);
        config.platforms.clear();
        config.push_cache = PushCache::BestEffort;
        let local = shell(
            config,
            SERVICE,
            &Options {
                builder: Some("remote".into()),
                ..options(Push::CacheOnly, PullCache::Auto)
            },
        );
        expect![[r#"
            # package `service`
            docker buildx build --builder remote --progress=plain --target runtime --cache-from type=registry,ref=registry.example/acme/service:cache-feature-x --cache-from type=registry,ref=registry.example/acme/service:cache-main --cache-to type=registry,ref=registry.example/acme/service:cache-feature-x,mode=max,image-manifest=true,oci-mediatypes=true,ignore-error=true --tag registry.example/acme/service:latest --provenance=false --load -f /src/service/Dockerfile /src/service
        "#]]
        .assert_eq(&local);
    }

    #[test]
    fn a_build_the_registry_may_hold_is_checked_first_and_marked_last() {
        let marked = |config: Config, options: &Options| {
            let input = Input {
                sources: Some("f00d".into()),
                ..input(config, SERVICE)
            };
            plan(&[input], options).unwrap()
        };
        let config = config(&[("compile", "compile")], &["latest"]);
        let all = options(Push::All, PullCache::Auto);
        let inline = marked(config.clone(), &all);
        expect![[r#"
            # package `service`
            docker manifest inspect registry.example/acme/service:inputs-6b03beeecc0fb396fb69790175a55ced8425f222f588c4518d598e51f927d97a  # when it and every final tag hold the same image, nothing below runs
            DOCKER_BUILDKIT=1 docker build --progress=plain --build-arg BUILDKIT_INLINE_CACHE=1 --target runtime --cache-from registry.example/acme/service:runtime --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:runtime --tag registry.example/acme/service:latest --tag registry.example/acme/service:inputs-6b03beeecc0fb396fb69790175a55ced8425f222f588c4518d598e51f927d97a -f /src/service/Dockerfile /src/service
            DOCKER_BUILDKIT=1 docker build --progress=plain --build-arg BUILDKIT_INLINE_CACHE=1 --target compile --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:compile -f /src/service/Dockerfile /src/service  # skipped when nothing in it ran and the registry holds its cache; else after `docker pull` of its cache image
            docker push registry.example/acme/service:compile  # skipped when nothing in it ran and the registry holds it
            docker push registry.example/acme/service:runtime  # skipped when nothing in it ran and the registry holds it
            docker push registry.example/acme/service:latest
            docker push registry.example/acme/service:inputs-6b03beeecc0fb396fb69790175a55ced8425f222f588c4518d598e51f927d97a
        "#]]
        .assert_eq(&inline.to_shell());
        // Every step waits for the check; the marker for every step.
        let last = inline.steps.len() - 1;
        assert!(matches!(inline.steps[0].action, Action::Check(_)));
        assert!(inline.steps[1..last].iter().all(|s| s.after.contains(&0)));
        assert_eq!(inline.steps[last].after, (1..last).collect::<Vec<_>>());
        let marker_of = |plan: &Plan| match &plan.steps[0].action {
            Action::Check(check) => check.marker.clone(),
            _ => String::new(),
        };
        let first = marker_of(&inline);

        // Another checkout folder is the same build; other sources, args or tags are not.
        let mut moved = config.clone();
        moved.dockerfile = "/elsewhere/service/Dockerfile".into();
        moved.context = "/elsewhere/service".into();
        moved.manifest_dir = "/elsewhere/service".into();
        assert_eq!(marker_of(&marked(moved, &all)), first);
        let mut arg = config.clone();
        arg.build_args.insert("PROFILE".into(), "release".into());
        assert_ne!(marker_of(&marked(arg, &all)), first);
        let tagged = Options {
            tags: vec!["v2".into()],
            ..all.clone()
        };
        assert_ne!(marker_of(&marked(config.clone(), &tagged)), first);
        let other_sources = Input {
            sources: Some("beef".into()),
            ..input(config.clone(), SERVICE)
        };
        let other = plan(&[other_sources], &all).unwrap();
        assert_ne!(marker_of(&other), first);

        // No check where the run must build: no final push, an image wanted in the engine, or
        // every step asked for.
        for options in [
            options(Push::CacheOnly, PullCache::Auto),
            Options {
                load: true,
                ..all.clone()
            },
            Options {
                no_cache: true,
                ..all.clone()
            },
        ] {
            let plan = marked(config.clone(), &options);
            assert!(plan
                .steps
                .iter()
                .all(|s| !matches!(s.action, Action::Check(_) | Action::Mark { .. })));
        }

        // `--rebuild`: no check, the same marker pushed at the end.
        let rebuilt = marked(
            config.clone(),
            &Options {
                rebuild: true,
                ..all.clone()
            },
        );
        assert!(matches!(rebuilt.steps[0].action, Action::Build(_)));
        assert!(
            matches!(&rebuilt.steps.last().unwrap().action, Action::Mark { marker } if *marker == first)
        );

        // A build that pushes by itself pushes the marker with the image, and the check asks for
        // the registry cache too.
        let mut registry = config.clone();
        registry.cache = CacheMode::Registry;
        let plan = marked(registry, &all);
        assert_eq!(plan.steps.len(), 2, "{}", plan.to_shell());
        assert!(matches!(
            &plan.steps[0].action,
            Action::Check(Check { export: Some(cache), .. }) if cache.ends_with(":buildcache")
        ));
        let build = plan.steps[1].to_shell();
        assert!(
            build.contains(
                "--tag registry.example/acme/service:latest --tag registry.example/acme/service:inputs-"
            ) && build.contains(" --push "),
            "{build}"
        );
    }

    #[test]
    fn a_failed_command_names_its_stage() {
        let plan = plan(
            &[input(
                config(&[("compile", "compile")], &["latest"]),
                SERVICE,
            )],
            &options(Push::Nothing, PullCache::Auto),
        )
        .unwrap();
        let Action::Build(runtime) = &plan.steps[0].action else {
            panic!("the final build first")
        };
        // BuildKit v0.8's and v0.13's words for a failed `RUN make` of `compile`.
        for error in [
            "ERROR: failed to solve: executor failed running [/bin/sh -c make]: exit code: 2",
            "ERROR: failed to solve: process \"/bin/sh -c make\" did not complete successfully: exit code: 2",
        ] {
            assert_eq!(runtime.stage_of_failed_command(error), Some("compile"));
        }
        assert_eq!(runtime.stage_of_failed_command("ERROR: no such file"), None);
    }

    #[test]
    fn a_builder_of_its_own_pushes_from_the_build() {
        let config = config(&[("compile", "compile")], &["latest"]);
        let options = Options {
            builder: Some("k8s".into()),
            ..options(Push::All, PullCache::Auto)
        };
        expect![[r#"
            # package `service`
            DOCKER_BUILDKIT=1 docker buildx build --builder k8s --progress=plain --build-arg BUILDKIT_INLINE_CACHE=1 --target runtime --cache-from registry.example/acme/service:runtime --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:runtime --tag registry.example/acme/service:latest --push -f /src/service/Dockerfile /src/service
            DOCKER_BUILDKIT=1 docker buildx build --builder k8s --progress=plain --build-arg BUILDKIT_INLINE_CACHE=1 --target compile --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:compile --push -f /src/service/Dockerfile /src/service
        "#]]
        .assert_eq(&shell(config, SERVICE, &options));
    }

    #[test]
    fn steps_wait_for_the_stages_they_need() {
        let five = "\
FROM scratch AS base
FROM base AS compile-a
FROM base AS compile-b
FROM scratch AS tools
FROM base AS runtime
COPY --from=compile-a /a /a
COPY --from=compile-b /b /b
";
        let config = config(
            &[("base", "base"), ("compile-b", "b"), ("compile-a", "a")],
            &["latest"],
        );
        let plan = plan(&[input(config, five)], &options(Push::All, PullCache::Auto)).unwrap();
        let summary: Vec<String> = plan
            .steps
            .iter()
            .map(|s| {
                let what = match &s.action {
                    Action::Build(b) => format!("build {}", b.stage),
                    Action::Push { image, .. } => {
                        format!("push {}", image.rsplit(':').next().unwrap())
                    }
                    Action::Pull { image } => format!("pull {image}"),
                    Action::Check(_) => "check".to_string(),
                    Action::Mark { .. } => "mark".to_string(),
                };
                format!("{} {what} after {:?}", s.id, s.after)
            })
            .collect();
        expect![[r#"
            [
                "0 build runtime after []",
                "1 build base after [0]",
                "2 push base after [1]",
                "3 build compile-a after [0]",
                "4 push a after [3]",
                "5 build compile-b after [0]",
                "6 push b after [5]",
                "7 push runtime after [0]",
                "8 push latest after [0, 7]",
            ]
        "#]]
        .assert_debug_eq(&summary);
        // Every step comes after the steps it needs.
        for step in &plan.steps {
            assert!(step.after.iter().all(|&a| a < step.id));
        }
    }

    #[test]
    fn a_tag_that_cannot_be_filled_names_package_and_stage() {
        let config = config(&[], &["{git_sha}"]);
        let no_git = Input {
            vars: Vars {
                git_sha: None,
                ..vars()
            },
            ..input(config, SERVICE)
        };
        let error = plan(&[no_git], &options(Push::Nothing, PullCache::Auto)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "package `service`, key `tags`: `{git_sha}` needs the commit sha, and this is not a git checkout"
        );
    }
}

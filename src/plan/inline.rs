//! A package with inline cache: the final target first, reading every cached stage's cache;
//! then each other cached stage, to tag and push its cache image, skipped where it is current.

use std::collections::BTreeMap;

use anyhow::Context as _;

use super::{
    add_attestations, chain, common, final_images, runs, Action, Boundary, Build, CacheRefs, Input,
    Options, Plan, Pull, PullWhen, Push, PushTag, Role,
};
use crate::config::PushCache;

/// Plans the steps of `input` into `plan`.
/// Every build also waits for `restores` (of the package's travelling cache mounts); no build
/// writes a tag that `boundary` keeps the run from writing.
pub(super) fn plan(
    plan: &mut Plan,
    input: &Input,
    options: &Options,
    restores: &[usize],
    boundary: &Boundary,
) -> anyhow::Result<()> {
    let package = &input.package;
    let config = &package.config;
    let name = &config.package;
    let docker = &options.docker;
    let refs: BTreeMap<usize, CacheRefs> = package
        .cached
        .iter()
        .map(|(&stage, template)| {
            boundary
                .refs(template, &config.cache_image, &input.vars)
                .map(|r| (stage, r))
                .map_err(|e| anyhow::anyhow!(e))
                .with_context(|| format!("package `{name}`, stage `{}`", package.graph.name(stage)))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut finals = final_images(input, options)?;
    finals.retain(|f| boundary.allows(f));
    let common = common(input, options);
    let buildx = options.builder.is_some();
    let push_cache = options.push != Push::Nothing;
    let push_finals = options.push == Push::All;
    let best_effort = options.push == Push::CacheOnly || config.push_cache == PushCache::BestEffort;

    // The default branch's caches that a build of another branch falls back to: a missing
    // one is warned of as the default branch's, by its pull or by a question.
    let mut fallbacks = Vec::new();
    for template in package.cached.values() {
        if let Some(image) = boundary.fallback(template, &config.cache_image, &input.vars) {
            if !fallbacks.contains(&image) {
                fallbacks.push(image);
            }
        }
    }
    let mut pulls = Vec::new();
    if options.pull_first {
        let mut seen = Vec::new();
        for image in refs.values().flat_map(|r| r.read.iter()) {
            if !seen.contains(image) {
                seen.push(image.clone());
                let pull = Action::Pull(Pull {
                    image: image.clone(),
                    when: PullWhen::First,
                    default_branch: fallbacks
                        .contains(image)
                        .then(|| boundary.default.describe()),
                });
                let args = vec!["pull".into(), image.clone()];
                pulls.push(plan.add(name, pull, docker, args, vec![], vec![]));
            }
        }
    }

    // The final target first, then the other cached stages in dependency order. A builder of
    // its own pushes what it builds by itself, the marker with the final image: there the
    // stage builds come first and the final build last, after all of them, so that a stage
    // build that fails leaves no marker (every stage build runs there anyway: nothing is
    // current in a builder the engine cannot see into).
    let target = package.target;
    let order = if buildx {
        package.build_order()
    } else {
        let mut order = vec![target];
        order.extend(package.build_order().into_iter().filter(|&s| s != target));
        order
    };
    let mut stage_builds = Vec::new();
    let final_ancestors = package.graph.ancestors(target);
    // A stage build whose steps the final build runs may find itself current, and so may a
    // cache push (see `Build::skip_if_current`, `PushTag::skip_if_current`).
    let build_may_skip = |stage: usize| {
        stage != target && !buildx && !options.no_cache && final_ancestors.contains(&stage)
    };
    let push_may_skip = push_cache && !buildx && !options.no_cache;
    // The answers that decide those skips, asked before any build: each image once.
    let mut questions: BTreeMap<String, usize> = BTreeMap::new();
    for &stage in &order {
        let Some(image) = &refs[&stage].write else {
            continue;
        };
        if (build_may_skip(stage) || push_may_skip) && !questions.contains_key(image) {
            let id = plan.inspect(name, docker, image, Role::Cache, vec![]);
            questions.insert(image.clone(), id);
        }
    }
    // Asked where no pull tells, and only by a run that pushes (a CI run), as the other
    // questions are.
    if push_cache && !options.pull_first {
        for image in &fallbacks {
            let id = plan.inspect(name, docker, image, Role::Fallback, vec![]);
            if let Action::Inspect(inspect) = &mut plan.steps[id].action {
                inspect.default_branch = Some(boundary.default.describe());
            }
        }
    }
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
        let mut args: Vec<String> = match &options.builder {
            Some(builder) => vec![
                "buildx".into(),
                "build".into(),
                "--builder".into(),
                builder.clone(),
            ],
            None => vec!["build".into()],
        };
        args.push(options.cli.progress(options.builder.is_some()).into());
        args.extend(["--build-arg".into(), "BUILDKIT_INLINE_CACHE=1".into()]);
        args.extend(common.head.iter().cloned());
        if let Some(target) = package.target_arg(stage) {
            args.extend(["--target".into(), target]);
        }
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

        let skip_if_current = build_may_skip(stage);
        // After the final build every stage's result is in the engine's cache, so the stage
        // builds wait for it alone, not for each other.
        let mut after = pulls.clone();
        after.extend(restores);
        after.extend(final_build);
        // The answers are known before any build starts (they go out while the preflight
        // runs): so a stage build's early start never depends on how fast the registry
        // answered compared with how fast the final build's first steps ran.
        if is_final {
            let mut asked: Vec<usize> = questions.values().copied().collect();
            asked.sort_unstable();
            after.extend(asked);
            after.extend(&stage_builds);
        }
        if let (true, Some(image)) = (skip_if_current, &own.write) {
            after.push(questions[image]);
            let pull = Action::Pull(Pull {
                image: image.clone(),
                when: PullWhen::BeforeRebuild {
                    chain: chain(package, stage),
                },
                default_branch: None,
            });
            let pull_args = vec!["pull".into(), image.clone()];
            after.push(plan.add(name, pull, docker, pull_args, vec![], after.clone()));
        }
        let build = Build {
            stage: package.graph.name(stage),
            is_final,
            writes: own.write.clone(),
            reads,
            own_cache: own.read.clone(),
            finals: finals_here.clone(),
            runs: runs(package, &chain(package, stage)),
            chain: chain(package, stage),
            skip_if_current,
            exports: None,
            export_best_effort: false,
            pushes,
            export_only: None,
            starts_early: false,
        };
        let env = vec![("DOCKER_BUILDKIT".to_string(), "1".to_string())];
        let id = plan.add(name, Action::Build(build), docker, args, env, after);
        if is_final {
            final_build = Some(id);
        } else if buildx {
            stage_builds.push(id);
        }
        if buildx {
            continue;
        }
        let mut tags: Vec<(String, bool)> = Vec::new();
        if push_cache {
            tags.extend(own.write.iter().map(|w| (w.clone(), true)));
        }
        if push_finals {
            tags.extend(finals_here.into_iter().map(|f| (f, false)));
        }
        // The tags of one image are pushed one after the other: the first uploads the layers,
        // the others find them there (two at once upload them twice, and Debian's registry
        // answers one of them with a 500).
        let mut previous = None;
        for (image, cache) in tags {
            let skip_if_current = cache && push_may_skip;
            let mut after = vec![id];
            if skip_if_current {
                after.push(questions[&image]);
            }
            let push = PushTag {
                image: image.clone(),
                build: id,
                cache,
                skip_if_current,
                chain: chain(package, stage),
                best_effort: cache && best_effort,
            };
            let push = (Action::Push(push), vec!["push".to_string(), image], after);
            // The final target's pushes go last: the stage builds, which have pushes of their
            // own to follow, are then started first when they compete for `--jobs`.
            if is_final {
                final_pushes.push(push);
            } else {
                let (action, args, mut after) = push;
                after.extend(previous);
                previous = Some(plan.add(name, action, docker, args, vec![], after));
            }
        }
    }
    let mut previous = None;
    for (action, args, mut after) in final_pushes {
        after.extend(previous);
        previous = Some(plan.add(name, action, docker, args, vec![], after));
    }
    Ok(())
}

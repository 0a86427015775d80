//! A package with a registry cache: one `docker buildx build` of the final target that reads
//! one cache manifest holding every stage's layers; where it pushes the final image, the
//! cache is exported by a second, export-only build that runs only when something is new.

use super::{
    add_attestations, chain, common, final_images, runs, Action, Boundary, Build, Input, Options,
    Plan, Push, Role,
};
use crate::config::PushCache;

/// Plans the steps of `input` into `plan`.
/// The build also waits for `restores` (of the package's travelling cache mounts); it exports
/// the cache and pushes final tags only where `boundary` lets the run write them.
///
/// With `--push` (and without `--no-cache`) the final build pushes the image without
/// `--cache-to`: an export costs seconds even when every step came from the cache (BuildKit
/// prepares and uploads a new cache manifest and config for the same records). The export is a
/// second build of the same target with `--output type=cacheonly`, all of whose steps the
/// engine then holds, which runs unless the registry already holds everything: no step of the
/// final build ran (its progress) and every layer of the pushed image is among the registry
/// cache's layers (the registry's own manifests, asked before and after the build). It may
/// start while the final build goes on, once a step is seen to run; BuildKit shares the steps
/// (not where a step uses a cache mount: see [`Build::starts_early`]).
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
    let refs = boundary
        .refs(&config.cache_tag, &config.cache_image, &input.vars)
        .map_err(|e| anyhow::anyhow!("package `{name}`, key `cache-tag`: {e}"))?;
    let mut finals = final_images(input, options)?;
    finals.retain(|f| boundary.allows(f));
    if options.push != Push::Nothing {
        if let Some(image) = boundary.fallback(&config.cache_tag, &config.cache_image, &input.vars)
        {
            let id = plan.inspect(name, &options.docker, &image, Role::Fallback, vec![]);
            if let Action::Inspect(inspect) = &mut plan.steps[id].action {
                inspect.default_branch = Some(boundary.default.describe());
            }
        }
    }
    let common = common(input, options);
    let push_finals = options.push == Push::All;
    let best_effort = options.push == Push::CacheOnly || config.push_cache == PushCache::BestEffort;

    let start = |plan_args: &mut Vec<String>| {
        plan_args.extend(["buildx".into(), "build".into()]);
        if let Some(builder) = &options.builder {
            plan_args.extend(["--builder".into(), builder.clone()]);
        }
        plan_args.push(options.cli.progress(true).into());
        plan_args.extend(common.head.iter().cloned());
        if let Some(target) = package.target_arg(package.target) {
            plan_args.extend(["--target".into(), target]);
        }
        for r in &refs.read {
            plan_args.extend(["--cache-from".into(), format!("type=registry,ref={r}")]);
        }
    };
    let exports = if options.push != Push::Nothing {
        refs.write.clone()
    } else {
        None
    };
    let cache_to = |cache: &str| {
        let mut to =
            format!("type=registry,ref={cache},mode=max,image-manifest=true,oci-mediatypes=true");
        if best_effort {
            to.push_str(",ignore-error=true");
        }
        vec!["--cache-to".to_string(), to]
    };
    // The export gets a build of its own where the final build pushes the image (the pushed
    // image's layers are then in the registry to compare), and where the final build's steps
    // stay in the engine for it (`--no-cache` would run them all again).
    let separate_export = match (&exports, finals.first()) {
        (Some(_), Some(first)) if push_finals && !options.no_cache => Some(first.clone()),
        _ => None,
    };

    let mut args: Vec<String> = Vec::new();
    start(&mut args);
    if let (Some(cache), None) = (&exports, &separate_export) {
        args.extend(cache_to(cache));
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
    let chain = chain(package, package.target);
    let build = Build {
        stage: package.graph.name(package.target),
        is_final: true,
        writes: None,
        reads: refs.read.clone(),
        own_cache: refs.read.clone(),
        finals,
        runs: runs(package, &chain),
        chain: chain.clone(),
        skip_if_current: false,
        exports: if separate_export.is_some() {
            None
        } else {
            exports.clone()
        },
        export_best_effort: best_effort,
        pushes: push_finals,
        export_only: None,
        starts_early: false,
    };
    // What the registry cache holds before the run: its layers decide the export's skip.
    if let (Some(cache), Some(_)) = (&exports, &separate_export) {
        plan.inspect(name, &options.docker, cache, Role::Cache, vec![]);
    }
    let mut id = plan.add(
        name,
        Action::Build(build.clone()),
        &options.docker,
        args,
        vec![],
        restores.to_vec(),
    );
    if let (Some(cache), Some(image)) = (&exports, separate_export) {
        let built = plan.inspect(name, &options.docker, &image, Role::Built, vec![id]);
        let mut args = Vec::new();
        start(&mut args);
        args.extend(cache_to(cache));
        args.extend(["--output".into(), "type=cacheonly".into()]);
        args.extend(common.tail.iter().cloned());
        let export = Build {
            is_final: false,
            finals: Vec::new(),
            exports: Some(cache.clone()),
            pushes: false,
            export_only: Some(image),
            starts_early: !uses_cache_mounts(package, &chain),
            ..build
        };
        id = plan.add(
            name,
            Action::Build(export),
            &options.docker,
            args,
            vec![],
            vec![id, built],
        );
    }
    // `ignore-error=true` hides a failed export: ask afterwards whether the cache is there.
    if let (Some(cache), true) = (&exports, best_effort) {
        plan.inspect(name, &options.docker, cache, Role::Written, vec![id]);
    }
    Ok(())
}

/// Whether a `RUN` of a stage in `chain` uses a cache mount.
fn uses_cache_mounts(package: &crate::package::Package, chain: &[String]) -> bool {
    package
        .graph
        .stages
        .iter()
        .any(|s| !s.cache_mounts.is_empty() && chain.contains(&package.graph.name(s.index)))
}

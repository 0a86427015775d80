//! A package with a registry cache: one `docker buildx build` of the final target that reads
//! and writes one cache manifest holding every stage's layers.

use super::{
    add_attestations, chain, common, final_images, runs, Action, Boundary, Build, Input, Options,
    Plan, Push, Role,
};
use crate::config::PushCache;

/// Plans the steps of `input` into `plan`.
/// The build also waits for `restores` (of the package's travelling cache mounts); it exports
/// the cache and pushes final tags only where `boundary` lets the run write them.
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

    let mut args: Vec<String> = vec!["buildx".into(), "build".into()];
    if let Some(builder) = &options.builder {
        args.extend(["--builder".into(), builder.clone()]);
    }
    args.push(options.cli.progress(true).into());
    args.extend(common.head.iter().cloned());
    if let Some(target) = package.target_arg(package.target) {
        args.extend(["--target".into(), target]);
    }
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
    let chain = chain(package, package.target);
    let build = Build {
        stage: package.graph.name(package.target),
        is_final: true,
        writes: None,
        reads: refs.read.clone(),
        own_cache: refs.read.clone(),
        finals,
        runs: runs(package, &chain),
        chain,
        skip_if_current: false,
        exports: exports.clone(),
        export_best_effort: best_effort,
        pushes: push_finals,
    };
    let id = plan.add(
        name,
        Action::Build(build),
        &options.docker,
        args,
        vec![],
        restores.to_vec(),
    );
    // `ignore-error=true` hides a failed export: ask afterwards whether the cache is there.
    if let (Some(cache), true) = (&exports, best_effort) {
        plan.inspect(name, &options.docker, cache, Role::Written, vec![id]);
    }
    Ok(())
}

//! The registry check: a package's build named by a marker tag, asked for before the builds and
//! pushed after them, so that a run which finds the registry holding this very build does
//! nothing else.

use super::{Action, Input, Options, Plan, Push, Role};

/// Whether a run with `options` may find its build in the registry and skip it: it pushes the
/// final tags, need not leave the image in the engine, and was not told to build everything.
/// (`--rebuild` still records the build, so it is not excluded here.)
pub fn may_skip(options: &Options) -> bool {
    options.push == Push::All && !options.load && !options.no_cache
}

/// What each kind of step that makes or publishes the image is called in the marker's hash.
///
/// Frozen: changing one changes every marker, so that every registry check misses once. These
/// are not the JSON events' `kind`s, which exist for display and may be renamed.
fn hash_key(action: &Action) -> Option<&'static [u8]> {
    match action {
        Action::Build(_) => Some(b"build"),
        Action::Push(_) => Some(b"push"),
        // How the run gets there (questions, pulls) does not change what it makes.
        // Nor do the cache mounts it carries: BuildKit keeps their content out of its own
        // cache keys too.
        Action::Inspect(_) | Action::Pull(_) | Action::Mark { .. } | Action::Mount(_) => None,
    }
}

/// The marker tag of a package's steps: `<cache-image>:inputs-<sha256>` of the sources'
/// fingerprint and of every build and push command with the checkout's paths left out (another
/// agent checks out elsewhere), or `None` when the run does not skip: it pushes no final tag,
/// must leave the image in the engine, or was told to build everything.
pub(super) fn marker(input: &Input, options: &Options, steps: &Plan) -> Option<String> {
    use sha2::{Digest, Sha256};
    let sources = input.sources.as_ref()?;
    if !may_skip(options) {
        return None;
    }
    let config = &input.package.config;
    let paths = [
        (super::path(&config.dockerfile), "{dockerfile}"),
        (super::path(&config.context), "{context}"),
        (super::path(&config.manifest_dir), "{package}"),
    ];
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    // v3: what builds (the engine, a builder, the CLI's class and environment) joined.
    field(b"xtask-docker build v3");
    field(env!("CARGO_PKG_VERSION").as_bytes());
    field(sources.as_bytes());
    // What builds: the same commands on another engine, builder or CLI can make another image.
    // The first plan of a run assumes these (the preflight has not answered yet); a run whose
    // preflight tells otherwise plans again, and so asks for another marker.
    let facts = &options.facts;
    field(
        facts
            .engine
            .as_deref()
            .unwrap_or("engine not known")
            .as_bytes(),
    );
    match &facts.builder {
        None => field(b"the engine's own builder"),
        Some(builder) => field(builder.as_deref().unwrap_or("builder not known").as_bytes()),
    }
    // `docker build` through buildx (Docker 23 and later) or the classic BuildKit client: buildx
    // adds its own defaults (attestations) to the same argv.
    field(if options.cli.build_through_buildx {
        b"buildx"
    } else {
        b"classic"
    });
    for (name, value) in &facts.env {
        field(name.as_bytes());
        field(value.as_bytes());
    }
    for step in &steps.steps {
        let Some(key) = hash_key(&step.action) else {
            continue;
        };
        field(key);
        // How the build shows its progress is for display: it depends on the CLI, not on what
        // the build makes.
        for word in step
            .args
            .iter()
            .filter(|a| !a.starts_with("--progress="))
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

/// Appends a package's `steps` after the registry's answers for `marker` and its final tags,
/// and pushes the marker last: on an agent that finds the registry holding this very build,
/// nothing else runs. With `--rebuild` there are no questions, and the marker is pushed all the
/// same: it stands for the new image.
pub(super) fn append_marked(
    plan: &mut Plan,
    mut steps: Plan,
    input: &Input,
    options: &Options,
    marker: &str,
) {
    let docker = &options.docker;
    let name = &input.package.config.package;
    let Some(final_build) = steps
        .steps
        .iter()
        .position(|s| matches!(&s.action, Action::Build(b) if b.is_final && !b.finals.is_empty()))
    else {
        plan.append(steps, &[]);
        return;
    };
    let (finals, pushes_itself, mut exports) = match &steps.steps[final_build].action {
        Action::Build(b) => (b.finals.clone(), b.pushes, b.exports.clone()),
        _ => unreachable!("found as a build"),
    };
    // The registry cache's export-only build (registry cache with `--push`) exports what the
    // final build's image came from: the marker stands for the image, and, as where one build
    // pushes the image before its export, the check asks for the cache, which a failed export
    // leaves missing.
    let export_only =
        |s: &super::Step| matches!(&s.action, Action::Build(b) if b.export_only.is_some());
    if let Some(Action::Build(b)) = steps.steps[final_build + 1..]
        .iter()
        .find(|s| export_only(s))
        .map(|s| &s.action)
    {
        exports = exports.or_else(|| b.exports.clone());
    }
    // A marker pushed with the image stands for the whole run only if no build comes after
    // it: one that failed would leave it behind. (Inline cache with a builder plans the final
    // build last; a cached stage that needs the final target would still follow it.) Then the
    // run does not skip.
    let builds_after = steps.steps[final_build + 1..]
        .iter()
        .any(|s| matches!(s.action, Action::Build(_)) && !export_only(s));
    if pushes_itself && builds_after {
        plan.append(steps, &[]);
        return;
    }
    let mut lookup = Vec::new();
    if !options.rebuild {
        lookup.push(plan.inspect(name, docker, marker, Role::Marker, vec![]));
        for image in &finals {
            lookup.push(plan.inspect(name, docker, image, Role::Final, vec![]));
        }
        // A build that pushes by itself pushes the marker with the image, before its cache
        // export has finished: a failed export leaves the cache missing, so ask for it too.
        if let (Some(cache), true) = (&exports, pushes_itself) {
            lookup.push(plan.inspect(name, docker, cache, Role::Export, vec![]));
        }
    }
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
    let ids = plan.append(steps, &lookup);
    if !pushes_itself {
        let action = Action::Mark {
            marker: marker.to_string(),
        };
        let args = vec!["push".into(), marker.to_string()];
        plan.add(name, action, docker, args, vec![], ids);
    }
}

//! `docker build`: load, fingerprint and plan every package, then run the plan and report.

use std::collections::BTreeMap;

use anyhow::bail;

use crate::cli::{BuildArgs, MessageFormat, PullCache};
use crate::config::CacheMode;
use crate::failure::Failure;
use crate::package::Package;
use crate::plan::{Input, Push};
use crate::report::message::{BuildFinished, PlanMessage};
use crate::report::Reporter;
use crate::template::Vars;
use crate::{engine, exec, git, plan, report};

use super::load::{load_from, Loaded, Members};

/// The branch for `{branch}`: from `--branch`, else the CI's variables, else git. The same for
/// every package, so asked once a run rather than once a package.
fn branch(arg: Option<&str>, head: Option<&git::Head>) -> Option<String> {
    arg.map(str::to_string)
        .or_else(|| git::branch_from_env(|v| std::env::var(v).ok()))
        .or_else(|| head.and_then(|h| h.branch.clone()))
}

/// The values a package's tags are filled with.
fn vars(package: &Package, branch: &Option<String>, head: Option<&git::Head>) -> Vars {
    Vars {
        version: package.config.version.clone(),
        git_sha: head.map(|h| h.sha.clone()),
        branch: branch.clone(),
    }
}

fn parse_build_args(args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    args.iter()
        .map(|a| match a.split_once('=') {
            Some(_) if a.contains('\0') => {
                bail!(
                    "option `--build-arg`: `{}` holds a NUL byte",
                    a.escape_debug()
                )
            }
            Some((k, v)) if !k.is_empty() && !k.starts_with('-') => {
                Ok((k.to_string(), v.to_string()))
            }
            _ => bail!("option `--build-arg`: `{a}` is not `KEY=VALUE`"),
        })
        .collect()
}

/// Gives every package the command line's build arguments as the config's own (they win): the
/// stage graph, and so the pin check of the images it names, then see the values the builds
/// get. `FROM ${BASE}` with `--build-arg BASE=rust:latest` must be read as `rust:latest`.
fn with_build_args(loaded: &mut [Loaded], cli: &BTreeMap<String, String>) -> anyhow::Result<()> {
    if cli.is_empty() {
        return Ok(());
    }
    for l in loaded.iter_mut() {
        let mut config = l.package.config.clone();
        config.build_args.extend(cli.clone());
        let name = config.package.clone();
        let text = std::mem::take(&mut l.package.dockerfile_text);
        l.package = Package::resolve(config, &text)
            .map_err(|e| e.context(format!("package `{name}`, with the `--build-arg` values")))?;
    }
    Ok(())
}

/// Warnings about the configuration that are not errors.
fn lint(package: &Package, reporter: &Reporter) {
    for mount in &package.mounts {
        if let Some(warning) = mount.secret_warning(&package.graph) {
            reporter.warning(&warning);
        }
    }
    let context = &package.config.context;
    let ignored = crate::fingerprint::ignore_file(&package.config.dockerfile, context).is_some();
    if !ignored && context.join("target").is_dir() {
        reporter.warning(&format!(
            "the build context `{}` holds a `target/` folder and has no `.dockerignore`: docker sends all of it to the builder on every build\nnote: add a `.dockerignore` with the line `target`",
            context.display()
        ));
    }
}

/// Runs `docker build`.
pub(super) fn build(args: &BuildArgs, reporter: &Reporter) -> anyhow::Result<()> {
    // The whole command's time, which `Finished` reports: loading and the preflight included.
    let started = std::time::Instant::now();
    // The members first: where `cargo metadata` must tell them, a dry run's time is mostly its
    // time, so nothing may delay it.
    let members = Members::start(&args.select).map_err(Failure::config)?;
    // One git call for the whole run (a workspace's packages share one checkout), made while
    // the workspace loads: on a dry run it is most of the tool's own time.
    let git_dir = super::git_dir(&args.select);
    let head = git::spawn_head(&git_dir);
    // The default branch: the CI's word, else `origin/HEAD` (asked while the workspace
    // loads, beside `git log`), else `main`; a package's `default-branch` key wins.
    let default_branch = git::spawn_default_branch(&git_dir);
    // The engine's facts for the first plan's marker, from its socket, while the workspace
    // loads (see `engine::facts`).
    let early = engine::facts::Early::start(args.push && !args.load && !args.no_cache);
    let mut loaded = load_from(&args.select, members).map_err(Failure::config)?;
    let cli_build_args = parse_build_args(&args.build_args).map_err(Failure::config)?;
    with_build_args(&mut loaded, &cli_build_args).map_err(Failure::config)?;
    let head = head.wait();
    let default_branch = default_branch.wait();
    let push = if args.push {
        Push::All
    } else if args.push_cache_only {
        Push::CacheOnly
    } else {
        Push::Nothing
    };
    let mut options = plan::Options {
        docker: engine::docker_program(),
        // Until the preflight has asked the CLI; a dry run prints the plan for a current one.
        cli: plan::Cli::CURRENT,
        run_id: run_id(),
        push,
        pull_first: args.pull_cache == PullCache::Always,
        builder: args.builder.clone(),
        load: args.load,
        no_cache: args.no_cache,
        rebuild: args.rebuild,
        build_args: cli_build_args,
        tags: args.tags.clone(),
        facts: plan::Facts::default(),
        default_branch,
        no_branch: None,
    };
    // A builder other than the engine's own builds elsewhere: its facts, not the engine's,
    // say what builds; the preflight asks `docker buildx inspect`.
    let named_builder = options.builder.is_some()
        || std::env::var_os("BUILDX_BUILDER").is_some_and(|b| !b.is_empty());
    let env = engine::facts::cli_env(
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    );
    if let Some(branch) = &args.branch {
        if branch.starts_with('-') || branch.trim().is_empty() {
            return Err(Failure::config(anyhow::anyhow!(
                "option `--branch`: `{branch}` is not a branch name"
            )));
        }
    }
    if std::env::var_os("SOURCE_DATE_EPOCH").is_some() {
        reporter.warning("`SOURCE_DATE_EPOCH` is set: buildx passes it to every build as a build argument, and a value that changes with every commit makes steps miss the cache\nnote: unset it for cached builds, or keep it fixed");
    }
    let branch = branch(args.branch.as_deref(), head.as_ref());
    if branch.is_none() {
        options.no_branch = Some(match head {
            Some(_) => git::NoBranch::Detached,
            None => git::NoBranch::NoCommit,
        });
    }
    // What each build reads from the checkout, where a build that the registry already holds
    // may be skipped (only where the run writes markers: see `plan::Boundary`). On this
    // thread: for the small contexts of a dry run, threads cost more than they save; packages
    // that share a context hash it once.
    let mut contexts = crate::fingerprint::Contexts::default();
    let fingerprints: Vec<Option<Result<String, crate::fingerprint::Unknowable>>> = loaded
        .iter()
        .map(|l| {
            let vars = vars(&l.package, &branch, head.as_ref());
            plan::checks_registry(&l.package, &vars, &options).then(|| match &env {
                Err(why) => Err(crate::fingerprint::Unknowable(why.clone())),
                Ok(_) => crate::fingerprint::sources(&l.package, &mut contexts),
            })
        })
        .collect();
    options.facts = plan::Facts {
        engine: early.wait(),
        builder: named_builder.then_some(None),
        env: env.unwrap_or_default(),
    };
    let mut inputs = Vec::new();
    for (
        Loaded {
            package,
            labels: mut source,
        },
        fingerprint,
    ) in loaded.into_iter().zip(fingerprints)
    {
        let sources = match fingerprint {
            Some(Ok(sources)) => Some(sources),
            Some(Err(why)) => {
                reporter.info(&format!(
                    "package `{}` is built even if the registry holds the same build: {}",
                    package.config.package, why.0
                ));
                None
            }
            None => None,
        };
        lint(&package, reporter);
        let vars = vars(&package, &branch, head.as_ref());
        source.revision = head.as_ref().map(|h| h.sha.clone());
        source.created = head.as_ref().map(|h| h.time.clone());
        let labels = crate::labels::oci_labels(&source, &package.config.labels);
        inputs.push(Input {
            package,
            vars,
            labels,
            sources,
        });
    }
    let plan = plan::plan(&inputs, &options).map_err(Failure::config)?;
    // Told once: a second plan after the preflight has the same boundary.
    for (_, warning) in &plan.warnings {
        reporter.warning(warning);
    }
    // Only JSON output reads the event, and building it costs as much as planning (a JSON
    // value of every step's argv, made and dropped on every dry run otherwise).
    if args.message_format == MessageFormat::Json {
        reporter.event(&PlanMessage::new(&plan));
    }
    if args.dry_run {
        reporter.stdout(&plan.to_shell());
        return Ok(());
    }

    let needs = engine::Needs {
        buildx: options.builder.is_some()
            || inputs.iter().any(|i| {
                let c = &i.package.config;
                c.cache == CacheMode::Registry
                    || c.platforms.len() > 1
                    || c.provenance.is_some()
                    || c.sbom.is_some()
            }),
        cache_export: inputs
            .iter()
            .any(|i| i.package.config.cache == CacheMode::Registry)
            && push != Push::Nothing,
        multi_platform: inputs.iter().any(|i| i.package.config.platforms.len() > 1),
        builder: options.builder.clone(),
        cache_mounts: plan.steps.iter().any(
            |s| matches!(&s.action, plan::Action::Mount(m) if m.kind == plan::MountKind::Restore),
        ),
        mount_exports: plan.steps.iter().any(
            |s| matches!(&s.action, plan::Action::Mount(m) if m.kind == plan::MountKind::Export),
        ),
        local_tags: plan.steps.iter().any(|s| match &s.action {
            plan::Action::Build(b) => b.skip_if_current,
            plan::Action::Push(p) => p.skip_if_current,
            _ => false,
        }),
        builder_facts: named_builder && inputs.iter().any(|i| i.sources.is_some()),
    };
    // From here on a signal ends every command of the run, the registry's questions that go
    // out during the preflight included.
    let mut session = exec::Session::new();
    session.prefetch(&plan);
    let engine = engine::preflight(&options.docker, &needs, session.processes());
    if let Some(signal) = session.interrupted() {
        return Err(Failure::signal(signal));
    }
    let engine = engine.map_err(Failure::engine)?;
    // The first plan assumed a current CLI and the engine its socket told (or none): plan
    // again where the preflight tells otherwise. An older CLI prints another progress form and
    // builds through another client; other facts make another marker, which the run then
    // asks for (an answer about the assumed one is never taken).
    let facts = plan::Facts {
        engine: Some(engine.facts.clone()),
        builder: named_builder.then(|| engine.builder.clone()),
        env: options.facts.env.clone(),
    };
    let mut refused = false;
    if let Some(None) = &facts.builder {
        for input in inputs.iter_mut().filter(|i| i.sources.is_some()) {
            refused = true;
            reporter.info(&format!(
                "package `{}` is built even if the registry holds the same build: `docker buildx inspect` does not tell the builder's driver, BuildKit version and platform (a builder that is not running names no version)\nnote: start it first (`docker buildx inspect --bootstrap`)",
                input.package.config.package
            ));
            input.sources = None;
        }
    }
    let plan = if engine.cli == options.cli && facts == options.facts && !refused {
        plan
    } else {
        options.cli = engine.cli;
        options.facts = facts;
        let plan = plan::plan(&inputs, &options).map_err(Failure::config)?;
        if args.message_format == MessageFormat::Json {
            reporter.event(&PlanMessage::new(&plan));
        }
        plan
    };
    reporter.detail(&format!(
        "the docker CLI `{}` is {}, its engine {}",
        options.docker, engine.client_version, engine.server_version
    ));
    let run = session.run(
        &plan,
        exec::ExecOptions {
            jobs: usize::from(args.jobs),
        },
        &engine,
        reporter,
    );
    let reports = report::stage_reports(&plan, &run);
    for warning in report::silent_misses(&plan, &run) {
        reporter.warning(&warning);
    }
    reporter.stderr(&report::summary(&reports));
    reporter.stderr(&report::mounts_summary(&report::mount_reports(&plan, &run)));
    let success = run.failure().is_none() && run.interrupted.is_none();
    let fresh = report::fresh_packages(&run);
    reporter.event(&BuildFinished::new(
        success,
        started.elapsed().as_secs_f64(),
        &reports,
        &fresh,
    ));
    if let Some(signal) = run.interrupted {
        return Err(Failure::signal(signal));
    }
    if let Some(failure) = run.failure() {
        return Err(Failure::build(anyhow::anyhow!("{failure}")));
    }
    reporter.status(
        "Finished",
        &format!("in {:.1}s", started.elapsed().as_secs_f64()),
    );
    Ok(())
}

/// The run's name: its start time in nanoseconds and the process id, which no other run on
/// this machine shares.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{nanos}-{}", std::process::id())
}

//! Finds the packages that have a `[package.metadata.docker]` table and runs a command over them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};

use anyhow::{bail, Context};

use crate::cli::{BuildArgs, CheckArgs, Color, Command, MessageFormat, PullCache, SelectArgs};
use crate::config::{CacheMode, Origin, RawConfig};
use crate::failure::Failure;
use crate::labels::LabelSource;
use crate::manifest::{self, Workspace};
use crate::package::Package;
use crate::plan::{Input, Push};
use crate::report::message::{BuildFinished, PlanMessage};
use crate::report::{Reporter, Verbosity};
use crate::template::Vars;
use crate::{engine, exec, git, graph, plan, report, Docker};

impl Docker {
    /// Runs the command. Errors carry what went wrong and which package, stage or key caused it;
    /// [`crate::exit_code`] tells the exit code a program should end with.
    pub fn run(self) -> anyhow::Result<()> {
        run(self)
    }
}

/// Runs a parsed `docker` command.
fn run(docker: Docker) -> anyhow::Result<()> {
    let verbosity = if docker.quiet {
        Verbosity::Quiet
    } else if docker.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    let color = match docker.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => Reporter::stderr_is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    match docker.command {
        Command::Build(args) => {
            let reporter =
                Reporter::new(args.message_format == MessageFormat::Json, verbosity, color);
            build(&args, &reporter)
        }
        Command::Check(args) => check(&args, &Reporter::new(false, verbosity, color)),
    }
}

/// A package with its Cargo metadata, as loaded.
pub struct Loaded {
    /// The package, its config checked against its Dockerfile.
    pub package: Package,
    /// What its OCI labels are made from (git fields still empty).
    pub labels: LabelSource,
}

/// Reads the selected packages' tables (over the workspace's defaults) and Dockerfiles, validated.
pub fn load(select: &SelectArgs) -> anyhow::Result<Vec<Package>> {
    Ok(load_with_metadata(select)?
        .into_iter()
        .map(|l| l.package)
        .collect())
}

/// [`load`], keeping what the labels are made from.
pub fn load_with_metadata(select: &SelectArgs) -> anyhow::Result<Vec<Loaded>> {
    load_from(select, Members::start(select)?)
}

/// The workspace's members: read from the manifests, or, where only cargo can tell, asked of
/// `cargo metadata --no-deps`, which is started and not yet waited for.
enum Members {
    Read(Workspace),
    Cargo(Child),
}

impl Members {
    /// Reads the manifests, or starts `cargo metadata`: the caller does what does not need the
    /// answer (starting `git log`) while it runs.
    fn start(select: &SelectArgs) -> anyhow::Result<Members> {
        let cwd = std::env::current_dir().context("cannot read the current folder")?;
        if let Some(workspace) = manifest::read(select.manifest_path.as_deref(), &cwd) {
            return Ok(Members::Read(workspace));
        }
        // The command `MetadataCommand::exec` runs, spawned as `Command::output` would.
        let mut command = cargo_metadata::MetadataCommand::new();
        command.no_deps();
        if let Some(path) = &select.manifest_path {
            command.manifest_path(path);
        }
        let child = command
            .cargo_command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(cargo_metadata::Error::Io)
            .context("`cargo metadata` failed")?;
        Ok(Members::Cargo(child))
    }

    /// The workspace, once cargo answered, with `MetadataCommand::exec`'s errors.
    fn finish(self) -> anyhow::Result<Workspace> {
        use cargo_metadata::Error;
        let child = match self {
            Members::Read(workspace) => return Ok(workspace),
            Members::Cargo(child) => child,
        };
        let read = || -> cargo_metadata::Result<cargo_metadata::Metadata> {
            let output = child.wait_with_output()?;
            if !output.status.success() {
                return Err(Error::CargoMetadata {
                    stderr: String::from_utf8(output.stderr)?,
                });
            }
            let json = std::str::from_utf8(&output.stdout)?
                .lines()
                .find(|line| line.starts_with('{'))
                .ok_or(Error::NoJson)?;
            cargo_metadata::MetadataCommand::parse(json)
        };
        let metadata = read().context("`cargo metadata` failed")?;
        Ok(Workspace::from_metadata(&metadata))
    }
}

/// [`load_with_metadata`] once the members are on their way.
fn load_from(select: &SelectArgs, members: Members) -> anyhow::Result<Vec<Loaded>> {
    let workspace = members.finish()?;
    let defaults = match &workspace.docker {
        Some(table) => RawConfig::from_json(table)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| {
                format!(
                    "in `[workspace.metadata.docker]` of `{}`",
                    workspace.root.join("Cargo.toml").display()
                )
            })?,
        None => RawConfig::default(),
    };
    let members = &workspace.members;
    for name in &select.packages {
        if !members.iter().any(|m| &m.labels.name == name) {
            let names: Vec<String> = members
                .iter()
                .map(|m| format!("`{}`", m.labels.name))
                .collect();
            bail!(
                "package `{name}` is not in the workspace\nnote: its packages are {}",
                names.join(", ")
            );
        }
    }
    let mut loaded = Vec::new();
    for member in members {
        let name = &member.labels.name;
        let chosen = select.packages.is_empty() || select.packages.contains(name);
        // A member opts in with a table of its own, which may be empty.
        let table = match (chosen, &member.docker) {
            (false, _) => continue,
            (true, Some(table)) => table,
            (true, None) if select.packages.is_empty() => continue,
            (true, None) => bail!(
                "package `{name}` has no `[package.metadata.docker]` table ({})",
                member.manifest_path.display()
            ),
        };
        let origin = Origin {
            package: name.clone(),
            version: member.labels.version.clone(),
            manifest_path: member.manifest_path.clone(),
            workspace_root: workspace.root.clone(),
        };
        let in_table = || {
            format!(
                "in `[package.metadata.docker]` of package `{name}` ({})",
                member.manifest_path.display()
            )
        };
        let raw = RawConfig::from_json(table)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(in_table)?;
        let config = raw
            .over(&defaults)
            .validate(&origin)
            .with_context(in_table)?;
        let text = std::fs::read_to_string(&config.dockerfile)
            .with_context(|| format!("cannot read `{}`", config.dockerfile.display()))?;
        let package = Package::resolve(config, &text).with_context(in_table)?;
        loaded.push(Loaded {
            package,
            labels: member.labels.clone(),
        });
    }
    if loaded.is_empty() {
        bail!(
            "no package in the workspace at `{}` has a `[package.metadata.docker]` table\nnote: add one to a package's Cargo.toml; the README lists its keys",
            workspace.root.display()
        );
    }
    Ok(loaded)
}

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

fn check(args: &CheckArgs, reporter: &Reporter) -> anyhow::Result<()> {
    let packages = load(&args.select).map_err(Failure::config)?;
    for package in packages {
        let text = match args.graph {
            Some(format) => graph::render(&package, format),
            None => describe(&package),
        };
        reporter.stdout(&format!("{text}\n"));
    }
    Ok(())
}

/// A package's stage graph as text, with the cached stages and the final target marked.
pub fn describe(package: &Package) -> String {
    let graph = &package.graph;
    let mut out = format!(
        "package `{}`: {}\n",
        package.config.package,
        package.config.dockerfile.display()
    );
    for stage in &graph.stages {
        let needs: Vec<String> = stage.deps.iter().map(|&d| graph.name(d)).collect();
        let mut marks = Vec::new();
        if package.config.cache == CacheMode::Inline {
            if let Some(tag) = package.cached.get(&stage.index) {
                marks.push(format!("cached as `{}:{tag}`", package.config.cache_image));
            }
        }
        if stage.index == package.target {
            marks.push("final target".to_string());
        }
        out.push_str(&format!(
            "  {}{}{}\n",
            graph.name(stage.index),
            if needs.is_empty() {
                String::new()
            } else {
                format!(" <- {}", needs.join(", "))
            },
            if marks.is_empty() {
                String::new()
            } else {
                format!("  ({})", marks.join("; "))
            },
        ));
    }
    if package.config.cache == CacheMode::Registry {
        out.push_str(&format!(
            "  registry cache: `{}:{}`\n",
            package.config.cache_image, package.config.cache_tag
        ));
    }
    out
}

fn parse_build_args(args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) if !k.is_empty() && !k.starts_with('-') => {
                Ok((k.to_string(), v.to_string()))
            }
            _ => bail!("option `--build-arg`: `{a}` is not `KEY=VALUE`"),
        })
        .collect()
}

/// Warnings about the configuration that are not errors.
fn lint(package: &Package, reporter: &Reporter) {
    let context = &package.config.context;
    let ignored = crate::fingerprint::ignore_file(&package.config.dockerfile, context).is_some();
    if !ignored && context.join("target").is_dir() {
        reporter.warning(&format!(
            "the build context `{}` holds a `target/` folder and has no `.dockerignore`: docker sends all of it to the builder on every build\nnote: add a `.dockerignore` with the line `target`",
            context.display()
        ));
    }
}

fn build(args: &BuildArgs, reporter: &Reporter) -> anyhow::Result<()> {
    // The whole command's time, which `Finished` reports: loading and the preflight included.
    let started = std::time::Instant::now();
    // The members first: where `cargo metadata` must tell them, a dry run's time is mostly its
    // time, so nothing may delay it.
    let members = Members::start(&args.select).map_err(Failure::config)?;
    // One git call for the whole run (a workspace's packages share one checkout), made while
    // the workspace loads: on a dry run it is most of the tool's own time.
    let git_dir = match args
        .select
        .manifest_path
        .as_deref()
        .and_then(std::path::Path::parent)
    {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let head = git::spawn_head(&git_dir);
    let loaded = load_from(&args.select, members).map_err(Failure::config)?;
    let head = head.wait();
    let push = if args.push {
        Push::All
    } else if args.push_cache_only {
        Push::CacheOnly
    } else {
        Push::Nothing
    };
    let options = plan::Options {
        docker: engine::docker_program(),
        push,
        pull_first: args.pull_cache == PullCache::Always,
        builder: args.builder.clone(),
        load: args.load,
        no_cache: args.no_cache,
        rebuild: args.rebuild,
        build_args: parse_build_args(&args.build_args).map_err(Failure::config)?,
        tags: args.tags.clone(),
    };
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
    // What each build reads from the checkout, where a build that the registry already holds
    // may be skipped. On this thread: for the small contexts of a dry run, threads cost more
    // than they save; packages that share a context hash it once.
    let wanted = plan::may_skip(&options);
    let mut contexts = crate::fingerprint::Contexts::default();
    let fingerprints: Vec<Option<Result<String, crate::fingerprint::Unknowable>>> = loaded
        .iter()
        .map(|l| wanted.then(|| crate::fingerprint::sources(&l.package, &mut contexts)))
        .collect();
    let branch = branch(args.branch.as_deref(), head.as_ref());
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
        local_tags: plan.steps.iter().any(|s| match &s.action {
            plan::Action::Build(b) => b.skip_if_current,
            plan::Action::Push(p) => p.skip_if_current,
            _ => false,
        }),
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
    reporter.detail(&format!(
        "the docker CLI `{}` is {}, its engine {}",
        options.docker, engine.client_version, engine.server_version
    ));
    let run = session.run(
        &plan,
        exec::ExecOptions {
            jobs: usize::from(args.jobs),
        },
        engine.local_tags,
        reporter,
    );
    let reports = report::stage_reports(&plan, &run);
    for warning in report::silent_misses(&plan, &run) {
        reporter.warning(&warning);
    }
    reporter.stderr(&report::summary(&reports));
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

//! Finds the packages that have a `[package.metadata.docker]` table and runs a command over them.

use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::cli::{BuildArgs, Command, SelectArgs};
use crate::config::{Config, Origin, RawConfig};
use crate::package::Package;
use crate::template::Vars;
use crate::{engine, exec, git, plan, report, Docker};

/// Runs a parsed `docker` command.
pub fn run(docker: Docker) -> anyhow::Result<()> {
    match docker.command {
        Command::Build(args) => build(&args),
        Command::Check(select) => check(&select),
    }
}

/// Reads the selected packages' tables and Dockerfiles, validated.
pub fn load(select: &SelectArgs) -> anyhow::Result<Vec<Package>> {
    let mut command = cargo_metadata::MetadataCommand::new();
    command.no_deps();
    if let Some(path) = &select.manifest_path {
        command.manifest_path(path);
    }
    let metadata = command.exec().context("`cargo metadata` failed")?;
    let members: Vec<&cargo_metadata::Package> = metadata.workspace_packages();
    for name in &select.packages {
        if !members.iter().any(|p| p.name.as_str() == name) {
            let names: Vec<String> = members.iter().map(|p| format!("`{}`", p.name)).collect();
            bail!(
                "package `{name}` is not in the workspace\nnote: its packages are {}",
                names.join(", ")
            );
        }
    }
    let mut packages = Vec::new();
    for member in members {
        let chosen =
            select.packages.is_empty() || select.packages.iter().any(|n| n == member.name.as_str());
        let table = member.metadata.get("docker");
        let table = match (chosen, table) {
            (false, _) => continue,
            (true, Some(table)) => table,
            (true, None) if select.packages.is_empty() => continue,
            (true, None) => bail!(
                "package `{}` has no `[package.metadata.docker]` table ({})",
                member.name,
                member.manifest_path
            ),
        };
        let origin = Origin {
            package: member.name.to_string(),
            version: member.version.to_string(),
            manifest_path: PathBuf::from(member.manifest_path.as_std_path()),
        };
        let in_table = || {
            format!(
                "in `[package.metadata.docker]` of package `{}` ({})",
                origin.package, member.manifest_path
            )
        };
        let raw = RawConfig::from_json(table)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(in_table)?;
        let config: Config = raw.validate(&origin).with_context(in_table)?;
        let text = std::fs::read_to_string(&config.dockerfile)
            .with_context(|| format!("cannot read `{}`", config.dockerfile.display()))?;
        packages.push(Package::resolve(config, &text).with_context(in_table)?);
    }
    if packages.is_empty() {
        bail!(
            "no package in the workspace at `{}` has a `[package.metadata.docker]` table\nnote: add one to a package's Cargo.toml; the README lists its keys",
            metadata.workspace_root
        );
    }
    Ok(packages)
}

/// The values a package's tags are filled with; git is asked only when a tag needs it.
fn vars(package: &Package) -> Vars {
    let config = &package.config;
    let templates = || config.tags.iter().chain(package.cached.values());
    let needs_git = templates().any(|t| t.needs_git());
    let needs_branch = templates().any(|t| t.uses(crate::template::Placeholder::Branch));
    Vars {
        version: config.version.clone(),
        git_sha: needs_git
            .then(|| git::head_sha(&config.manifest_dir))
            .flatten(),
        branch: needs_branch
            .then(|| {
                git::branch_from_env(|v| std::env::var(v).ok())
                    .or_else(|| git::head_branch(&config.manifest_dir))
            })
            .flatten(),
    }
}

fn check(select: &SelectArgs) -> anyhow::Result<()> {
    for package in load(select)? {
        println!("{}", describe(&package));
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
        let needs: Vec<String> = stage.deps.iter().map(|&d| graph.label(d)).collect();
        let mut marks = Vec::new();
        if let Some(tag) = package.cached.get(&stage.index) {
            marks.push(format!("cached as `{}:{tag}`", package.config.cache_image));
        }
        if stage.index == package.target {
            marks.push("final target".to_string());
        }
        out.push_str(&format!(
            "  {}{}{}\n",
            graph.label(stage.index),
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
    out
}

fn build(args: &BuildArgs) -> anyhow::Result<()> {
    let packages = load(&args.select)?;
    let options = plan::Options {
        docker: engine::docker_program(),
        push: args.push,
        pull_cache: args.pull_cache,
    };
    let with_vars: Vec<(Package, Vars)> = packages
        .into_iter()
        .map(|p| {
            let v = vars(&p);
            (p, v)
        })
        .collect();
    let plan = plan::plan(&with_vars, &options)?;
    if args.dry_run {
        print!("{}", plan.to_shell());
        return Ok(());
    }
    let engine = engine::preflight(&options.docker)?;
    let run = exec::run(&plan, &engine);
    eprint!("{}", report::summary(&plan, &run));
    if let Some(failure) = run.failure() {
        bail!("{failure}");
    }
    eprintln!("{:>12} in {:.1}s", "Finished", run.seconds);
    Ok(())
}

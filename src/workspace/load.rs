//! Finds the packages that have a `[package.metadata.docker]` table and loads them: the
//! manifests, the tables over the workspace's defaults, the Dockerfiles.

use std::process::{Child, Stdio};

use anyhow::{bail, Context};

use crate::cli::SelectArgs;
use crate::config::{Origin, RawConfig};
use crate::labels::LabelSource;
use crate::manifest::{self, Workspace};
use crate::package::Package;

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
pub(super) enum Members {
    Read(Workspace),
    Cargo(Child),
}

impl Members {
    /// Reads the manifests, or starts `cargo metadata`: the caller does what does not need the
    /// answer (starting `git log`) while it runs.
    pub(super) fn start(select: &SelectArgs) -> anyhow::Result<Members> {
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
pub(super) fn load_from(select: &SelectArgs, members: Members) -> anyhow::Result<Vec<Loaded>> {
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

//! The command line: a clap struct that a user's xtask embeds as one of its subcommands.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

/// `cargo xtask docker`: build the images declared in `[package.metadata.docker]`.
///
/// Put it into your xtask's subcommand enum as `Docker(xtask_docker::Docker)` and call
/// [`Docker::run`].
#[derive(Debug, Clone, Args)]
pub struct Docker {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The `docker` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Pull, build and push each package's stages with BuildKit and registry caches.
    Build(BuildArgs),
    /// Validate each package's configuration against its Dockerfile and print the stage graph.
    Check(SelectArgs),
}

/// Which packages to work on, as in cargo.
#[derive(Debug, Clone, Default, Args)]
pub struct SelectArgs {
    /// Package to build (repeatable); default: every workspace member with `[package.metadata.docker]`.
    #[arg(short = 'p', long = "package", value_name = "NAME")]
    pub packages: Vec<String>,
    /// Path to Cargo.toml.
    #[arg(long, value_name = "PATH")]
    pub manifest_path: Option<PathBuf>,
}

/// Arguments of `docker build`.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Push every cache tag and every final tag to the registry.
    #[arg(long)]
    pub push: bool,
    /// When to `docker pull` the cache images before building.
    #[arg(long, value_enum, default_value_t = PullCache::Auto, value_name = "WHEN")]
    pub pull_cache: PullCache,
    /// Print the commands as shell lines and run nothing (needs no engine).
    #[arg(long)]
    pub dry_run: bool,
}

/// When cache images are pulled before the builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PullCache {
    /// Only where BuildKit cannot read the cache from the registry by itself (with BuildKit and
    /// inline cache it always can, so nothing is pulled).
    Auto,
    /// Pull every cache image first; a missing one means "no cache yet".
    Always,
    /// Never pull.
    Never,
}

impl Docker {
    /// Runs the command; errors carry what went wrong and which package, stage or key caused it.
    pub fn run(self) -> anyhow::Result<()> {
        crate::workspace::run(self)
    }
}

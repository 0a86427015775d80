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
    /// Coloring of messages.
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true, value_name = "WHEN")]
    pub color: Color,
    /// Print only warnings, errors and the summary.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Stream all of docker's and BuildKit's output, each line prefixed with its stage.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

/// The `docker` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Pull, build and push each package's stages with BuildKit and registry caches.
    Build(BuildArgs),
    /// Validate each package's configuration against its Dockerfile and print the stage graph.
    Check(CheckArgs),
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

/// Arguments of `docker check`.
#[derive(Debug, Clone, Default, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Print the stage graph as a Mermaid or Graphviz picture.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub graph: Option<crate::graph::GraphFormat>,
}

/// Arguments of `docker build`.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Push every cache tag and every final tag to the registry.
    #[arg(long, conflicts_with = "push_cache_only")]
    pub push: bool,
    /// Push cache tags only, never final tags (pull requests); a refused cache push is a warning.
    #[arg(long)]
    pub push_cache_only: bool,
    /// When to `docker pull` the cache images before building.
    #[arg(long, value_enum, default_value_t = PullCache::Auto, value_name = "WHEN")]
    pub pull_cache: PullCache,
    /// Print the commands as shell lines and run nothing (needs no engine).
    #[arg(long)]
    pub dry_run: bool,
    /// The branch for `{branch}` in tags; default: the CI's variables, else git.
    #[arg(long, value_name = "NAME")]
    pub branch: Option<String>,
    /// A buildx builder other than the engine's own (a remote BuildKit, a Kubernetes builder).
    #[arg(long, value_name = "NAME")]
    pub builder: Option<String>,
    /// Load final images into the engine even where the build pushes them itself.
    #[arg(long)]
    pub load: bool,
    /// How many steps may run at once (builds of independent stages and packages, pushes).
    #[arg(short, long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// `human` messages, or `json`: one event a line on stdout, everything else on stderr.
    #[arg(long, value_enum, default_value_t = MessageFormat::Human, value_name = "FMT")]
    pub message_format: MessageFormat,
    /// A build argument for every build (repeatable); wins over the config's `build-args`.
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// A tag added to every package's final tags (repeatable; placeholders allowed).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Build every step; read no cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Build and push even when the registry holds a build of the same sources and commands.
    /// (The new image is then recorded as that build.)
    #[arg(long)]
    pub rebuild: bool,
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

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    /// When stderr is a terminal.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// `--message-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MessageFormat {
    /// Text for people.
    Human,
    /// JSON events, one a line, on stdout.
    Json,
}

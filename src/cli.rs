//! The command line: a clap struct that a user's xtask embeds as one of its subcommands, with
//! builder methods for a task that configures it in code.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

/// `cargo xtask docker`: build the images declared in `[package.metadata.docker]`.
///
/// Put it into your xtask's subcommand enum as `Docker(xtask_docker::Docker)` and call
/// [`Docker::run`] (see the crate's documentation), or make one in code:
///
/// ```no_run
/// use xtask_docker::{BuildArgs, Docker};
///
/// let release = Docker::build(BuildArgs::default().package("service").push().tag("stable"));
/// release.run()?;
/// # Ok::<(), xtask_docker::anyhow::Error>(())
/// ```
#[derive(Debug, Clone, Args)]
#[non_exhaustive]
pub struct Docker {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Coloring of messages.
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true, value_name = "WHEN")]
    pub(crate) color: Color,
    /// Print only warnings, errors and the summary.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// Stream all of docker's and BuildKit's output, each line prefixed with its stage.
    #[arg(short, long, global = true)]
    pub(crate) verbose: bool,
}

impl Docker {
    /// `docker build` with `args`.
    pub fn build(args: BuildArgs) -> Docker {
        Docker::new(Command::Build(args))
    }

    /// `docker check` with `args`.
    pub fn check(args: CheckArgs) -> Docker {
        Docker::new(Command::Check(args))
    }

    fn new(command: Command) -> Docker {
        Docker {
            command,
            color: Color::Auto,
            quiet: false,
            verbose: false,
        }
    }

    /// Colors messages `when`.
    pub fn color(mut self, when: Color) -> Docker {
        self.color = when;
        self
    }

    /// Prints only warnings, errors and the summary.
    pub fn quiet(mut self) -> Docker {
        (self.quiet, self.verbose) = (true, false);
        self
    }

    /// Streams all of docker's and BuildKit's output.
    pub fn verbose(mut self) -> Docker {
        (self.quiet, self.verbose) = (false, true);
        self
    }
}

/// The `docker` subcommands.
#[derive(Debug, Clone, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Build each package's image with BuildKit, its stages' caches read from and pushed to a
    /// registry.
    Build(BuildArgs),
    /// Validate each package's configuration against its Dockerfile and print the stage graph.
    Check(CheckArgs),
}

/// Which packages to work on, as in cargo.
#[derive(Debug, Clone, Default, Args)]
#[non_exhaustive]
pub struct SelectArgs {
    /// Package to build (repeatable); default: every workspace member with `[package.metadata.docker]`.
    #[arg(short = 'p', long = "package", value_name = "NAME")]
    pub(crate) packages: Vec<String>,
    /// Path to Cargo.toml.
    #[arg(long, value_name = "PATH")]
    pub(crate) manifest_path: Option<PathBuf>,
}

impl SelectArgs {
    /// Works on package `name` too (by default: every member with a table).
    pub fn package(mut self, name: impl Into<String>) -> SelectArgs {
        self.packages.push(name.into());
        self
    }

    /// Reads the workspace of `path` (a Cargo.toml) instead of the current folder's.
    pub fn manifest_path(mut self, path: impl Into<PathBuf>) -> SelectArgs {
        self.manifest_path = Some(path.into());
        self
    }
}

/// Arguments of `docker check`.
#[derive(Debug, Clone, Default, Args)]
#[non_exhaustive]
pub struct CheckArgs {
    #[command(flatten)]
    pub(crate) select: SelectArgs,
    /// Print the stage graph as a Mermaid or Graphviz picture.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub(crate) graph: Option<GraphFormat>,
}

impl CheckArgs {
    /// Checks these packages.
    pub fn select(mut self, select: SelectArgs) -> CheckArgs {
        self.select = select;
        self
    }

    /// Prints the stage graph as a picture in `format`.
    pub fn graph(mut self, format: GraphFormat) -> CheckArgs {
        self.graph = Some(format);
        self
    }
}

pub use crate::graph::GraphFormat;

/// Arguments of `docker build`.
#[derive(Debug, Clone, Args)]
#[non_exhaustive]
pub struct BuildArgs {
    #[command(flatten)]
    pub(crate) select: SelectArgs,
    /// Push every cache tag and every final tag to the registry.
    #[arg(long, conflicts_with = "push_cache_only")]
    pub(crate) push: bool,
    /// Push cache tags only, never final tags (pull requests); a refused cache push is a warning.
    #[arg(long)]
    pub(crate) push_cache_only: bool,
    /// When to `docker pull` the cache images before building.
    #[arg(long, value_enum, default_value_t = PullCache::Auto, value_name = "WHEN")]
    pub(crate) pull_cache: PullCache,
    /// Print the commands as shell lines and run nothing (needs no engine).
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// The branch for `{branch}` in tags; default: the CI's variables, else git.
    #[arg(long, value_name = "NAME")]
    pub(crate) branch: Option<String>,
    /// A buildx builder other than the engine's own (a remote BuildKit, a Kubernetes builder).
    #[arg(long, value_name = "NAME")]
    pub(crate) builder: Option<String>,
    /// Load final images into the engine even where the build pushes them itself.
    #[arg(long)]
    pub(crate) load: bool,
    /// How many steps may run at once (builds of independent stages and packages, pushes).
    #[arg(short, long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) jobs: u16,
    /// `human` messages, or `json`: one event a line on stdout, everything else on stderr.
    #[arg(long, value_enum, default_value_t = MessageFormat::Human, value_name = "FMT")]
    pub(crate) message_format: MessageFormat,
    /// A build argument for every build (repeatable); wins over the config's `build-args`.
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub(crate) build_args: Vec<String>,
    /// A tag added to every package's final tags (repeatable; placeholders allowed).
    #[arg(long = "tag", value_name = "TAG")]
    pub(crate) tags: Vec<String>,
    /// Build every step; read no cache.
    #[arg(long)]
    pub(crate) no_cache: bool,
    /// Build and push even when the registry holds a build of the same sources and commands.
    /// (The new image is then recorded as that build.)
    #[arg(long)]
    pub(crate) rebuild: bool,
}

impl Default for BuildArgs {
    /// What `docker build` without options does: build every member with a table, push
    /// nothing.
    fn default() -> BuildArgs {
        BuildArgs {
            select: SelectArgs::default(),
            push: false,
            push_cache_only: false,
            pull_cache: PullCache::Auto,
            dry_run: false,
            branch: None,
            builder: None,
            load: false,
            jobs: 2,
            message_format: MessageFormat::Human,
            build_args: Vec::new(),
            tags: Vec::new(),
            no_cache: false,
            rebuild: false,
        }
    }
}

impl BuildArgs {
    /// Builds these packages.
    pub fn select(mut self, select: SelectArgs) -> BuildArgs {
        self.select = select;
        self
    }

    /// Builds package `name` too (by default: every member with a table).
    pub fn package(mut self, name: impl Into<String>) -> BuildArgs {
        self.select = self.select.package(name);
        self
    }

    /// `--push`: pushes every cache tag and every final tag.
    pub fn push(mut self) -> BuildArgs {
        (self.push, self.push_cache_only) = (true, false);
        self
    }

    /// `--push-cache-only`: pushes cache tags only (pull requests).
    pub fn push_cache_only(mut self) -> BuildArgs {
        (self.push, self.push_cache_only) = (false, true);
        self
    }

    /// `--branch`: the branch for `{branch}`.
    pub fn branch(mut self, name: impl Into<String>) -> BuildArgs {
        self.branch = Some(name.into());
        self
    }

    /// `--jobs`: how many steps may run at once (at least 1).
    pub fn jobs(mut self, jobs: u16) -> BuildArgs {
        self.jobs = jobs.max(1);
        self
    }

    /// `--build-arg KEY=VALUE`.
    pub fn build_arg(mut self, key: &str, value: &str) -> BuildArgs {
        self.build_args.push(format!("{key}={value}"));
        self
    }

    /// `--tag`: a tag added to every package's final tags.
    pub fn tag(mut self, tag: impl Into<String>) -> BuildArgs {
        self.tags.push(tag.into());
        self
    }

    /// `--dry-run`: prints the plan and runs nothing.
    pub fn dry_run(mut self) -> BuildArgs {
        self.dry_run = true;
        self
    }

    /// `--rebuild`: builds even when the registry holds this very build.
    pub fn rebuild(mut self) -> BuildArgs {
        self.rebuild = true;
        self
    }

    /// `--message-format`.
    pub fn message_format(mut self, format: MessageFormat) -> BuildArgs {
        self.message_format = format;
        self
    }
}

/// When cache images are pulled before the builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[non_exhaustive]
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
#[non_exhaustive]
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
#[non_exhaustive]
pub enum MessageFormat {
    /// Text for people.
    Human,
    /// JSON events, one a line, on stdout.
    Json,
}

//! Ties the modules together for each command: [`load`] finds and loads the packages, `build`
//! and `check` run the commands.

use crate::cli::{Color, Command, MessageFormat};
use crate::report::{Reporter, Verbosity};
use crate::Docker;

mod build;
mod check;
mod load;

pub use load::{load, load_with_metadata, Loaded};

impl Docker {
    /// Runs the command. Errors carry what went wrong and which package, stage or key caused it;
    /// [`crate::exit_code`] tells the exit code a program should end with.
    pub fn run(self) -> anyhow::Result<()> {
        run(self)
    }
}

/// The folder git is asked about: the manifest's, else the current one.
fn git_dir(select: &crate::cli::SelectArgs) -> std::path::PathBuf {
    match select
        .manifest_path
        .as_deref()
        .and_then(std::path::Path::parent)
    {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::path::PathBuf::from("."),
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
            build::build(&args, &reporter)
        }
        Command::Check(args) => check::check(&args, &Reporter::new(false, verbosity, color)),
    }
}

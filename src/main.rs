//! `xtask-docker docker ...`: the library's command as a program of its own, for repositories
//! without an xtask and for this repository's end-to-end tests. It embeds the command exactly
//! as a user's xtask does.

use std::process::ExitCode;

use xtask_docker::clap::{self, Parser};

#[derive(Parser)]
#[command(name = "xtask-docker", version)]
enum Cli {
    /// Build the images declared in `[package.metadata.docker]`.
    Docker(xtask_docker::Docker),
}

fn main() -> ExitCode {
    let Cli::Docker(docker) = Cli::parse();
    xtask_docker::finish(docker.run())
}

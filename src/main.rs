//! `xtask-docker docker ...`: the library's command as a program of its own, for repositories
//! without an xtask and for this repository's end-to-end tests. It embeds the command exactly
//! as a user's xtask does.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "xtask-docker", version)]
enum Cli {
    /// Build the images declared in `[package.metadata.docker]`.
    Docker(xtask_docker::Docker),
}

fn main() -> ExitCode {
    let Cli::Docker(docker) = Cli::parse();
    match docker.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(u8::try_from(xtask_docker::exit_code(&error)).unwrap_or(1))
        }
    }
}

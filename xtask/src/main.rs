//! This repository's tasks: `cargo xtask <task>` (see `cargo xtask --help`).

use clap::{Parser, Subcommand};

mod bench;
mod ci;
mod demo;
mod engine;
mod test;

/// This repository's tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "This repository's tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

/// One task.
#[derive(Debug, Subcommand)]
enum Task {
    /// Build the images declared in `[package.metadata.docker]` (what users embed).
    Docker(xtask_docker::Docker),
    /// Install, start or stop the local engine and registry.
    #[command(subcommand)]
    Engine(engine::EngineTask),
    /// Install the engines' tools, then run `cargo test --workspace [ARGS...]`.
    Test(test::TestArgs),
    /// What CI runs: rustfmt check, clippy, then the tests.
    Ci(test::TestArgs),
    /// Build the Rust service cold on a fresh engine, then after an edit on another fresh one.
    Demo,
    /// Benchmark the tool against the hand-written script and plain BuildKit on fresh engines.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().task {
        Task::Docker(docker) => docker.run(),
        Task::Engine(task) => engine::run(task),
        Task::Test(args) => test::run(&args),
        Task::Ci(args) => ci::run(&args),
        Task::Demo => demo::run(),
        Task::Bench(args) => bench::run(&args),
    };
    // 1 a build or push failed, 2 bad configuration, 3 the engine could not be used.
    xtask_docker::finish(result)
}

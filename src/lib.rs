//! `cargo xtask docker`: multi-stage Docker builds whose stage caches live in a registry,
//! declared in `Cargo.toml`.
//!
//! A package declares its image in `[package.metadata.docker]` (the README lists every key);
//! this crate gives a repository's xtask the command that builds it with BuildKit, reading and
//! pushing the caches of the Dockerfile's stages, so that a CI agent that starts with an empty
//! Docker cache rebuilds only what changed. Embed [`Docker`] as one of your xtask's
//! subcommands:
//!
//! ```no_run
//! use xtask_docker::clap::{self, Parser};
//!
//! /// This repository's tasks.
//! #[derive(Parser)]
//! enum Xtask {
//!     /// Build the images declared in `[package.metadata.docker]`.
//!     Docker(xtask_docker::Docker),
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let Xtask::Docker(docker) = Xtask::parse();
//!     xtask_docker::finish(docker.run())
//! }
//! ```
//!
//! [`finish`] prints an error with its causes and ends with its [`exit_code`]: 1 a build or
//! push failed, 2 bad configuration, 3 the engine or registry could not be used, 128 + N a
//! signal. A task that configures the command in code uses the builder methods of [`Docker`]
//! and [`BuildArgs`]. `clap` and `anyhow` are re-exported, so the xtask needs no dependency of
//! its own on them.
//!
//! Inside, data flows one way: `manifest` (the workspace's members) -> `config` (their
//! Cargo.toml tables) -> `dockerfile` (the stage graph) -> `package` (the config checked
//! against the graph) -> `fingerprint` (what the build reads from the checkout) -> `plan`
//! (pure: every command the run may start) -> `engine` (what the CLI and builder can do, and
//! how commands run) -> `exec` (runs the steps) -> `report` (what the user sees). `workspace`
//! ties them together.

#![deny(missing_docs)]

pub use anyhow;
pub use clap;

mod cli;
#[doc(hidden)]
pub mod config;
mod diagnose;
#[doc(hidden)]
pub mod dockerfile;
mod engine;
mod exec;
mod failure;
mod fingerprint;
mod git;
mod graph;
mod labels;
#[doc(hidden)]
pub mod manifest;
#[doc(hidden)]
pub mod package;
mod plan;
#[doc(hidden)]
pub mod progress;
#[doc(hidden)]
pub mod reference;
mod report;
#[doc(hidden)]
pub mod template;
#[doc(hidden)]
pub mod workspace;

pub use cli::{
    BuildArgs, CheckArgs, Color, Command, Docker, GraphFormat, MessageFormat, PullCache, SelectArgs,
};
pub use failure::{exit_code, finish};

//! `cargo xtask docker`: multi-stage Docker builds whose stage caches live in a registry.
//!
//! The data flows one way: [`manifest`] (the workspace's members) -> [`config`] (their
//! Cargo.toml tables) -> [`dockerfile`] (the stage graph) -> [`package`] (the config checked
//! against the graph) -> [`fingerprint`] (what the build reads from the checkout) -> [`plan`]
//! (pure: the steps to run) -> [`engine`] (what the CLI and builder can do) -> [`exec`] (runs the
//! steps) -> [`report`] (what happened). [`workspace`] ties them together.

pub mod cli;
pub mod config;
pub mod diagnose;
pub mod dockerfile;
pub mod engine;
pub mod exec;
pub mod failure;
pub mod fingerprint;
pub mod git;
pub mod graph;
pub mod labels;
pub mod manifest;
pub mod package;
pub mod plan;
pub mod progress;
pub mod reference;
pub mod report;
pub mod template;
pub mod workspace;

pub use cli::Docker;
pub use failure::exit_code;

//! `cargo xtask engine`: install the tools, or run one persistent engine and registry for
//! working by hand.

use std::path::Path;

use anyhow::{Context, Result};
use clap::Subcommand;
use testbed::{Engine, EngineOptions, Flavor, Registry, RegistryOptions};

/// The persistent engine's directory; its socket is `sock` in there.
pub const AGENT_DIR: &str = "/var/lib/xtask-docker/agent";

/// The persistent modern engine's directory (`engine up --modern`); its socket is `sock` in
/// there.
pub const MODERN_AGENT_DIR: &str = "/var/lib/xtask-docker/modern-agent";

/// The persistent registry's directory; its storage is `data` in there.
pub const REGISTRY_DIR: &str = "/var/lib/xtask-docker/registry";

/// The persistent registry's port on 127.0.0.1 (the example service's images name it).
pub const REGISTRY_PORT: u16 = 5000;

/// `engine` subcommands.
#[derive(Debug, Subcommand)]
pub enum EngineTask {
    /// Install what is missing: Debian 12's docker.io, docker-registry, busybox-static, iptables,
    /// apache2-utils, qemu-user-static and binfmt-support; the buildx plugin and the modern engine
    /// (docker.io 26, containerd 1.7) from Debian 13; Debian 12's arm64 busybox.
    Install,
    /// Start one engine (data in /var/lib/xtask-docker/agent) and a registry on 127.0.0.1:5000
    /// that keep running; print the `DOCKER_HOST` to use.
    Up {
        /// Start the modern engine (dockerd 26 with the containerd image store, data in
        /// /var/lib/xtask-docker/modern-agent) instead: it exports build cache and builds several
        /// platforms.
        #[arg(long)]
        modern: bool,
    },
    /// Stop what `engine up` started (data and images are kept).
    Down,
}

/// Runs an `engine` subcommand.
pub fn run(task: EngineTask) -> Result<()> {
    match task {
        EngineTask::Install => testbed::install::install_all(),
        EngineTask::Up { modern } => up(modern),
        EngineTask::Down => down(),
    }
}

fn up(modern: bool) -> Result<()> {
    testbed::install::install_all()?;
    let tools = if modern {
        testbed::require_modern().context("the modern engine's tools are missing")?
    } else {
        testbed::require().context("the engine's tools are missing")?
    };
    let (dir, flavor, what) = if modern {
        (MODERN_AGENT_DIR, Flavor::Modern, "modern engine")
    } else {
        (AGENT_DIR, Flavor::Classic, "engine")
    };
    match Engine::running_in(Path::new(dir)) {
        Some(pid) => println!("engine up: {what} already running in `{dir}` (pid `{pid}`)"),
        None => {
            let engine = Engine::start(
                &tools,
                EngineOptions {
                    flavor,
                    dir: Some(dir.into()),
                },
            )?;
            let pid = engine.detach();
            println!("engine up: {what} started in `{dir}` (pid `{pid}`)");
        }
    }
    match Registry::running_in(Path::new(REGISTRY_DIR)) {
        Some(pid) => println!(
            "engine up: registry already running on `127.0.0.1:{REGISTRY_PORT}` (pid `{pid}`)"
        ),
        None => {
            let registry = Registry::start(
                &tools,
                RegistryOptions {
                    dir: Some(REGISTRY_DIR.into()),
                    port: Some(REGISTRY_PORT),
                    auth: None,
                },
            )?;
            let addr = registry.addr();
            let pid = registry.detach().unwrap_or_default();
            println!("engine up: registry started on `{addr}` (pid `{pid}`), storage in `{REGISTRY_DIR}/data`");
        }
    }
    println!("export DOCKER_HOST=unix://{dir}/sock");
    Ok(())
}

fn down() -> Result<()> {
    let mut stopped = false;
    for dir in [AGENT_DIR, MODERN_AGENT_DIR] {
        if Path::new(dir).exists() && Engine::stop_in(Path::new(dir))? {
            println!("engine down: engine in `{dir}` stopped");
            stopped = true;
        }
    }
    if Path::new(REGISTRY_DIR).exists() && Registry::stop_in(Path::new(REGISTRY_DIR))? {
        println!("engine down: registry on `127.0.0.1:{REGISTRY_PORT}` stopped");
        stopped = true;
    }
    if !stopped {
        println!("engine down: nothing was running");
    }
    let cleaned = testbed::clean_leftovers();
    if cleaned > 0 {
        println!("engine down: removed {cleaned} directories left by killed test runs");
    }
    Ok(())
}

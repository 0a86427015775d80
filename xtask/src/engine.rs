//! `cargo xtask engine`: install the tools, or run one persistent engine and registry for
//! working by hand.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use testbed::{Engine, EngineOptions, Flavor, Registry, RegistryOptions};

/// Where `engine up` keeps the engines' and the registry's data unless `--dir` says otherwise.
pub const DATA_DIR: &str = "/var/lib/xtask-docker";

/// The persistent engine's directory under the data directory; its socket is `sock` in there.
const AGENT_DIR: &str = "agent";

/// The persistent modern engine's directory (`engine up --modern`) under the data directory.
const MODERN_AGENT_DIR: &str = "modern-agent";

/// The persistent registry's directory under the data directory; its storage is `data` in
/// there, its port in `port`.
const REGISTRY_DIR: &str = "registry";

/// The persistent registry's port on 127.0.0.1 (the example service's images name it).
pub const REGISTRY_PORT: u16 = 5000;

/// `engine` subcommands.
#[derive(Debug, Subcommand)]
pub enum EngineTask {
    /// Install what is missing: Debian 12's docker.io, docker-registry, busybox-static, iptables,
    /// apache2-utils, qemu-user-static, binfmt-support and mmdebstrap; the buildx plugin and the
    /// modern engine (docker.io 26, containerd 1.7) from Debian 13; Debian 12's arm64 busybox; the
    /// Rust images (a Debian 13 toolchain with cargo-chef, and a runtime) in
    /// /var/cache/xtask-docker-testbed.
    Install,
    /// Start one engine (data in DIR/agent) and a registry on 127.0.0.1:PORT (storage in
    /// DIR/registry) that keep running; print the `DOCKER_HOST` to use. Works from any folder:
    /// `cargo run --manifest-path CLONE/Cargo.toml -p xtask -- engine up`.
    Up {
        /// Start the modern engine (dockerd 26 with the containerd image store, data in
        /// DIR/modern-agent) instead: it exports build cache and builds several platforms.
        #[arg(long)]
        modern: bool,
        /// Where the engine's and the registry's data live.
        #[arg(long, value_name = "DIR", default_value = DATA_DIR)]
        dir: PathBuf,
        /// The registry's port on 127.0.0.1; 0 takes a free one.
        #[arg(long, value_name = "PORT", default_value_t = REGISTRY_PORT)]
        port: u16,
    },
    /// Stop what `engine up` started (data and images are kept).
    Down {
        /// The folder `engine up` was given.
        #[arg(long, value_name = "DIR", default_value = DATA_DIR)]
        dir: PathBuf,
    },
}

/// Runs an `engine` subcommand.
pub fn run(task: EngineTask) -> Result<()> {
    match task {
        EngineTask::Install => testbed::install::install_all(),
        EngineTask::Up { modern, dir, port } => up(modern, &dir, port),
        EngineTask::Down { dir } => down(&dir),
    }
}

fn up(modern: bool, data: &Path, port: u16) -> Result<()> {
    testbed::install::install_all()?;
    let tools = if modern {
        testbed::require_modern().context("the modern engine's tools are missing")?
    } else {
        testbed::require().context("the engine's tools are missing")?
    };
    std::fs::create_dir_all(data).with_context(|| format!("cannot create `{}`", data.display()))?;
    // Absolute, so that the `DOCKER_HOST` printed works from any folder.
    let data = std::fs::canonicalize(data)?;
    let (dir, flavor, what) = if modern {
        (data.join(MODERN_AGENT_DIR), Flavor::Modern, "modern engine")
    } else {
        (data.join(AGENT_DIR), Flavor::Classic, "engine")
    };
    let shown = dir.display();
    match Engine::running_in(&dir) {
        Some(pid) => println!("engine up: {what} already running in `{shown}` (pid `{pid}`)"),
        None => {
            let engine = Engine::start(
                &tools,
                EngineOptions {
                    flavor,
                    dir: Some(dir.clone()),
                },
            )?;
            let pid = engine.detach();
            println!("engine up: {what} started in `{shown}` (pid `{pid}`)");
        }
    }
    let registry_dir = data.join(REGISTRY_DIR);
    let port_file = registry_dir.join("port");
    match Registry::running_in(&registry_dir) {
        Some(pid) => {
            let port = std::fs::read_to_string(&port_file)
                .map(|p| p.trim().to_string())
                .unwrap_or_else(|_| REGISTRY_PORT.to_string());
            println!("engine up: registry already running on `127.0.0.1:{port}` (pid `{pid}`)")
        }
        None => {
            let registry = Registry::start(
                &tools,
                RegistryOptions {
                    dir: Some(registry_dir.clone()),
                    port: (port != 0).then_some(port),
                    auth: None,
                },
            )?;
            let addr = registry.addr();
            let port = addr.rsplit(':').next().unwrap_or_default().to_string();
            std::fs::write(&port_file, format!("{port}\n"))?;
            let pid = registry.detach().unwrap_or_default();
            println!(
                "engine up: registry started on `{addr}` (pid `{pid}`), storage in `{}`",
                registry_dir.join("data").display()
            );
        }
    }
    println!("note: this engine has no bridge network: builds need `network = \"none\"`");
    println!("export DOCKER_HOST=unix://{shown}/sock");
    Ok(())
}

fn down(data: &Path) -> Result<()> {
    let mut stopped = false;
    for dir in [AGENT_DIR, MODERN_AGENT_DIR] {
        let dir = data.join(dir);
        if dir.exists() && Engine::stop_in(&dir)? {
            println!("engine down: engine in `{}` stopped", dir.display());
            stopped = true;
        }
    }
    let registry_dir = data.join(REGISTRY_DIR);
    if registry_dir.exists() && Registry::stop_in(&registry_dir)? {
        println!(
            "engine down: registry in `{}` stopped",
            registry_dir.display()
        );
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

//! `cargo xtask demo`: the quick start's main job. Builds the example service on a fresh engine
//! (cold); then on another fresh engine, which finds the very build in the registry and does
//! nothing; then on a third with `--rebuild`, whose steps all come from the registry cache.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use testbed::{Engine, Registry, RegistryOptions, Tools};
use xshell::{cmd, Shell};

use crate::engine::REGISTRY_PORT;
use crate::test::root;

/// Runs the demo.
pub fn run() -> Result<()> {
    testbed::install::install_all()?;
    let tools = testbed::require().context("the engine's tools are missing")?;
    let registry = Registry::start(
        &tools,
        RegistryOptions {
            port: Some(REGISTRY_PORT),
            ..RegistryOptions::default()
        },
    )
    .context("the demo needs port 5000 for its registry; if `cargo xtask engine up` holds it, run `cargo xtask engine down`")?;
    println!("demo: registry on `{}`", registry.addr());

    let work = testbed::temp_dir("demo")?;
    let result = build_three_times(&tools, &work);
    let _ = std::fs::remove_dir_all(&work);
    let (cold, warm, rebuilt) = result?;

    println!(
        "demo: cold build on an empty engine: {:.1} s",
        cold.as_secs_f64()
    );
    println!(
        "demo: the same build on another empty engine, found in the registry: {:.1} s",
        warm.as_secs_f64()
    );
    println!(
        "demo: with `--rebuild` on a third empty engine, every step from the registry cache: {:.1} s",
        rebuilt.as_secs_f64()
    );
    let tags = registry.tags("acme/service").unwrap_or_default();
    println!(
        "demo: `{}/acme/service` tags: {}",
        registry.addr(),
        tags.join(", ")
    );
    if rebuilt < cold {
        println!(
            "demo: the agents started empty; the second was {:.1}x faster than the first, the third {:.1}x",
            cold.as_secs_f64() / warm.as_secs_f64().max(0.001),
            cold.as_secs_f64() / rebuilt.as_secs_f64().max(0.001)
        );
    } else {
        println!("demo: the third agent was not faster: the registry cache was not used");
    }
    Ok(())
}

/// Copies the example into `work`, builds it on engine A, then on engine B, then with
/// `--rebuild` on engine C.
fn build_three_times(tools: &Tools, work: &Path) -> Result<(Duration, Duration, Duration)> {
    let service = work.join("service");
    testbed::copy_dir(&root().join("examples/service"), &service)?;
    let _ = std::fs::remove_dir_all(service.join("target"));
    std::fs::copy(&tools.busybox, service.join("busybox"))
        .with_context(|| format!("cannot copy `{}`", tools.busybox.display()))?;
    let manifest = service.join("Cargo.toml");

    let cold = {
        let engine = tools.engine()?;
        println!("demo: engine A (empty) at `{}`", engine.host());
        time_build(&engine, &manifest, &[]).context("cold build on engine A failed")?
    };
    let warm = {
        let engine = tools.engine()?;
        println!("demo: engine B (empty) at `{}`", engine.host());
        time_build(&engine, &manifest, &[]).context("warm build on engine B failed")?
    };
    let rebuilt = {
        let engine = tools.engine()?;
        println!("demo: engine C (empty) at `{}`", engine.host());
        time_build(&engine, &manifest, &["--rebuild"]).context("build on engine C failed")?
    };
    Ok((cold, warm, rebuilt))
}

/// Runs this program's `docker build --push [extra]` against `engine`, as a CI job of the
/// default branch would (only such a build writes the shared cache tags and the marker that
/// the second engine finds).
fn time_build(engine: &Engine, manifest: &Path, extra: &[&str]) -> Result<Duration> {
    let sh = Shell::new()?;
    let me = std::env::current_exe().context("cannot find this program's path")?;
    let start = Instant::now();
    cmd!(
        sh,
        "{me} docker build --manifest-path {manifest} --push --branch main {extra...}"
    )
    .env("CI_DEFAULT_BRANCH", "main")
    .env("DOCKER_HOST", engine.host())
    .env("DOCKER_CONFIG", engine.docker_config())
    .env_remove("DOCKER")
    .run()?;
    Ok(start.elapsed())
}

//! `cargo xtask demo`: the quick start's main job. Builds the Rust service (`examples/rust-service`,
//! real crates.io dependencies compiled by rustc in a cargo-chef Dockerfile) cold on a fresh
//! engine; then, after an edit in its main crate, on another fresh engine, whose dependency layer
//! comes from the registry; runs the image; prints both times.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use testbed::{Engine, Registry, RegistryOptions, ServedImages, Tools};
use xshell::{cmd, Shell};

use crate::engine::REGISTRY_PORT;
use crate::test::root;

/// The example's image, as its Cargo.toml names it.
const IMAGE: &str = "127.0.0.1:5000/acme/rust-service";

/// Runs the demo.
pub fn run() -> Result<()> {
    testbed::install::install_all()?;
    let tools = testbed::require().context("the engine's tools are missing")?;
    let images = tools.rust_images()?;
    let registry = Registry::start(
        &tools,
        RegistryOptions {
            port: Some(REGISTRY_PORT),
            ..RegistryOptions::default()
        },
    )
    .context("the demo needs port 5000 for its registry; if `cargo xtask engine up` holds it, run `cargo xtask engine down`")?;
    let served = images.serve(&registry)?;
    println!(
        "demo: registry on `{}`, serving the toolchain image `{}`",
        registry.addr(),
        served.toolchain
    );

    let work = testbed::temp_dir("demo")?;
    let result = cold_then_edit(&tools, &served, &work);
    let _ = std::fs::remove_dir_all(&work);
    let (cold, edited) = result?;

    println!(
        "demo: cold build on an empty engine: {:.1} s",
        cold.as_secs_f64()
    );
    println!(
        "demo: after an edit in src/, on another empty engine: {:.1} s (the dependencies, `cargo chef cook`, came from the registry; the planner and `cargo build` ran)",
        edited.as_secs_f64()
    );
    let mut tags = registry.tags("acme/rust-service").unwrap_or_default();
    tags.sort();
    println!(
        "demo: `{}/acme/rust-service` tags: {}",
        registry.addr(),
        tags.join(", ")
    );
    Ok(())
}

/// Commits a copy of the example, builds a fresh clone of it on engine A; edits and commits,
/// builds a fresh clone on engine B and runs the image there.
fn cold_then_edit(
    tools: &Tools,
    served: &ServedImages,
    work: &Path,
) -> Result<(Duration, Duration)> {
    let repo = work.join("rust-service");
    testbed::copy_dir(&root().join("examples/rust-service"), &repo)?;
    for leftover in ["target", "vendor", ".cargo"] {
        let _ = std::fs::remove_dir_all(repo.join(leftover));
    }
    println!("demo: vendoring the dependencies (`cargo vendor`, once per Cargo.lock)");
    testbed::rust::vendor(&repo)?;
    std::fs::write(repo.join(".gitignore"), "target\n")?;
    testbed::rust::commit(&repo, "the service")?;

    let cold = {
        let engine = tools.engine()?;
        println!("demo: engine A (empty) at `{}`", engine.host());
        let clone = work.join("clone-a");
        testbed::rust::fresh_clone(&repo, &clone)?;
        time_build(&engine, &clone, served).context("cold build on engine A failed")?
    };

    let main = repo.join("src/config.rs");
    let text = std::fs::read_to_string(&main)?;
    std::fs::write(&main, text.replacen("\"hello\"", "\"hello again\"", 1))?;
    testbed::rust::commit(&repo, "a new greeting")?;
    let engine = tools.engine()?;
    println!(
        "demo: engine B (empty) at `{}`, after an edit in `src/config.rs`",
        engine.host()
    );
    let clone = work.join("clone-b");
    testbed::rust::fresh_clone(&repo, &clone)?;
    let edited = time_build(&engine, &clone, served).context("build on engine B failed")?;
    let sh = Shell::new()?;
    let answer = cmd!(
        sh,
        "docker run --rm --network none {IMAGE}:latest --self-test"
    )
    .env("DOCKER_HOST", engine.host())
    .env("DOCKER_CONFIG", engine.docker_config())
    .ignore_stderr()
    .read()
    .context("the image does not run")?;
    println!("demo: the image answers over loopback inside `docker run --network none`: {answer}");
    Ok((cold, edited))
}

/// Runs this program's `docker build --push` of the clone against `engine`, as a CI job of the
/// default branch would (only such a build writes the shared cache tags and the marker that
/// the second engine finds), with the toolchain and runtime images pinned by digest.
fn time_build(engine: &Engine, clone: &Path, served: &ServedImages) -> Result<Duration> {
    let sh = Shell::new()?;
    let me = std::env::current_exe().context("cannot find this program's path")?;
    let manifest = clone.join("Cargo.toml");
    let [rust, runtime] = served.build_args();
    let start = Instant::now();
    cmd!(
        sh,
        "{me} docker build --manifest-path {manifest} --push --branch main --build-arg {rust} --build-arg {runtime}"
    )
    .env("CI_DEFAULT_BRANCH", "main")
    .env("DOCKER_HOST", engine.host())
    .env("DOCKER_CONFIG", engine.docker_config())
    .env_remove("DOCKER")
    .run()?;
    Ok(start.elapsed())
}

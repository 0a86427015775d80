//! The Rust images against real engines: served by a test's registry, pulled by digest on a fresh
//! agent of each kind, and run (skipped, or failing under `CI`, when they are not made:
//! `cargo xtask engine install`).

use anyhow::Result;
use xshell::{cmd, Shell};

#[test]
fn a_fresh_agent_pulls_the_served_rust_images_by_digest_and_runs_them() -> Result<()> {
    let Some((tools, images)) = testbed::require_rust() else {
        return Ok(());
    };
    assert!(images.toolchain_tar.is_file() && images.runtime_tar.is_file());
    assert!(images.cargo_chef.is_file());
    let registry = tools.registry()?;
    let served = images.serve(&registry)?;
    let addr = registry.addr();
    assert_eq!(
        served.toolchain,
        format!("{addr}/library/rust@{}", images.toolchain_digest)
    );
    assert_eq!(
        served.runtime,
        format!("{addr}/library/debian@{}", images.runtime_digest)
    );
    // Serving twice is harmless, and a second registry serves the same digests.
    assert_eq!(images.serve(&registry)?, served);
    let other = tools.registry()?;
    let again = images.serve(&other)?;
    assert_eq!(
        again.toolchain.rsplit_once('@').map(|p| p.1),
        served.toolchain.rsplit_once('@').map(|p| p.1)
    );

    let sh = Shell::new()?;
    let mut engines = vec![(tools.engine()?, tools.cli20.clone())];
    if testbed::require_modern().is_some() {
        engines.push((tools.modern_engine()?, tools.cli28.clone()));
    }
    for (engine, cli) in &engines {
        let host = engine.host();
        let config = engine.docker_config();
        let toolchain = &served.toolchain;
        let runtime = &served.runtime;
        let versions = cmd!(
            sh,
            "{cli} run --rm --network none {toolchain} sh -c 'rustc --version && cargo --version && cargo chef --version && gcc --version'"
        )
        .env("DOCKER_HOST", &host)
        .env("DOCKER_CONFIG", &config)
        .read()?;
        assert!(versions.contains("rustc 1.85"), "{versions}");
        assert!(
            // `cargo chef --version` says `cargo-chef-chef 0.1.78`.
            versions.contains(&format!("-chef {}\n", testbed::rust::CARGO_CHEF_VERSION)),
            "{versions}"
        );
        let release = cmd!(
            sh,
            "{cli} run --rm --network none {runtime} cat /etc/os-release"
        )
        .env("DOCKER_HOST", &host)
        .env("DOCKER_CONFIG", &config)
        .read()?;
        assert!(release.contains("trixie"), "{release}");
    }
    Ok(())
}

#[test]
fn vendoring_writes_the_sources_and_the_offline_config() -> Result<()> {
    let Some(_) = testbed::require_rust() else {
        return Ok(());
    };
    let project = testbed::temp_dir("vendor")?;
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rust-service");
    for file in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(example.join(file), project.join(file))?;
    }
    testbed::copy_dir(&example.join("src"), &project.join("src"))?;
    testbed::rust::vendor(&project)?;
    assert!(project.join("vendor/serde/Cargo.toml").is_file());
    assert_eq!(
        std::fs::read_to_string(project.join(".cargo/config.toml"))?,
        testbed::rust::VENDOR_CONFIG
    );
    // The host's cargo builds nothing here; it resolves the lock from the vendored sources alone.
    let sh = Shell::new()?;
    let manifest = project.join("Cargo.toml");
    cmd!(
        sh,
        "cargo metadata --offline --locked --format-version 1 --manifest-path {manifest}"
    )
    .quiet()
    .ignore_stdout()
    .run()?;
    std::fs::remove_dir_all(&project)?;
    Ok(())
}

//! The testbed against real engines and registries (skipped, or failing under `CI`, when the
//! tools are missing: `cargo xtask engine install`).

use std::fs;
use std::path::Path;

use anyhow::Result;
use xshell::{cmd, Shell};

/// A build context with `FROM scratch` and busybox in it.
fn tiny_context(tools: &testbed::Tools, extra: &str) -> Result<std::path::PathBuf> {
    let context = testbed::temp_dir("context")?;
    fs::copy(&tools.busybox, context.join("busybox"))?;
    fs::write(
        context.join("Dockerfile"),
        format!("FROM scratch\nCOPY busybox /bin/busybox\n{extra}"),
    )?;
    Ok(context)
}

#[test]
fn two_fresh_engines_and_a_registry() -> Result<()> {
    let Some(tools) = testbed::require() else {
        return Ok(());
    };
    let sh = Shell::new()?;
    let (one, two, registry) = (tools.engine()?, tools.engine()?, tools.registry()?);
    assert_ne!(one.dir(), two.dir());
    assert!(one.host().starts_with("unix:///") && one.host().ends_with("/sock"));
    let dirs = [
        one.dir().to_path_buf(),
        two.dir().to_path_buf(),
        registry.dir().to_path_buf(),
    ];

    let context = tiny_context(&tools, "")?;
    let image = format!("{}/testbed/tiny:v1", registry.addr());
    let cli20 = &tools.cli20;
    cmd!(sh, "{cli20} build --network=none -t {image} {context}")
        .env("DOCKER_BUILDKIT", "1")
        .env("DOCKER_HOST", one.host())
        .env("DOCKER_CONFIG", one.docker_config())
        .run()?;
    cmd!(sh, "{cli20} push {image}")
        .env("DOCKER_HOST", one.host())
        .env("DOCKER_CONFIG", one.docker_config())
        .run()?;

    assert_eq!(registry.tags("testbed/tiny")?, ["v1"]);
    assert!(registry.tags("testbed/unknown")?.is_empty());
    let digest = registry.manifest_digest("testbed/tiny", "v1")?;
    let digest = digest.expect("a digest for `testbed/tiny:v1`");
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(
        registry
            .manifest_digest("testbed/tiny", &digest)?
            .as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(registry.manifest_digest("testbed/tiny", "v2")?, None);
    assert!(
        registry.storage_bytes() > 1_000_000,
        "busybox is in the registry"
    );

    // The second engine is a fresh agent: nothing from the first one is there.
    let images = cmd!(sh, "{cli20} images -q")
        .env("DOCKER_HOST", two.host())
        .read()?;
    assert_eq!(images, "");
    assert!(one.disk_usage() > two.disk_usage() + 1_000_000);
    // The modern CLI talks to the classic engine and has the buildx plugin.
    let cli28 = &tools.cli28;
    let format = "{{.Server.Version}}";
    let server = cmd!(sh, "{cli28} version --format {format}")
        .env("DOCKER_HOST", two.host())
        .read()?;
    assert!(server.starts_with("20.10."), "{server}");
    cmd!(sh, "{cli28} buildx version").run()?;
    assert!(one.log().contains("API listen on"), "{}", one.log());

    drop(one);
    two.stop();
    drop(registry);
    fs::remove_dir_all(&context)?;
    for dir in dirs {
        assert!(!dir.exists(), "`{}` is left behind", dir.display());
        assert!(
            !mounted_under(&dir)?,
            "mounts are left under `{}`",
            dir.display()
        );
    }
    Ok(())
}

#[test]
fn registry_with_auth_survives_a_restart() -> Result<()> {
    let Some(tools) = testbed::require() else {
        return Ok(());
    };
    let sh = Shell::new()?;
    let mut registry = tools.registry_with_auth("ci", "s3cret")?;
    let engine = tools.engine()?;
    let (cli20, addr) = (&tools.cli20, registry.addr());
    let image = format!("{addr}/auth/tiny:one");
    let context = tiny_context(&tools, "")?;
    let docker = |args: &[&str], stdin: &str| {
        cmd!(sh, "{cli20} {args...}")
            .env("DOCKER_BUILDKIT", "1")
            .env("DOCKER_HOST", engine.host())
            .env("DOCKER_CONFIG", engine.docker_config())
            .stdin(stdin)
            .run()
    };
    let ctx = context.display().to_string();
    docker(&["build", "--network=none", "-t", &image, &ctx], "")?;
    assert!(docker(&["push", &image], "").is_err(), "push without login");
    docker(&["login", "-u", "ci", "--password-stdin", &addr], "s3cret")?;
    docker(&["push", &image], "")?;
    assert_eq!(registry.tags("auth/tiny")?, ["one"]);

    let port = registry.addr();
    registry.stop();
    assert!(!registry.is_running());
    assert!(
        registry.tags("auth/tiny").is_err(),
        "a stopped registry answers nothing"
    );
    registry.restart()?;
    assert_eq!(registry.addr(), port);
    assert_eq!(registry.tags("auth/tiny")?, ["one"]);
    assert!(registry.manifest_digest("auth/tiny", "one")?.is_some());
    assert!(
        registry.log().contains("listening on"),
        "{}",
        registry.log()
    );
    fs::remove_dir_all(&context)?;
    Ok(())
}

#[test]
fn an_engine_in_a_fixed_dir_survives_a_stale_pid_file() -> Result<()> {
    let Some(tools) = testbed::require() else {
        return Ok(());
    };
    let dir = testbed::temp_dir("fixed")?;
    // What a killed engine leaves: a pid file naming a process that is gone.
    fs::write(dir.join("pid"), "999999999\n")?;
    let options = testbed::EngineOptions {
        dir: Some(dir.clone()),
        ..Default::default()
    };
    let engine = testbed::Engine::start(&tools, options.clone())?;
    let pid = engine.detach();
    assert_eq!(testbed::Engine::running_in(&dir), Some(pid));
    let again = testbed::Engine::start(&tools, options.clone());
    assert!(again.is_err(), "a second engine in the same dir");
    assert!(testbed::Engine::stop_in(&dir)?);
    assert_eq!(testbed::Engine::running_in(&dir), None);
    assert!(!mounted_under(&dir)?);
    assert!(dir.join("data").exists(), "a fixed dir keeps its data");
    assert!(!testbed::Engine::stop_in(&dir)?);
    fs::remove_dir_all(&dir)?;
    Ok(())
}

fn mounted_under(dir: &Path) -> Result<bool> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(m).starts_with(dir)))
}

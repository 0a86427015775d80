//! `docker build` end to end: real engines (each a fresh CI agent), a real registry, and both
//! docker CLIs. Skipped where no engine can be had, except under `CI`, where that fails.

mod support;

use std::path::Path;

use support::{service, step_cached, tool};

/// The tags the example service's build must leave in the registry.
const TAGS: [&str; 4] = ["compile", "dev", "0.3.1", "latest"];

/// Build and push on one agent, then on a second and a third empty agent: the later ones build
/// nothing, every step coming from the registry's cache. Three generations, because inline cache
/// has been known to hit only every other build.
fn three_generations(cli: &Path) {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let manifest = service(&tools, &registry);
    let manifest = manifest.to_str().unwrap();
    // `--rebuild`: the generations are about inline cache, not about finding the same build in
    // the registry, which would spare the later ones any build.
    let build = [
        "build",
        "-v",
        "--manifest-path",
        manifest,
        "--push",
        "--rebuild",
    ];

    let first = tools.engine().unwrap();
    let cold = tool(cli, &first, &build);
    cold.assert_ok();
    assert_eq!(
        cold.cached("service", "compile").0,
        0,
        "a cold build ran its steps:\n{}",
        cold.stderr
    );
    // A first build's missing caches are "no cache yet", not a problem.
    let info = format!(
        "info: no cache yet: `{}/acme/service:compile` is not in the registry",
        registry.addr()
    );
    assert!(cold.stderr.contains(&info), "{}", cold.stderr);
    first.stop();
    let (tags, markers) = support::tags_and_markers(&registry, "acme/service");
    let mut expected = TAGS.map(String::from).to_vec();
    expected.sort();
    assert_eq!(tags, expected);
    assert_eq!(markers, 1, "`--rebuild` still records the build");

    for generation in [2, 3] {
        let agent = tools.engine().unwrap();
        let run = tool(cli, &agent, &build);
        run.assert_ok();
        for stage in ["compile", "runtime"] {
            let (cached, steps) = run.cached("service", stage);
            assert!(
                steps > 0 && cached == steps,
                "generation {generation}, stage {stage}: {cached}/{steps} cached:\n{}",
                run.stderr
            );
        }
        // Straight from BuildKit's own output: the expensive step and the cross-stage copy.
        assert!(
            step_cached(&run.stderr, "[compile 3/5] RUN sleep 2"),
            "generation {generation}:\n{}",
            run.stderr
        );
        assert!(
            step_cached(&run.stderr, "[runtime 1/1] COPY --from=compile"),
            "generation {generation}:\n{}",
            run.stderr
        );
        // The final image is in the agent's engine and every tag is in the registry.
        let image = format!("{}/acme/service:0.3.1", registry.addr());
        let inspect = support::docker(
            cli,
            &agent,
            &["image", "inspect", "--format", "{{.Id}}", &image],
        )
        .output()
        .unwrap();
        assert!(
            inspect.status.success(),
            "{}",
            String::from_utf8_lossy(&inspect.stderr)
        );
        for tag in TAGS {
            assert!(
                registry
                    .manifest_digest("acme/service", tag)
                    .unwrap()
                    .is_some(),
                "`{tag}` is not in the registry"
            );
        }
        agent.stop();
    }
}

#[test]
fn three_generations_with_the_20_10_cli() {
    if let Some(tools) = testbed::require() {
        three_generations(&tools.cli20);
    }
}

#[test]
fn three_generations_with_the_modern_cli_and_buildx() {
    if let Some(tools) = testbed::require() {
        three_generations(&tools.cli28);
    }
}

#[test]
fn a_failing_build_names_stage_package_and_command() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let manifest = service(&tools, &registry);
    support::edit(
        &manifest.with_file_name("Dockerfile"),
        "RUN mkdir -p /out",
        "RUN false && mkdir -p /out",
    );
    let agent = tools.engine().unwrap();
    let run = tool(
        &tools.cli28,
        &agent,
        &[
            "build",
            "--manifest-path",
            manifest.to_str().unwrap(),
            "--push",
        ],
    );
    assert!(!run.output.status.success());
    assert!(
        run.stderr
            .contains("the build of stage `compile` of package `service` failed"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("command: DOCKER_BUILDKIT=1 "),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("Finished"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    // Nothing was pushed: the failed stage was the first.
    assert_eq!(registry.tags("acme/service").unwrap(), Vec::<String>::new());
}

#[test]
fn preflight_names_a_dead_daemon_and_a_missing_cli() {
    // Needs no engine: that is the point.
    let dir = testbed::temp_dir("preflight").unwrap();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/service/Cargo.toml");
    let manifest = manifest.to_str().unwrap();
    let run = |docker: &str, host: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtask-docker"))
            .args(["docker", "build", "--manifest-path", manifest])
            .env("DOCKER", docker)
            .env("DOCKER_HOST", host)
            .output()
            .unwrap();
        // Exit code 3: the engine could not be used.
        assert!(
            out.status.success() || out.status.code() == Some(3),
            "{out:?}"
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dead = format!("unix://{}/dead.sock", dir.display());
    let (ok, stderr) = run("/usr/bin/docker", &dead);
    if Path::new("/usr/bin/docker").exists() {
        assert!(!ok);
        assert!(
            stderr.contains(&format!("cannot reach the Docker daemon at {dead}")),
            "{stderr}"
        );
        assert!(!stderr.contains("Building"), "{stderr}");
    }
    let (ok, stderr) = run("/nonexistent/docker", &dead);
    assert!(!ok);
    assert!(
        stderr.contains("the docker CLI `/nonexistent/docker` was not found"),
        "{stderr}"
    );
    // A program that is not the Docker CLI.
    let (ok, stderr) = run("true", &dead);
    assert!(!ok);
    assert!(stderr.contains("`true` is not the Docker CLI"), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn dry_run_prints_the_plan_and_needs_no_engine() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/service/Cargo.toml");
    let out = support::on_default_branch(&mut std::process::Command::new(env!(
        "CARGO_BIN_EXE_xtask-docker"
    )))
    .args([
        "docker",
        "build",
        "--dry-run",
        "--push",
        "--manifest-path",
        manifest.to_str().unwrap(),
    ])
    .env("DOCKER", "/nonexistent/docker")
    .env("DOCKER_HOST", "unix:///nonexistent.sock")
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines.len(),
        5 + 2 + 1 + 2 + 2 + 1,
        "five questions to the registry (the marker, two final tags, two cache tags), two builds, the pull before a stage rebuild, two cache pushes, two final tags, the marker:\n{stdout}"
    );
    assert!(
        lines[0].starts_with(
            "/nonexistent/docker manifest inspect -v --insecure 127.0.0.1:5000/acme/service:inputs-"
        ),
        "{stdout}"
    );
    assert!(
        lines[..5].iter().all(|l| l.contains(" manifest inspect ")),
        "{stdout}"
    );
    // The final target first; the intermediate stage after it, to tag and push its cache.
    assert!(
        lines[5].starts_with("DOCKER_BUILDKIT=1 /nonexistent/docker build --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --network none --target runtime"),
        "{stdout}"
    );
    assert!(
        lines[6].starts_with(
            "/nonexistent/docker pull 127.0.0.1:5000/acme/service:compile  # only when"
        ),
        "{stdout}"
    );
    assert!(lines[7].contains("--target compile"), "{stdout}");
    assert!(
        lines[12].starts_with("/nonexistent/docker push 127.0.0.1:5000/acme/service:inputs-"),
        "{stdout}"
    );
}

/// A stand-in `docker` that answers `--version` with `version` and fails everything else: enough
/// to check how the preflight reads a CLI (a fake CLI is for this kind of check only).
fn fake_cli(version: &str) -> std::path::PathBuf {
    let dir = testbed::temp_dir("fake-cli").unwrap();
    let path = dir.join("docker");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nif [ \"$1\" = --version ]; then echo '{version}'; exit 0; fi\necho \"unknown command: $1\" >&2\nexit 1\n"),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
    path
}

#[test]
fn preflight_names_a_missing_buildx_plugin_and_podman() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/service/Cargo.toml");
    let run = |docker: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtask-docker"))
            .args([
                "docker",
                "build",
                "--manifest-path",
                manifest.to_str().unwrap(),
            ])
            .env("DOCKER", docker)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&fake_cli("Docker version 28.2.2, build e6534b4"));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("(28.2.2) needs the buildx plugin for BuildKit builds, and it is missing"),
        "{stderr}"
    );
    let (code, stderr) = run(&fake_cli("podman version 4.3.1"));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("is Podman (`podman version 4.3.1`), which is not supported yet"),
        "{stderr}"
    );
}

#[test]
fn the_plan_event_lists_every_step_with_its_argv() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/service/Cargo.toml");
    let out = support::on_default_branch(&mut std::process::Command::new(env!(
        "CARGO_BIN_EXE_xtask-docker"
    )))
    .args([
        "docker",
        "build",
        "--dry-run",
        "--push",
        "--message-format",
        "json",
        "--manifest-path",
    ])
    .arg(&manifest)
    .env("DOCKER", "docker")
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "a dry run's stdout is the plan event alone:\n{stdout}"
    );
    let plan: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(plan["reason"], "plan");
    let steps = plan["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 13);
    assert_eq!(steps[0]["kind"], "inspect");
    assert_eq!(steps[0]["detail"]["role"], "marker");
    assert_eq!(steps[12]["kind"], "mark");
    let id = |kind: &str, stage: &str| -> u64 {
        steps
            .iter()
            .find(|s| {
                s["kind"] == kind
                    && (s["stage"] == stage
                        || s["detail"]["image"]
                            .as_str()
                            .is_some_and(|i| i.ends_with(&format!(":{stage}"))))
            })
            .unwrap_or_else(|| panic!("no {kind} of {stage}"))["id"]
            .as_u64()
            .unwrap()
    };
    let runtime = &steps[id("build", "runtime") as usize];
    assert_eq!(runtime["detail"]["final"], true);
    assert_eq!(runtime["env"]["DOCKER_BUILDKIT"], "1");
    assert_eq!(runtime["args"][0], "build");
    assert_eq!(
        runtime["after"],
        serde_json::json!([0, 1, 2, 3, 4]),
        "the final build waits for every question to the registry"
    );
    let compile = &steps[id("build", "compile") as usize];
    assert_eq!(compile["detail"]["skipped_when_current"], true);
    let after: Vec<u64> = compile["after"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_u64().unwrap())
        .collect();
    for waited in [
        0,
        id("build", "runtime"),
        id("inspect", "compile"),
        id("pull", "compile"),
    ] {
        assert!(
            after.contains(&waited),
            "the stage build waits for the check, the final build, its cache's question and its pull: {after:?}"
        );
    }
    assert_eq!(
        steps[id("pull", "compile") as usize]["detail"]["when"],
        "before-rebuild"
    );
}

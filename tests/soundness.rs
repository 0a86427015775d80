//! The registry check never skips a build whose image could differ: each input that can change
//! the image without changing the checkout either refuses the fingerprint (no marker, so the
//! run builds) or is hashed into the marker (another value, another marker). Each hole is a
//! small fixture read by a dry run (`--dry-run --push --message-format json`, which prints the
//! plan with its marker question and needs no engine); the end-to-end tests then show, on real
//! engines, that the image the skip would have kept is not the one the build makes.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A 64-hex digest, as a pinned reference needs.
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A package `svc` in a new temp folder: `table` under `[package.metadata.docker]` (the image
/// goes to `127.0.0.1:5000/acme/svc`), `dockerfile` as its Dockerfile, and a small context.
pub fn fixture(table: &str, dockerfile: &str) -> PathBuf {
    fixture_at("127.0.0.1:5000", table, dockerfile)
}

/// [`fixture`], its image `REGISTRY/acme/svc`.
pub fn fixture_at(registry: &str, table: &str, dockerfile: &str) -> PathBuf {
    let dir = testbed::temp_dir("soundness").unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"svc\"\nversion = \"1.0.0\"\nedition = \"2021\"\n\n[lib]\npath = \"lib.rs\"\n\n\
             [package.metadata.docker]\nimage = \"{registry}/acme/svc\"\nnetwork = \"none\"\n{table}\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("lib.rs"), "").unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(dir.join(".dockerignore"), "target\n").unwrap();
    std::fs::write(dir.join("data.txt"), "data\n").unwrap();
    dir
}

/// What a dry run of `build --push` printed: the plan event's steps and the tool's stderr.
struct Dry {
    steps: Vec<serde_json::Value>,
    stderr: String,
    code: Option<i32>,
}

impl Dry {
    /// The marker the registry check asks for, if the run may skip.
    fn marker(&self) -> Option<String> {
        self.steps
            .iter()
            .find(|s| s["kind"] == "inspect" && s["detail"]["role"] == "marker")
            .map(|s| s["detail"]["image"].as_str().unwrap().to_string())
    }

    /// The argv of every build, in plan order.
    fn builds(&self) -> Vec<Vec<String>> {
        self.steps
            .iter()
            .filter(|s| s["kind"] == "build")
            .map(|s| {
                s["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect()
            })
            .collect()
    }
}

/// A dry run of `docker build --push ARGS` of the package in `dir`, with `env` set and the
/// variables that change the marker removed first, against no engine at all.
fn dry(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Dry {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask-docker"));
    command
        .args(["docker", "build", "--dry-run", "--push", "--message-format"])
        .args(["json", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .args(args)
        .env("DOCKER", "docker")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    support::on_default_branch(&mut command);
    for (name, _) in std::env::vars() {
        if name.starts_with("BUILDX_")
            || name.starts_with("BUILDKIT_")
            || name == "DOCKER_DEFAULT_PLATFORM"
            || name == "SOURCE_DATE_EPOCH"
            || name == "DOCKER_CONTEXT"
        {
            command.env_remove(name);
        }
    }
    let out = command.envs(env.iter().copied()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let steps = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["reason"] == "plan")
        .map(|plan| plan["steps"].as_array().unwrap().clone())
        .unwrap_or_default();
    Dry {
        steps,
        stderr,
        code: out.status.code(),
    }
}

/// The dry run of a fixture; it must plan.
fn plan(table: &str, dockerfile: &str, args: &[&str], env: &[(&str, &str)]) -> Dry {
    let dir = fixture(table, dockerfile);
    let run = dry(&dir, args, env);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    run
}

/// Asserts that the run refuses the skip, and that its info line says `why`.
fn refused(run: &Dry, why: &str) {
    assert_eq!(run.marker(), None, "a marker, so a skip:\n{}", run.stderr);
    assert!(
        run.stderr
            .contains("is built even if the registry holds the same build")
            && run.stderr.contains(why),
        "no info line with `{why}`:\n{}",
        run.stderr
    );
}

/// Asserts that the build argument `name=value`, from the config's `build-args` and from the
/// command line alike, refuses the skip naming `value`.
fn refused_as_build_arg(dockerfile: &str, name: &str, value: &str) {
    let table = format!("build-args = {{ {name} = \"{value}\" }}");
    refused(&plan(&table, dockerfile, &[], &[]), &format!("`{value}`"));
    let arg = format!("{name}={value}");
    let from_cli = plan("", dockerfile, &["--build-arg", &arg], &[]);
    refused(&from_cli, &format!("`{value}`"));
}

#[test]
fn a_command_line_build_arg_reaches_the_pin_check() {
    let dockerfile =
        format!("ARG BASE=127.0.0.1:5000/library/base@{DIGEST}\nFROM ${{BASE}}\nCOPY data.txt /\n");
    let pinned = plan("", &dockerfile, &[], &[]);
    assert!(pinned.marker().is_some(), "{}", pinned.stderr);
    // The same value from the config is refused; so must it be from the command line.
    refused_as_build_arg(&dockerfile, "BASE", "127.0.0.1:5000/library/base:latest");
    // A stage named on the command line is a stage, not an image.
    let stage = plan(
        "",
        "ARG BASE=scratch\nFROM scratch AS tools\nFROM ${BASE}\nCOPY data.txt /\n",
        &["--build-arg", "BASE=tools"],
        &[],
    );
    assert!(stage.marker().is_some(), "{}", stage.stderr);
}

#[test]
fn add_from_a_variable_refuses_the_fingerprint() {
    for dockerfile in [
        "ARG URL=http://127.0.0.1:9/data.txt\nFROM scratch\nARG URL\nADD ${URL} /x\n",
        "FROM scratch\nENV SRC=http://127.0.0.1:9/data.txt\nADD $SRC /x\n",
        "FROM scratch\nARG SRC=data.txt\nADD --chmod=644 ${SRC} /x\n",
    ] {
        let run = plan("", dockerfile, &[], &[]);
        refused(&run, "adds `$");
    }
    // A literal local source keeps the fingerprint.
    let local = plan("", "FROM scratch\nADD data.txt /x\n", &[], &[]);
    assert!(local.marker().is_some(), "{}", local.stderr);
}

#[test]
fn add_from_git_in_scp_form_refuses_the_fingerprint_whatever_the_user() {
    for source in [
        "git@github.com:acme/lib.git",
        "deploy@git.example.com:acme/lib.git",
        "git.example.com:acme/lib.git",
        "ssh://deploy@git.example.com/acme/lib.git",
        "HTTPS://example.com/data.txt",
    ] {
        let run = plan("", &format!("FROM scratch\nADD {source} /lib\n"), &[], &[]);
        refused(&run, &format!("adds `{source}`"));
    }
}

#[test]
fn the_frontend_image_must_be_pinned() {
    let unpinned = plan(
        "",
        "# syntax=docker/dockerfile:1\nFROM scratch\nCOPY data.txt /\n",
        &[],
        &[],
    );
    refused(&unpinned, "`docker/dockerfile:1`");
    let pinned = plan(
        "",
        &format!("# syntax=docker/dockerfile:1@{DIGEST}\nFROM scratch\nCOPY data.txt /\n"),
        &[],
        &[],
    );
    assert!(pinned.marker().is_some(), "{}", pinned.stderr);
    // `BUILDKIT_SYNTAX` wins over the directive, from the config or the command line.
    let dockerfile = format!("# syntax=docker/dockerfile:1@{DIGEST}\nFROM scratch\n");
    refused_as_build_arg(&dockerfile, "BUILDKIT_SYNTAX", "docker/dockerfile:1.7");
}

#[test]
fn onbuild_triggers_are_read_in_the_stage_that_runs_them() {
    for (trigger, why) in [
        (
            "ADD http://127.0.0.1:9/data.txt /x",
            "adds `http://127.0.0.1:9/data.txt`",
        ),
        (
            "COPY --from=127.0.0.1:5000/acme/tools:latest / /",
            "`127.0.0.1:5000/acme/tools:latest`",
        ),
    ] {
        let dockerfile = format!("FROM scratch AS base\nONBUILD {trigger}\nFROM base\n");
        refused(&plan("", &dockerfile, &[], &[]), why);
    }
    // A stage never used as a base runs none of its triggers.
    let unused = plan(
        "target = \"app\"",
        "FROM scratch AS base\nONBUILD ADD http://127.0.0.1:9/data.txt /x\nFROM scratch AS app\nCOPY data.txt /\n",
        &[],
        &[],
    );
    assert!(unused.marker().is_some(), "{}", unused.stderr);
}

/// The marker of a one-stage fixture, with `env` set.
fn marker_with(env: &[(&str, &str)]) -> Option<String> {
    plan("", "FROM scratch\nCOPY data.txt /\n", &[], env).marker()
}

#[test]
fn what_the_cli_is_told_by_its_environment_is_in_the_marker() {
    let plain = marker_with(&[]).expect("a marker");
    for env in [
        [("SOURCE_DATE_EPOCH", "1700000000")],
        [("DOCKER_DEFAULT_PLATFORM", "linux/arm64")],
        [("BUILDX_NO_DEFAULT_ATTESTATIONS", "1")],
        [("BUILDX_BUILDER", "remote")],
    ] {
        let changed = marker_with(&env).expect("a marker");
        assert_ne!(changed, plain, "{env:?} is not in the marker");
        let again = marker_with(&env).expect("a marker");
        assert_eq!(changed, again, "{env:?}: the marker is stable");
    }
    assert_ne!(
        marker_with(&[("SOURCE_DATE_EPOCH", "1700000000")]),
        marker_with(&[("SOURCE_DATE_EPOCH", "1700000001")])
    );
    // Display only: the same marker.
    assert_eq!(
        marker_with(&[("BUILDKIT_PROGRESS", "plain")]).as_deref(),
        Some(plain.as_str())
    );
    // A variable the tool cannot tell the meaning of refuses the skip.
    let unknown = plan(
        "",
        "FROM scratch\nCOPY data.txt /\n",
        &[],
        &[("BUILDX_SOMETHING_NEW", "1")],
    );
    refused(&unknown, "`BUILDX_SOMETHING_NEW`");
}

#[test]
fn an_unnamed_last_stage_is_built_without_target() {
    let one = plan("", "FROM scratch\nCOPY data.txt /\n", &[], &[]);
    let builds = one.builds();
    assert_eq!(builds.len(), 1, "{builds:?}");
    assert!(
        !builds[0].iter().any(|a| a == "--target"),
        "BuildKit finds no `stage-0`: {:?}",
        builds[0]
    );
    let by_index = plan(
        "target = \"1\"\nstages = { build = \"build\" }",
        "FROM scratch AS build\nCOPY data.txt /\nFROM scratch\nCOPY --from=build /data.txt /\n",
        &[],
        &[],
    );
    let builds = by_index.builds();
    assert_eq!(builds.len(), 2, "{builds:?}");
    assert!(!builds[0].iter().any(|a| a == "--target"), "{builds:?}");
    assert!(
        builds[1].windows(2).any(|w| w == ["--target", "build"]),
        "{builds:?}"
    );
}

/// The error of a dry run of a fixture that must fail with exit code 2.
fn config_error(table: &str, dockerfile: &str) -> String {
    let dir = fixture(table, dockerfile);
    let run = dry(&dir, &[], &[]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    run.stderr
}

#[test]
fn an_unnamed_stage_that_is_not_last_cannot_be_built_and_says_so() {
    let dockerfile =
        "FROM scratch\nCOPY data.txt /\nFROM scratch AS app\nCOPY --from=0 /data.txt /\n";
    let target = config_error("target = \"0\"", dockerfile);
    assert!(
        target.contains("key `target`")
            && target.contains("stage `stage-0` (line 1) has no name")
            && target.contains("note: name it"),
        "{target}"
    );
    let cached = config_error("stages = { 0 = \"zero\" }", dockerfile);
    assert!(
        cached.contains("key `stages.0`") && cached.contains("(line 1) has no name"),
        "{cached}"
    );
}

#[test]
fn with_a_builder_the_marker_goes_with_the_last_build() {
    let run = plan(
        "stages = { deps = \"deps\" }",
        "FROM scratch AS deps\nCOPY data.txt /\nFROM scratch\nCOPY --from=deps /data.txt /\n",
        &["--builder", "remote"],
        &[],
    );
    let marker = run.marker().expect("a marker");
    let builds = run.builds();
    assert_eq!(builds.len(), 2, "{builds:?}");
    // The build that pushes the marker with the image is the last: a stage build that fails
    // before it leaves no marker.
    assert!(
        builds[0].windows(2).any(|w| w == ["--target", "deps"]),
        "{builds:?}"
    );
    assert!(builds[1].contains(&marker), "{builds:?}");
    assert!(!builds[0].contains(&marker), "{builds:?}");
    let final_build = run
        .steps
        .iter()
        .find(|s| s["kind"] == "build" && s["detail"]["final"] == true)
        .unwrap();
    let stage_build = run
        .steps
        .iter()
        .find(|s| s["kind"] == "build" && s["detail"]["final"] == false)
        .unwrap();
    assert!(
        final_build["after"]
            .as_array()
            .unwrap()
            .contains(&stage_build["id"]),
        "the final build waits for the stage build: {final_build}"
    );
}

// End to end: what the skip would have kept is not the image the build makes.

/// A tiny HTTP server on 127.0.0.1 that answers every request with the body it holds now,
/// without `ETag` or `Last-Modified`: BuildKit fetches an `ADD <url>` from the engine's own
/// network (not the build's, which is `none`), so it reaches loopback.
struct Served {
    port: u16,
    body: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Served {
    fn start(body: &str) -> Served {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = std::sync::Arc::new(std::sync::Mutex::new(body.to_string()));
        let shared = body.clone();
        // Ends with the test process.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(&stream);
                let mut line = String::new();
                // The request line and headers, up to the blank line.
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let text = shared.lock().unwrap().clone();
                let _ = (&stream).write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    )
                    .as_bytes(),
                );
            }
        });
        Served { port, body }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/data.txt", self.port)
    }

    fn set(&self, body: &str) {
        *self.body.lock().unwrap() = body.to_string();
    }
}

/// `build --push` of the package in `dir` through `cli` on `engine` (a fresh agent, stopped
/// after), with `args`: whether the registry check found the build (so nothing ran), and the
/// `latest` tag's digest after.
fn push_on(
    engine: testbed::Engine,
    registry: &testbed::Registry,
    cli: &Path,
    dir: &Path,
    args: &[&str],
) -> (bool, String) {
    let manifest = dir.join("Cargo.toml");
    let mut all = vec![
        "build",
        "--push",
        "--message-format",
        "json",
        "--manifest-path",
        manifest.to_str().unwrap(),
    ];
    all.extend(args);
    let run = support::tool(cli, &engine, &all);
    run.assert_ok();
    engine.stop();
    let fresh = support::events(&run)
        .iter()
        .any(|e| e["reason"] == "registry-check" && e["fresh"] == true);
    let digest = registry
        .manifest_digest("acme/svc", "latest")
        .unwrap()
        .expect("the final tag is pushed");
    (fresh, digest)
}

/// Builds `dockerfile` with `args` on a fresh agent, then, after `change`, on another: the
/// second run must not find the first build in the registry, and must push another image.
/// (The fixtures name their stages, so that they show only the hole they are about.)
fn rebuilt_after(
    tools: &testbed::Tools,
    registry: &testbed::Registry,
    dockerfile: &str,
    args: &[&str],
    change: impl Fn(),
) {
    let dir = fixture_at(&registry.addr(), "", dockerfile);
    let cli = &tools.cli28;
    let (_, first) = push_on(tools.engine().unwrap(), registry, cli, &dir, args);
    change();
    let (fresh, second) = push_on(tools.engine().unwrap(), registry, cli, &dir, args);
    assert!(
        !fresh,
        "the registry check skipped a build whose input changed"
    );
    assert_ne!(second, first, "the image did not change");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_onbuild_add_from_the_network_is_fetched_again() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let served = Served::start("one\n");
    let dockerfile = format!(
        "FROM scratch AS base\nONBUILD ADD {} /data.txt\nFROM base AS app\nCOPY data.txt /local.txt\n",
        served.url()
    );
    rebuilt_after(&tools, &registry, &dockerfile, &[], || served.set("two\n"));
}

#[test]
fn an_add_from_a_variable_is_fetched_again() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let served = Served::start("one\n");
    let dockerfile = "FROM scratch AS app\nARG URL\nADD ${URL} /data.txt\n";
    let arg = format!("URL={}", served.url());
    rebuilt_after(
        &tools,
        &registry,
        dockerfile,
        &["--build-arg", &arg],
        || served.set("two\n"),
    );
}

/// Builds and pushes `REGISTRY/library/base:latest`, a scratch image holding `text` in
/// `/base.txt`, through `engine`; returns its digest.
fn push_base(tools: &testbed::Tools, registry: &testbed::Registry, text: &str) -> String {
    let engine = tools.engine().unwrap();
    let dir = testbed::temp_dir("base").unwrap();
    std::fs::write(dir.join("base.txt"), text).unwrap();
    std::fs::write(dir.join("Dockerfile"), "FROM scratch\nCOPY base.txt /\n").unwrap();
    let image = format!("{}/library/base:latest", registry.addr());
    let docker = |args: &[&str]| support::docker_ok(&tools.cli20, &engine, args);
    docker(&["build", "--tag", &image, dir.to_str().unwrap()]);
    docker(&["push", &image]);
    engine.stop();
    std::fs::remove_dir_all(&dir).unwrap();
    registry
        .manifest_digest("library/base", "latest")
        .unwrap()
        .expect("the base is pushed")
}

#[test]
fn a_base_image_named_by_a_command_line_build_arg_is_read_again() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let pinned = push_base(&tools, &registry, "one\n");
    let dockerfile = format!(
        "ARG BASE={}/library/base@{pinned}\nFROM ${{BASE}} AS app\nCOPY data.txt /\n",
        registry.addr()
    );
    let arg = format!("BASE={}/library/base:latest", registry.addr());
    rebuilt_after(
        &tools,
        &registry,
        &dockerfile,
        &["--build-arg", &arg],
        || {
            assert_ne!(push_base(&tools, &registry, "two\n"), pinned);
        },
    );
}

#[test]
fn another_engine_is_another_build() {
    let Some(tools) = testbed::require_modern() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let dir = fixture_at(
        &registry.addr(),
        "",
        "FROM scratch AS app\nCOPY data.txt /\n",
    );
    let cli = &tools.cli28;
    let (_, classic) = push_on(tools.engine().unwrap(), &registry, cli, &dir, &[]);
    // The same engine again: the registry holds this very build.
    let (fresh, again) = push_on(tools.engine().unwrap(), &registry, cli, &dir, &[]);
    assert!(
        fresh,
        "the same build on the same kind of engine is skipped"
    );
    assert_eq!(again, classic);
    // dockerd 26 builds it anew (the tool's own architecture is the same, so the marker used
    // to be too).
    let (fresh, modern) = push_on(tools.modern_engine().unwrap(), &registry, cli, &dir, &[]);
    assert!(!fresh, "another engine's build was taken for this one's");
    assert_ne!(modern, classic, "the image did not change");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unnamed_stage_builds_and_pushes_through_both_clis() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let engine = tools.engine().unwrap();
    let fixtures = [
        // The most common Dockerfile: one stage, no `AS`.
        ("", "FROM scratch\nCOPY data.txt /\n"),
        // An unnamed last stage as the target, by index, after a cached named stage.
        (
            "target = \"1\"\nstages = { files = \"files\" }",
            "FROM scratch AS files\nCOPY data.txt /\nFROM scratch\nCOPY --from=files /data.txt /copied.txt\n",
        ),
    ];
    for (i, (table, dockerfile)) in fixtures.iter().enumerate() {
        for (name, cli) in [("cli20", &tools.cli20), ("cli28", &tools.cli28)] {
            let dir = fixture_at(&registry.addr(), table, dockerfile);
            support::edit(
                &dir.join("Cargo.toml"),
                "/acme/svc\"",
                &format!("/acme/{name}-{i}\""),
            );
            let manifest = dir.join("Cargo.toml");
            let run = support::tool(
                cli,
                &engine,
                &[
                    "build",
                    "--push",
                    "--manifest-path",
                    manifest.to_str().unwrap(),
                ],
            );
            run.assert_ok();
            let repo = format!("acme/{name}-{i}");
            let tags = registry.tags(&repo).unwrap();
            assert!(tags.contains(&"latest".to_string()), "{repo}: {tags:?}");
            assert!(
                tags.iter().any(|t| t.starts_with("inputs-")),
                "{repo}: a marker: {tags:?}"
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

#[test]
fn with_a_builder_a_failed_stage_build_leaves_no_marker() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let engine = tools.engine().unwrap();
    // `broken` is cached but not needed by the final target: its build runs on its own.
    let dir = fixture_at(
        &registry.addr(),
        "target = \"app\"\nstages = { broken = \"broken\" }",
        "FROM scratch AS broken\nCOPY missing.txt /\nFROM scratch AS app\nCOPY data.txt /\n",
    );
    let manifest = dir.join("Cargo.toml");
    // The engine's own builder named as one of its own: the plan of a remote builder (each
    // build pushes its tags itself), run here on the docker driver.
    let run = support::tool(
        &tools.cli28,
        &engine,
        &[
            "build",
            "--push",
            "--builder",
            "default",
            "--manifest-path",
            manifest.to_str().unwrap(),
        ],
    );
    assert!(!run.output.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("broken"), "{}", run.stderr);
    let (_, markers) = support::tags_and_markers(&registry, "acme/svc");
    assert_eq!(markers, 0, "a marker for a run that failed");
    std::fs::remove_dir_all(&dir).unwrap();
}

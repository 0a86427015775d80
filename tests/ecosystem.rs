//! Fitting the Rust and container ecosystems, end to end: a workspace of two services with shared
//! defaults, OCI labels from Cargo.toml, a commit that changes nothing the stages use, the
//! Makefile recipe run for real, several platforms in one image index, and the warnings.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{edit, events, stage_counts, tool};

/// A git workspace of two services, `api` and `worker`, that share one Dockerfile and take their
/// image, stages and network from `[workspace.metadata.docker]`.
fn workspace(tools: &testbed::Tools, registry: &testbed::Registry) -> PathBuf {
    let dir = testbed::temp_dir("workspace").unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            r#"[workspace]
members = ["api", "worker"]
resolver = "2"

[workspace.metadata.docker]
image = "{}/acme/{{package}}"
dockerfile = "{{workspace}}/Dockerfile"
context = "{{workspace}}"
network = "none"
stages = {{ compile = "compile" }}
"#,
            registry.addr()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch AS base\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\n\
         FROM base AS compile\nARG PACKAGE\nCOPY ${PACKAGE}/src /src\nRUN mkdir /out && cat /src/* > /out/app && sleep 1\n\n\
         FROM base AS runtime\nCOPY --from=compile /out/app /app\n",
    )
    .unwrap();
    std::fs::write(dir.join(".dockerignore"), "target\n.git\n").unwrap();
    std::fs::copy(&tools.busybox, dir.join("busybox")).unwrap();
    for (name, description) in [("api", "The API"), ("worker", "The background worker")] {
        std::fs::create_dir_all(dir.join(name).join("src")).unwrap();
        std::fs::write(
            dir.join(name).join("Cargo.toml"),
            format!(
                "[package]\nname = \"{name}\"\nversion = \"2.0.1\"\nedition = \"2021\"\ndescription = \"{description}\"\nlicense = \"MIT\"\nrepository = \"https://example.com/acme/{name}\"\nauthors = [\"Acme <dev@acme.example>\"]\n\n[package.metadata.docker]\nbuild-args = {{ PACKAGE = \"{name}\" }}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join(name).join("src/main.rs"),
            format!("fn main() {{ println!(\"{name}\"); }}\n"),
        )
        .unwrap();
    }
    git(&dir, &["init", "-q", "-b", "main"]);
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-q", "-m", "two services"]);
    dir
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn labels(cli: &Path, engine: &testbed::Engine, image: &str) -> serde_json::Value {
    let out = support::docker(
        cli,
        engine,
        &[
            "image",
            "inspect",
            "--format",
            "{{json .Config.Labels}}",
            image,
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_workspace_of_two_services_builds_with_one_command_and_labels_its_images() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let dir = workspace(&tools, &registry);
    let manifest = dir.join("Cargo.toml");
    let path = manifest.to_str().unwrap();
    let args = [
        "build",
        "--manifest-path",
        path,
        "--push",
        "--jobs",
        "2",
        "--message-format",
        "json",
    ];

    let first = tools.engine().unwrap();
    let run = tool(&tools.cli28, &first, &args);
    run.assert_ok();
    // That both packages' final builds run at once is proven, without an engine's timing, by
    // `tests/scheduler.rs`; here both are built and published.
    for name in ["api", "worker"] {
        let tags = registry.tags(&format!("acme/{name}")).unwrap();
        assert!(
            tags.contains(&"compile".to_string()) && tags.contains(&"latest".to_string()),
            "{name}: {tags:?}"
        );
    }
    let sha = git(&dir, &["rev-parse", "HEAD"]);
    let label = labels(
        &tools.cli28,
        &first,
        &format!("{}/acme/api:latest", registry.addr()),
    );
    let expected = [
        ("org.opencontainers.image.title", "api"),
        ("org.opencontainers.image.version", "2.0.1"),
        ("org.opencontainers.image.description", "The API"),
        ("org.opencontainers.image.licenses", "MIT"),
        (
            "org.opencontainers.image.source",
            "https://example.com/acme/api",
        ),
        (
            "org.opencontainers.image.authors",
            "Acme <dev@acme.example>",
        ),
        ("org.opencontainers.image.revision", sha.as_str()),
    ];
    for (key, value) in expected {
        assert_eq!(label[key], value, "{key} in {label}");
    }
    assert!(
        label["org.opencontainers.image.created"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "{label}"
    );
    first.stop();

    // A commit that changes nothing the stages use: fully cached on a fresh agent, new revision.
    std::fs::write(dir.join("README.md"), "docs only\n").unwrap();
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-q", "-m", "docs"]);
    let second = tools.engine().unwrap();
    let run = tool(&tools.cli28, &second, &args);
    run.assert_ok();
    for (stage, steps, cached) in stage_counts(&run) {
        assert_eq!(
            cached, steps,
            "stage {stage} after a docs-only commit:\n{}",
            run.stderr
        );
    }
    let label = labels(
        &tools.cli28,
        &second,
        &format!("{}/acme/worker:latest", registry.addr()),
    );
    assert_eq!(
        label["org.opencontainers.image.revision"],
        git(&dir, &["rev-parse", "HEAD"])
    );
}

#[test]
fn the_makefile_recipe_runs() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let manifest = support::example("service", &tools, &registry);
    let agent = tools.engine().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = support::on_default_branch(&mut Command::new("make"))
        .args([
            "-C",
            root.to_str().unwrap(),
            "-f",
            "examples/Makefile",
            "image",
        ])
        .arg(format!("MANIFEST={}", manifest.display()))
        .env("DOCKER_HOST", agent.host())
        .env("DOCKER_CONFIG", agent.docker_config())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "make image failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (tags, markers) = support::tags_and_markers(&registry, "acme/service");
    assert_eq!(tags, ["0.3.1", "compile", "dev", "latest"], "{stderr}");
    assert_eq!(markers, 1, "{stderr}");
}

#[test]
fn several_platforms_make_one_image_index_and_are_refused_where_the_engine_cannot() {
    let Some(tools) = testbed::require_modern() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let manifest = support::example("service", &tools, &registry);
    let dir = manifest.parent().unwrap();
    std::fs::rename(dir.join("busybox"), dir.join("busybox-amd64")).unwrap();
    std::fs::copy(tools.busybox_arm64().unwrap(), dir.join("busybox-arm64")).unwrap();
    edit(
        &dir.join("Dockerfile"),
        "COPY busybox /bin/busybox",
        "ARG TARGETARCH\nCOPY busybox-${TARGETARCH} /bin/busybox",
    );
    edit(&manifest, "network = \"none\"", "network = \"none\"\nplatform = [\"linux/amd64\", \"linux/arm64\"]\ncache = \"registry\"\nprovenance = false");
    let path = manifest.to_str().unwrap();
    let args = [
        "build",
        "--manifest-path",
        path,
        "--push",
        "--message-format",
        "json",
    ];

    let classic = tools.engine().unwrap();
    let refused = tool(&tools.cli28, &classic, &args);
    assert_eq!(refused.output.status.code(), Some(3), "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("it is the docker driver without the containerd image store"),
        "{}",
        refused.stderr
    );
    assert!(!events(&refused)
        .iter()
        .any(|e| e["reason"] == "step-started"));

    let modern = tools.modern_engine().unwrap();
    tool(&tools.cli28, &modern, &args).assert_ok();
    let index = registry
        .manifest("acme/service", "latest")
        .unwrap()
        .expect("the image index");
    let mut platforms = index.platforms().unwrap();
    platforms.sort();
    assert_eq!(
        platforms,
        ["linux/amd64", "linux/arm64"],
        "{}",
        index.media_type
    );
    assert!(registry
        .tags("acme/service")
        .unwrap()
        .contains(&"buildcache".to_string()));
}

#[test]
fn warnings_for_a_large_context_and_source_date_epoch() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let manifest = support::example("service", &tools, &registry);
    std::fs::create_dir_all(manifest.with_file_name("target").join("debug")).unwrap();
    let agent = tools.engine().unwrap();
    let run = support::tool_with(
        &tools.cli20,
        &agent,
        &["build", "--manifest-path", manifest.to_str().unwrap()],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    run.assert_ok();
    assert!(
        run.stderr
            .contains("holds a `target/` folder and has no `.dockerignore`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("`SOURCE_DATE_EPOCH` is set"),
        "{}",
        run.stderr
    );
    std::fs::write(manifest.with_file_name(".dockerignore"), "target\n").unwrap();
    let run = tool(
        &tools.cli20,
        &agent,
        &["build", "--manifest-path", manifest.to_str().unwrap()],
    );
    run.assert_ok();
    assert!(
        !run.stderr.contains("has no `.dockerignore`"),
        "{}",
        run.stderr
    );
}

#[test]
fn check_prints_the_stage_graph_and_validates_the_cargo_chef_example() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_xtask-docker"))
            .arg("docker")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let five = root.join("five-stage/Cargo.toml");
    let (code, mermaid, _) = run(&[
        "check",
        "--graph",
        "mermaid",
        "--manifest-path",
        five.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0));
    assert!(mermaid.starts_with("flowchart LR"), "{mermaid}");
    assert!(
        mermaid.contains("parallel: compile-a, compile-b"),
        "{mermaid}"
    );
    let (code, dot, _) = run(&[
        "check",
        "--graph",
        "dot",
        "--manifest-path",
        five.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0));
    assert!(dot.starts_with("digraph"), "{dot}");
    let chef = root.join("rust-service/Cargo.toml");
    let (code, text, stderr) = run(&["check", "--manifest-path", chef.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("did you mean"), "{stderr}");
    assert!(
        text.contains(
            "deps <- chef, planner  (cached as `127.0.0.1:5000/acme/rust-service:deps-{branch}`)"
        ),
        "{text}"
    );
    // The branch boundary, for a reviewer of the configuration.
    assert!(
        text.contains("branch boundary: the default branch is `")
            && text.contains("a build of another branch writes `127.0.0.1:5000/acme/rust-service:deps-{branch}` (stage `deps`)")
            && text.contains("never a marker"),
        "{text}"
    );
    // Bad configuration exits 2.
    let (code, _, stderr) = run(&[
        "check",
        "--manifest-path",
        chef.to_str().unwrap(),
        "-p",
        "nope",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]
fn check_warns_of_a_name_that_looks_like_a_misspelt_stage() {
    let dir = testbed::temp_dir("typo").unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"svc\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[lib]\npath = \"lib.rs\"\n\n[package.metadata.docker]\nimage = \"127.0.0.1:5000/acme/svc\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("lib.rs"), "").unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch AS build\nCOPY lib.rs /out/\nFROM scratch AS runtime\nCOPY --from=biuld /out /out\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask-docker"))
        .args(["docker", "check", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A warning, not an error: an image called `biuld` may exist.
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: package `svc`: `")
            && stderr.contains("stage `runtime` (line 3) names `biuld`, which is no stage it can use, so Docker takes it for an image: did you mean `build`?"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn help_says_what_runs_and_pulls_only_where_asked() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_xtask-docker"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Nothing is pulled unless `--pull-cache always` asks, so what the commands say they do
    // (the list of commands, and `build`'s first line) says nothing of pulling.
    let docker = help(&["docker"]);
    let commands: Vec<&str> = docker
        .lines()
        .skip_while(|l| *l != "Commands:")
        .take_while(|l| !l.is_empty())
        .collect();
    assert!(
        commands
            .iter()
            .any(|l| l.trim_start().starts_with("build ")),
        "{docker}"
    );
    let build = help(&["docker", "build"]);
    let about = build.lines().next().unwrap_or_default();
    for line in commands.iter().chain([&about]) {
        assert!(
            !line.to_lowercase().contains("pull"),
            "claims a pull: {line}"
        );
    }
}

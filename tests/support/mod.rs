//! What the end-to-end tests share: the example service copied into a temp folder and pointed
//! at a test registry, and the tool run as a program against a given engine.

#![allow(dead_code)] // each test file uses its own part of this

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testbed::{Engine, Registry, Tools};

/// The example service of this repository, copied with busybox into a new temp folder, its
/// image moved to `registry`. Returns the copy's Cargo.toml.
pub fn service(tools: &Tools, registry: &Registry) -> PathBuf {
    example("service", tools, registry)
}

/// The example `name` (a folder under `examples/`), copied with busybox into a new temp folder,
/// its image moved to `registry`. Returns the copy's Cargo.toml.
pub fn example(name: &str, tools: &Tools, registry: &Registry) -> PathBuf {
    let dir = testbed::temp_dir(name).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    for entry in std::fs::read_dir(&example).unwrap() {
        let entry = entry.unwrap();
        let file_name = entry.file_name();
        if file_name == "busybox" || file_name == "target" {
            continue;
        }
        let from = entry.path();
        if from.is_dir() {
            testbed::copy_dir(&from, &dir.join(&file_name)).unwrap();
        } else {
            std::fs::copy(&from, dir.join(&file_name)).unwrap();
        }
    }
    std::fs::copy(&tools.busybox, dir.join("busybox")).unwrap();
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(
        text.contains("127.0.0.1:5000/"),
        "the example's image moved; update this test"
    );
    std::fs::write(
        &manifest,
        text.replace("127.0.0.1:5000/", &format!("{}/", registry.addr())),
    )
    .unwrap();
    manifest
}

/// Replaces `from` with `to` in a fixture's file.
pub fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "`{from}` is not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// The hand-written script this tool replaces, on `engine`: pull every stage's cache image
/// (`|| true`), build each stage in order with `--cache-from` every earlier stage's image and
/// its own, then push every stage image. `stages` are `(stage, image)` in build order.
pub fn seed_script(
    cli: &Path,
    engine: &Engine,
    context: &Path,
    stages: &[(&str, String)],
    build_args: &[&str],
) {
    let docker = |args: &[&str], check: bool| {
        let out = docker(cli, engine, args)
            .env("DOCKER_BUILDKIT", "1")
            .output()
            .unwrap();
        assert!(
            !check || out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (_, image) in stages {
        docker(&["pull", image], false);
    }
    for (i, (stage, image)) in stages.iter().enumerate() {
        let mut args = vec![
            "build",
            "--build-arg",
            "BUILDKIT_INLINE_CACHE=1",
            "--network",
            "none",
            "--target",
            stage,
        ];
        for arg in build_args {
            args.extend(["--build-arg", arg]);
        }
        for (_, earlier) in &stages[..=i] {
            args.extend(["--cache-from", earlier.as_str()]);
        }
        args.extend(["--tag", image.as_str(), context.to_str().unwrap()]);
        docker(&args, true);
    }
    for (_, image) in stages {
        docker(&["push", image], true);
    }
}

/// The registry's tags of `repo`, sorted, without the markers (`inputs-<sha256>`) that record
/// which build the final tags hold; and how many markers there were.
pub fn tags_and_markers(registry: &testbed::Registry, repo: &str) -> (Vec<String>, usize) {
    let mut tags = registry.tags(repo).unwrap();
    tags.sort();
    let before = tags.len();
    tags.retain(|t| !t.starts_with("inputs-"));
    let markers = before - tags.len();
    (tags, markers)
}

/// JSON events of a run with `--message-format json`.
pub fn events(run: &Run) -> Vec<serde_json::Value> {
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The `stages` of the `build-finished` event: `(stage, steps, cached)`. Panics if no stage had a
/// step: every caller looks at builds, and a run that built nothing would pass its loops.
pub fn stage_counts(run: &Run) -> Vec<(String, u64, u64)> {
    let counts = all_stage_counts(run);
    assert!(
        counts.iter().any(|c| c.1 > 0),
        "no stage had a step: nothing was built
{}",
        run.stderr
    );
    counts
}

/// [`stage_counts`], stages without steps included and none required.
pub fn all_stage_counts(run: &Run) -> Vec<(String, u64, u64)> {
    let events = events(run);
    let finished = events
        .iter()
        .find(|e| e["reason"] == "build-finished")
        .expect("a build-finished event");
    finished["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["steps"].as_u64().unwrap(),
                s["cached"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// What a run of the tool printed and how it ended.
pub struct Run {
    pub output: Output,
    pub stderr: String,
    pub stdout: String,
}

impl Run {
    /// Panics with everything it printed unless it succeeded.
    pub fn assert_ok(&self) -> &Run {
        assert!(
            self.output.status.success(),
            "the tool failed ({}):\n{}",
            self.output.status,
            self.stderr
        );
        self
    }

    /// `(cached, steps)` of `stage` from the tool's summary table.
    pub fn cached(&self, package: &str, stage: &str) -> (usize, usize) {
        let row = self
            .stderr
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cells| cells.len() >= 3 && cells[0] == package && cells[1] == stage)
            .unwrap_or_else(|| {
                panic!(
                    "no summary row for `{package}` `{stage}` in:\n{}",
                    self.stderr
                )
            });
        let (cached, steps) = row[2]
            .split_once('/')
            .unwrap_or_else(|| panic!("bad row {row:?}"));
        (cached.parse().unwrap(), steps.parse().unwrap())
    }
}

/// Runs `xtask-docker docker ARGS` with `cli` as the docker CLI against `engine`.
pub fn tool(cli: &Path, engine: &Engine, args: &[&str]) -> Run {
    tool_with(cli, engine, args, &[])
}

/// `xtask-docker docker ARGS` with `cli` as the docker CLI, against `engine`, not yet run, as
/// a build of the default branch (see [`on_default_branch`]).
pub fn tool_command(cli: &Path, engine: &Engine, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask-docker"));
    command.arg("docker").args(args).env("DOCKER", cli);
    agent_env(&mut command, engine);
    on_default_branch(&mut command);
    command
}

/// The CI variables that name the branch or the default branch (see the README).
pub const BRANCH_VARIABLES: &[&str] = &[
    "GITHUB_HEAD_REF",
    "GITHUB_REF_NAME",
    "CI_COMMIT_REF_NAME",
    "BUILDKITE_BRANCH",
    "CIRCLE_BRANCH",
    "CI_DEFAULT_BRANCH",
    "BUILDKITE_PIPELINE_DEFAULT_BRANCH",
    "GITHUB_EVENT_PATH",
];

/// Makes the tool's run a build of the default branch `main`, as a CI agent's is when its
/// variables name the branch and the default branch, wherever the test runs (a clone whose
/// `origin/HEAD` is another branch included): the fixtures are no git checkouts, and
/// a build without a branch writes no tag shared by all branches, nor markers (see
/// `tests/trust.rs`). `--branch` still wins.
pub fn on_default_branch(command: &mut Command) -> &mut Command {
    for name in BRANCH_VARIABLES {
        command.env_remove(name);
    }
    command
        .env("CI_COMMIT_REF_NAME", "main")
        .env("CI_DEFAULT_BRANCH", "main")
}

/// `cli ARGS` (the docker CLI itself) against `engine`, not yet run.
pub fn docker(cli: &Path, engine: &Engine, args: &[&str]) -> Command {
    let mut command = Command::new(cli);
    command.args(args);
    agent_env(&mut command, engine);
    command
}

/// Runs `cli ARGS` against `engine` with BuildKit, and panics with its stderr unless it
/// succeeded.
pub fn docker_ok(cli: &Path, engine: &Engine, args: &[&str]) {
    let out = docker(cli, engine, args)
        .env("DOCKER_BUILDKIT", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What makes a command talk to `engine` as that agent, with its own empty credentials.
fn agent_env(command: &mut Command, engine: &Engine) {
    command
        .env("DOCKER_HOST", engine.host())
        .env("DOCKER_CONFIG", engine.docker_config());
}

/// [`tool`] with more environment variables.
pub fn tool_with(cli: &Path, engine: &Engine, args: &[&str], env: &[(&str, &str)]) -> Run {
    let output = tool_command(cli, engine, args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // Shown with the failing test's output (or with --nocapture).
    eprintln!("$ xtask-docker docker {}\n{stderr}", args.join(" "));
    Run {
        stderr,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        output,
    }
}

/// Whether the build output (with `-v`, each line prefixed `[package/stage] `) says that step
/// `name` (e.g. `[compile 3/5] RUN`) came from the cache in every build that had it.
pub fn step_cached(stderr: &str, name: &str) -> bool {
    let lines: Vec<&str> = stderr
        .lines()
        .map(|l| {
            if l.starts_with('[') {
                l.split_once("] ").map_or(l, |(_, rest)| rest)
            } else {
                l
            }
        })
        .collect();
    let numbers: Vec<&str> = lines
        .iter()
        .filter_map(|l| {
            let (number, text) = l.strip_prefix('#')?.split_once(' ')?;
            text.starts_with(name).then_some(number)
        })
        .collect();
    !numbers.is_empty()
        && numbers
            .iter()
            .all(|n| lines.iter().any(|l| *l == format!("#{n} CACHED")))
}

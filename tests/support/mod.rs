//! What the end-to-end tests share: the example service copied into a temp folder and pointed
//! at a test registry, and the tool run as a program against a given engine.

#![allow(dead_code)] // each test file uses its own part of this

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testbed::{Engine, Registry, Tools};

/// The example service of this repository, copied with busybox into a new temp folder, its
/// image moved to `registry`. Returns the copy's Cargo.toml.
pub fn service(tools: &Tools, registry: &Registry) -> PathBuf {
    let dir = testbed::temp_dir("service").unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/service");
    for entry in ["Cargo.toml", "Dockerfile", "src"] {
        let from = example.join(entry);
        if from.is_dir() {
            testbed::copy_dir(&from, &dir.join(entry)).unwrap();
        } else {
            std::fs::copy(&from, dir.join(entry)).unwrap();
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
    let output = Command::new(env!("CARGO_BIN_EXE_xtask-docker"))
        .arg("docker")
        .args(args)
        .env("DOCKER", cli)
        .env("DOCKER_HOST", engine.host())
        .env("DOCKER_CONFIG", engine.docker_config())
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

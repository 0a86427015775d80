//! The tool's own overhead: `xtask-docker docker build --dry-run` of a generated workspace of 20
//! packages against `cargo metadata` of the same workspace, the least a tool that asks cargo
//! for the workspace spends (this one reads the manifests itself where their shape allows).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::measure::{median, min_max};

/// How many packages the generated workspace has.
pub const PACKAGES: usize = 20;

/// Timings of one command.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// The command.
    pub command: String,
    /// Median seconds.
    pub median: f64,
    /// Fastest run.
    pub min: f64,
    /// Slowest run.
    pub max: f64,
}

/// The overhead measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Overhead {
    /// Packages in the workspace.
    pub packages: usize,
    /// Runs of each command.
    pub runs: u32,
    /// The tool's dry run.
    pub dry_run: Stats,
    /// `cargo metadata --no-deps` alone.
    pub cargo_metadata: Stats,
}

/// Generates the workspace, then times both commands `runs` times each, alternating, after
/// one untimed run of each (which fills the page cache for both alike).
pub fn measure(tool: &Path, runs: u32) -> Result<Overhead> {
    let dir = testbed::temp_dir("bench-workspace")?;
    let result = measure_in(&dir, tool, runs);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure_in(dir: &Path, tool: &Path, runs: u32) -> Result<Overhead> {
    let manifest = generate(dir)?;
    let cargo = PathBuf::from(crate::test::cargo());
    let manifest_arg = manifest.display().to_string();
    let dry_run: Vec<String> = [
        "docker",
        "build",
        "--dry-run",
        "--push",
        // A build of the default branch, which hashes its context for the registry check.
        "--branch",
        "main",
        "--manifest-path",
        &manifest_arg,
    ]
    .map(String::from)
    .to_vec();
    let metadata: Vec<String> = [
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
        "--manifest-path",
        &manifest_arg,
    ]
    .map(String::from)
    .to_vec();
    println!(
        "bench: overhead: `xtask-docker {}` vs `cargo {}`, {PACKAGES} packages, {runs} runs each",
        dry_run.join(" "),
        metadata.join(" ")
    );
    let time = |program: &Path, args: &[String]| -> Result<f64> {
        let start = Instant::now();
        let out = Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run `{}`", program.display()))?;
        let seconds = start.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "`{} {}` failed: {}",
                program.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(seconds)
    };
    time(tool, &dry_run)?;
    time(&cargo, &metadata)?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..runs {
        // Alternate which goes first.
        if i % 2 == 0 {
            ours.push(time(tool, &dry_run)?);
            theirs.push(time(&cargo, &metadata)?);
        } else {
            theirs.push(time(&cargo, &metadata)?);
            ours.push(time(tool, &dry_run)?);
        }
    }
    let stats = |program: &Path, args: &[String], times: &[f64]| {
        let (min, max) = min_max(times);
        Stats {
            command: format!("{} {}", program.display(), args.join(" ")),
            median: median(times),
            min,
            max,
        }
    };
    Ok(Overhead {
        packages: PACKAGES,
        runs,
        dry_run: stats(tool, &dry_run, &ours),
        cargo_metadata: stats(&cargo, &metadata, &theirs),
    })
}

/// Writes a workspace of [`PACKAGES`] packages, each with a small two-stage Dockerfile and a
/// `[package.metadata.docker]` table, into `dir`, as a git repository with one commit (the tool
/// asks git for the labels' revision, as it would in a real repository). Returns its Cargo.toml.
fn generate(dir: &Path) -> Result<PathBuf> {
    let names: Vec<String> = (0..PACKAGES).map(|i| format!("svc-{i:02}")).collect();
    let mut root = String::from("[workspace]\nresolver = \"2\"\nmembers = [\n");
    for name in &names {
        let _ = writeln!(root, "    \"{name}\",");
    }
    root.push_str("]\n");
    std::fs::write(dir.join("Cargo.toml"), root)?;
    for name in &names {
        let package = dir.join(name);
        std::fs::create_dir_all(package.join("src"))?;
        std::fs::write(
            package.join("Cargo.toml"),
            format!(
                "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
                 [package.metadata.docker]\nimage = \"127.0.0.1:5000/bench/{name}\"\ntarget = \"runtime\"\n\
                 tags = [\"{{version}}\", \"latest\"]\nnetwork = \"none\"\n\n\
                 [package.metadata.docker.stages]\ncompile = \"compile\"\n"
            ),
        )?;
        std::fs::write(
            package.join("src/main.rs"),
            format!("fn main() {{\n    println!(\"{name}\");\n}}\n"),
        )?;
        std::fs::write(
            package.join("Dockerfile"),
            "FROM scratch AS toolchain\nCOPY busybox /bin/busybox\n\n\
             FROM toolchain AS compile\nWORKDIR /src\nCOPY Cargo.toml ./\nCOPY src ./src\n\
             RUN mkdir -p /out && cat Cargo.toml src/main.rs > /out/app\n\n\
             FROM toolchain AS runtime\nCOPY --from=compile /out/app /usr/local/bin/app\n",
        )?;
    }
    commit(dir, &["-A"])?;
    Ok(dir.join("Cargo.toml"))
}

/// Makes `dir` a git repository with one commit of `paths` (`git add` arguments): the tool asks
/// git for the labels' revision, as it would in a real repository.
pub(super) fn commit(dir: &Path, paths: &[&str]) -> Result<()> {
    let git = |args: &[&str]| -> Result<()> {
        let status = Command::new("git")
            .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .status()
            .context("cannot run git")?;
        if !status.success() {
            bail!("`git {}` failed in `{}`", args.join(" "), dir.display());
        }
        Ok(())
    };
    git(&["init", "-q", "-b", "main"])?;
    git(&[&["add"][..], paths].concat())?;
    git(&["commit", "-q", "-m", "generated workspace"])
}

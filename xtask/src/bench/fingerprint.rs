//! `cargo xtask bench --fingerprint`: how fast the registry check hashes a build context, in
//! the profiles a user's xtask may be built with. No engine is needed.
//!
//! The context is a generated workspace: 20 000 small source files (a few KB each, in 200
//! folders), four files of 100 MiB, and a `target/` of 10 000 files that the ignore file leaves
//! out, with an exception elsewhere (`!README.md`, common in real ignore files). The tool is
//! built as a user's xtask gets it (`dev`, so the library and its dependencies unoptimized),
//! with the profile lines a user can add to their workspace's Cargo.toml, and in `release`;
//! each then runs `docker build --dry-run --push` on the workspace, which hashes the context
//! once, after one untimed run that fills the page cache (a fresh checkout is in it too).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::measure::median;

/// Small files, the folders they are in, and the large files.
const SMALL: usize = 20_000;
const FOLDERS: usize = 200;
const LARGE: usize = 4;
const LARGE_BYTES: usize = 100 << 20;
/// Files of the `target/` that the ignore file leaves out.
const IGNORED: usize = 10_000;

/// A way to build the tool: its name and the extra `cargo build` arguments.
const VARIANTS: [(&str, &[&str]); 4] = [
    ("dev (a user's xtask)", &[]),
    (
        "dev + [profile.dev.package.blake3] opt-level = 3",
        &["--config", "profile.dev.package.blake3.opt-level=3"],
    ),
    (
        "dev + blake3 and xtask-docker at opt-level = 3",
        &[
            "--config",
            "profile.dev.package.blake3.opt-level=3",
            "--config",
            "profile.dev.package.xtask-docker.opt-level=3",
        ],
    ),
    ("release", &["--release"]),
];

/// Measures every variant `runs` times and prints the table (also written to
/// `target/bench/fingerprint.md`).
pub fn run(runs: u32) -> Result<()> {
    let root = crate::test::root();
    let out = root.join("target/bench/fingerprint");
    let workspace = out.join("workspace");
    let bytes = generate(&workspace)?;
    println!(
        "bench: fingerprint: {SMALL} small files, {LARGE} of {} MiB, {:.0} MB sent; {IGNORED} files in an ignored `target/`",
        LARGE_BYTES >> 20,
        bytes as f64 / 1e6
    );
    let mut table = format!(
        "| build of the tool | wall s (median of {runs}) | MB/s | CPU s | MB per CPU s |\n|---|---:|---:|---:|---:|\n"
    );
    for (name, args) in VARIANTS {
        let tool = build(&root, &out, name, args)?;
        let manifest = workspace.join("Cargo.toml");
        dry_run(&tool, &manifest)?;
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (w, c) = dry_run(&tool, &manifest)?;
            wall.push(w);
            cpu.push(c);
        }
        let (w, c) = (median(&wall), median(&cpu));
        let mb = bytes as f64 / 1e6;
        let _ = writeln!(
            table,
            "| {name} | {w:.2} | {:.0} | {c:.2} | {:.0} |",
            mb / w,
            mb / c
        );
        println!("bench: fingerprint: {name}: {w:.2} s wall, {c:.2} s CPU");
    }
    println!("\n{table}");
    let file = root.join("target/bench/fingerprint.md");
    std::fs::write(&file, &table).with_context(|| format!("cannot write `{}`", file.display()))?;
    println!("bench: wrote {}", file.display());
    Ok(())
}

/// Builds the tool with `args` into a target folder of the benchmark's own (so the
/// repository's builds are left alone) and returns a copy of the binary.
fn build(root: &Path, out: &Path, name: &str, args: &[&str]) -> Result<PathBuf> {
    let target = out.join("target");
    let cargo = crate::test::cargo();
    println!(
        "bench: fingerprint: cargo build --bin xtask-docker {}",
        args.join(" ")
    );
    let status = Command::new(&cargo)
        .args([
            "build",
            "--quiet",
            "--bin",
            "xtask-docker",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .args(args)
        .status()
        .with_context(|| format!("cannot run `{cargo}`"))?;
    if !status.success() {
        bail!("building the tool for `{name}` failed ({status})");
    }
    let profile = if args.contains(&"--release") {
        "release"
    } else {
        "debug"
    };
    let copy = out.join(format!(
        "xtask-docker-{}",
        VARIANTS.iter().position(|v| v.0 == name).unwrap_or(0)
    ));
    std::fs::copy(target.join(profile).join("xtask-docker"), &copy)
        .with_context(|| format!("cannot copy the tool to `{}`", copy.display()))?;
    Ok(copy)
}

/// One dry run: wall seconds, and the CPU seconds it used (user and system).
fn dry_run(tool: &Path, manifest: &Path) -> Result<(f64, f64)> {
    let before = children_cpu();
    let start = Instant::now();
    let output = Command::new(tool)
        // A build of the default branch: only there does the registry check, and so the
        // fingerprint, run.
        .args(["docker", "build", "--dry-run", "--push", "--branch", "main"])
        .arg("--manifest-path")
        .arg(manifest)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}`", tool.display()))?;
    let wall = start.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !text.contains(":inputs-") {
        bail!(
            "the dry run did not print a marker tag: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok((wall, children_cpu() - before))
}

/// User and system seconds of the children that ended so far.
fn children_cpu() -> f64 {
    // SAFETY: `getrusage` fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Writes the workspace (once: it is kept with a stamp of what it holds) and returns the bytes
/// of the files the ignore file lets through.
fn generate(dir: &Path) -> Result<u64> {
    let stamp = dir.join(".generated");
    let spec = format!("{SMALL} {FOLDERS} {LARGE} {LARGE_BYTES} {IGNORED} v1");
    let package = dir.join("svc");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(spec.as_str()) {
        return sent_bytes(&package);
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(package.join("src"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        "[workspace]\nresolver = \"2\"\nmembers = [\"svc\"]\n",
    )?;
    std::fs::write(
        package.join("Cargo.toml"),
        "[package]\nname = \"svc\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
         [package.metadata.docker]\nimage = \"127.0.0.1:5000/bench/svc\"\nnetwork = \"none\"\n",
    )?;
    std::fs::write(package.join("Dockerfile"), "FROM scratch\nCOPY . /src\n")?;
    std::fs::write(package.join(".dockerignore"), "target\n.git\n!README.md\n")?;
    std::fs::write(package.join("README.md"), "# svc\n")?;
    std::fs::write(package.join("src/main.rs"), "fn main() {}\n")?;
    // The same bytes every time: a xorshift generator with a fixed seed.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut fill = |len: usize| -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&next().to_le_bytes());
        }
        out.truncate(len);
        out
    };
    for i in 0..SMALL {
        let folder = package.join(format!("src/m{:03}/s{}", i % FOLDERS, i % 7));
        std::fs::create_dir_all(&folder)?;
        // Mostly 1 to 8 KB, some up to 64 KB: the shape of a source tree.
        let len = 1024 + (i * 7919 % 7168) + if i % 50 == 0 { 57_344 } else { 0 };
        std::fs::write(folder.join(format!("f{i}.rs")), fill(len))?;
    }
    std::fs::create_dir_all(package.join("assets"))?;
    for i in 0..LARGE {
        std::fs::write(
            package.join(format!("assets/big{i}.bin")),
            fill(LARGE_BYTES),
        )?;
    }
    for i in 0..IGNORED {
        let folder = package.join(format!("target/debug/deps/d{}", i % 100));
        std::fs::create_dir_all(&folder)?;
        std::fs::write(folder.join(format!("o{i}.rlib")), fill(1024))?;
    }
    // Only the manifests: the tool asks git for the revision, not for the files.
    super::overhead::commit(dir, &["Cargo.toml", "svc/Cargo.toml"])?;
    std::fs::write(&stamp, &spec)?;
    sent_bytes(&package)
}

/// Bytes of the package's files outside `target/`.
fn sent_bytes(package: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                if entry.file_name() != "target" {
                    walk(&entry.path(), total)?;
                }
            } else {
                *total += entry.metadata()?.len();
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(package, &mut total)?;
    Ok(total)
}

//! The modern engine (dockerd 26 on its own containerd, containerd image store) against a real
//! registry: registry cache export and import, multi-platform builds under emulation, and what
//! the classic engine says instead. Skipped (failing under `CI`) when the tools are missing:
//! `cargo xtask engine install`.

use std::collections::BTreeSet;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use testbed::{Engine, EngineOptions, Flavor, Tools};
use xshell::{cmd, Shell};

/// Two stages after `FROM scratch`: busybox brought in, a few files written.
const TWO_STAGES: &str = "\
FROM scratch AS base
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
RUN echo base > /base.txt

FROM base AS final
RUN echo final > /final.txt
";

/// One Dockerfile for every platform: the platform's busybox, and a step that runs it.
const TWO_PLATFORMS: &str = "\
FROM scratch
ARG TARGETARCH
COPY busybox-${TARGETARCH} /bin/busybox
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
RUN echo \"machine: $(uname -m)\" | tee /machine.txt
";

/// The media types of image indexes and manifest lists.
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A build context holding `files` (name, source) and `dockerfile`.
fn context(dockerfile: &str, files: &[(&str, &Path)]) -> Result<PathBuf> {
    let dir = testbed::temp_dir("context")?;
    for (name, source) in files {
        fs::copy(source, dir.join(name))
            .with_context(|| format!("cannot copy `{}`", source.display()))?;
    }
    fs::write(dir.join("Dockerfile"), dockerfile)?;
    Ok(dir)
}

/// What a `docker` command printed (stdout, then stderr) and whether it succeeded.
struct Run {
    ok: bool,
    output: String,
}

/// Runs the modern CLI with `args` against `engine`.
fn docker(tools: &Tools, engine: &Engine, args: &[&str]) -> Result<Run> {
    let sh = Shell::new()?;
    let cli = &tools.cli28;
    let out = cmd!(sh, "{cli} {args...}")
        .env("DOCKER_HOST", engine.host())
        .env("DOCKER_CONFIG", engine.docker_config())
        .quiet()
        .ignore_status()
        .output()?;
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(Run {
        ok: out.status.success(),
        output,
    })
}

/// Like [`docker`], but fails with the output when the command fails.
fn docker_ok(tools: &Tools, engine: &Engine, args: &[&str]) -> Result<String> {
    let run = docker(tools, engine, args)?;
    anyhow::ensure!(
        run.ok,
        "`docker {}` failed:\n{}",
        args.join(" "),
        run.output
    );
    Ok(run.output)
}

/// The build steps (`#N [stage i/n] ...`, not `[internal]`) of a `--progress=plain` log, and
/// those of them that were `CACHED`.
fn steps_and_cached(log: &str) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let mut steps = BTreeSet::new();
    let mut cached = BTreeSet::new();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((id, what)) = rest.split_once(' ') else {
            continue;
        };
        let Ok(id) = id.parse::<u32>() else {
            continue;
        };
        if what.starts_with('[') && !what.starts_with("[internal]") {
            steps.insert(id);
        } else if what.trim_end() == "CACHED" {
            cached.insert(id);
        }
    }
    (steps, cached)
}

/// Whether a process other than this one names `dir` on its command line, or something is
/// mounted under `dir`.
fn traces_of(dir: &Path) -> Result<Vec<String>> {
    let mut traces = Vec::new();
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    for mount in info.lines().filter_map(|l| l.split(' ').nth(4)) {
        if Path::new(mount).starts_with(dir) {
            traces.push(format!("mount `{mount}`"));
        }
    }
    let me = std::process::id().to_string();
    let needle = dir.display().to_string();
    for entry in fs::read_dir("/proc")?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, s)| s.trim_start().starts_with('Z'));
        if !zombie
            && (cmdline.contains(&format!("{needle}/")) || cmdline.contains(&format!("{needle} ")))
        {
            traces.push(format!("process `{name}`: {cmdline}"));
        }
    }
    if dir.exists() {
        traces.push("the directory".to_string());
    }
    Ok(traces)
}

#[test]
fn registry_cache_round_trips_between_two_fresh_modern_engines() -> Result<()> {
    let Some(tools) = testbed::require_modern() else {
        return Ok(());
    };
    let registry = tools.registry()?;
    let context = context(TWO_STAGES, &[("busybox", &tools.busybox)])?;
    let ctx = context.display().to_string();
    let reg = registry.addr();
    let (image, cache) = (format!("{reg}/x:latest"), format!("{reg}/x:buildcache"));

    let started = Instant::now();
    let first = tools.modern_engine()?;
    let start_time = started.elapsed();
    assert_eq!(first.flavor(), Flavor::Modern);
    assert!(first.containerd_pid().is_some());
    let first_dir = first.dir().to_path_buf();
    let cache_to =
        format!("type=registry,ref={cache},mode=max,image-manifest=true,oci-mediatypes=true");
    let started = Instant::now();
    let cold = docker_ok(
        &tools,
        &first,
        &[
            "buildx",
            "build",
            "--progress=plain",
            "--network=none",
            "--cache-to",
            &cache_to,
            "--tag",
            &image,
            "--push",
            &ctx,
        ],
    )?;
    let cold_time = started.elapsed();
    let (steps, cached) = steps_and_cached(&cold);
    assert_eq!(steps.len(), 4, "{cold}");
    assert!(cached.is_empty(), "{cold}");
    assert!(cold.contains("exporting cache to registry"), "{cold}");
    let mut tags = registry.tags("x")?;
    tags.sort();
    assert_eq!(tags, ["buildcache", "latest"]);
    let cache_manifest = registry
        .manifest("x", "buildcache")?
        .context("no cache manifest")?;
    assert_eq!(
        cache_manifest.media_type, "application/vnd.oci.image.manifest.v1+json",
        "{}",
        cache_manifest.body
    );
    assert!(
        cache_manifest
            .body
            .contains("application/vnd.buildkit.cacheconfig.v0"),
        "{}",
        cache_manifest.body
    );
    let started = Instant::now();
    first.stop();
    let stop_time = started.elapsed();
    assert_eq!(traces_of(&first_dir)?, Vec::<String>::new());

    // A second fresh agent: every step comes from the registry cache.
    let second = tools.modern_engine()?;
    let cache_from = format!("type=registry,ref={cache}");
    let started = Instant::now();
    let warm = docker_ok(
        &tools,
        &second,
        &[
            "buildx",
            "build",
            "--progress=plain",
            "--network=none",
            "--cache-from",
            &cache_from,
            "--tag",
            &image,
            "--push",
            &ctx,
        ],
    )?;
    let warm_time = started.elapsed();
    let (steps, cached) = steps_and_cached(&warm);
    assert_eq!(steps.len(), 4, "{warm}");
    assert_eq!(steps, cached, "every step cached:\n{warm}");
    assert!(
        warm.contains(&format!("importing cache manifest from {cache}")),
        "{warm}"
    );
    eprintln!(
        "timings: modern engine start {start_time:?}, stop {stop_time:?}; cold build with cache export {cold_time:?}; build on a fresh engine from the registry cache {warm_time:?}"
    );
    drop(second);
    fs::remove_dir_all(&context)?;
    Ok(())
}

#[test]
fn cache_import_from_a_missing_ref_or_a_registry_that_is_down_only_reports_an_error() -> Result<()>
{
    let Some(tools) = testbed::require_modern() else {
        return Ok(());
    };
    let registry = tools.registry()?;
    let engine = tools.modern_engine()?;
    let context = context(TWO_STAGES, &[("busybox", &tools.busybox)])?;
    let ctx = context.display().to_string();
    let reg = registry.addr();
    let image = format!("{reg}/y:latest");

    // The same build, reading the registry cache at `cache`.
    let build_from = |cache: &str| {
        let from = format!("type=registry,ref={cache}");
        let args = [
            "buildx",
            "build",
            "--progress=plain",
            "--network=none",
            "--cache-from",
            &from,
            "--tag",
            &image,
            "--push",
            &ctx,
        ];
        docker_ok(&tools, &engine, &args)
    };

    let missing = format!("{reg}/nothere:buildcache");
    let output = build_from(&missing)?;
    let expected =
        format!("ERROR: failed to configure registry cache importer: {missing}: not found");
    let line = output
        .lines()
        .find(|l| l.contains("registry cache importer"));
    eprintln!("cache ref missing: {line:?}");
    assert!(output.contains(&expected), "{output}");
    assert_eq!(registry.tags("y")?, ["latest"]);

    // A port where nothing listens.
    let down = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let unreachable = format!("127.0.0.1:{down}/nothere:buildcache");
    let output = build_from(&unreachable)?;
    let line = output
        .lines()
        .find(|l| l.contains("registry cache importer"));
    eprintln!("registry down: {line:?}");
    let expected = format!(
        "ERROR: failed to configure registry cache importer: failed to do request: Head \"https://127.0.0.1:{down}/v2/nothere/manifests/buildcache\": dial tcp 127.0.0.1:{down}: connect: connection refused"
    );
    assert!(output.contains(&expected), "{output}");
    fs::remove_dir_all(&context)?;
    Ok(())
}

#[test]
fn a_modern_engine_builds_and_pushes_two_platforms() -> Result<()> {
    let Some(tools) = testbed::require_modern() else {
        return Ok(());
    };
    let arm64 = tools.busybox_arm64().context("no arm64 busybox")?;
    let registry = tools.registry()?;
    let engine = tools.modern_engine()?;
    let context = context(
        TWO_PLATFORMS,
        &[("busybox-amd64", &tools.busybox), ("busybox-arm64", &arm64)],
    )?;
    let ctx = context.display().to_string();
    let image = format!("{}/multi:latest", registry.addr());
    let started = Instant::now();
    let output = docker_ok(
        &tools,
        &engine,
        &[
            "buildx",
            "build",
            "--progress=plain",
            "--network=none",
            "--platform",
            "linux/amd64,linux/arm64",
            "--tag",
            &image,
            "--push",
            &ctx,
        ],
    )?;
    eprintln!(
        "timings: two-platform build and push {:?}",
        started.elapsed()
    );
    // The RUN step ran once natively and once under qemu.
    assert!(output.contains("machine: x86_64"), "{output}");
    assert!(output.contains("machine: aarch64"), "{output}");

    let index = registry
        .manifest("multi", "latest")?
        .context("no manifest")?;
    assert!(
        INDEX_TYPES.contains(&index.media_type.as_str()),
        "{}: {}",
        index.media_type,
        index.body
    );
    let platforms = index.platforms()?;
    eprintln!("index `{}` lists {platforms:?}", index.media_type);
    let architectures: BTreeSet<&str> = platforms
        .iter()
        .filter(|p| p.starts_with("linux/"))
        .map(|p| p.split('/').nth(1).unwrap_or_default())
        .collect();
    assert_eq!(
        architectures,
        BTreeSet::from(["amd64", "arm64"]),
        "{}",
        index.body
    );
    let ls = docker_ok(&tools, &engine, &["buildx", "ls"])?;
    assert!(ls.contains("linux/arm64"), "{ls}");
    fs::remove_dir_all(&context)?;
    Ok(())
}

#[test]
fn the_classic_engine_refuses_cache_export_and_the_flavours_tell_apart() -> Result<()> {
    let Some(tools) = testbed::require_modern() else {
        return Ok(());
    };
    let registry = tools.registry()?;
    let classic = tools.engine()?;
    let modern = tools.modern_engine()?;
    let context = context(TWO_STAGES, &[("busybox", &tools.busybox)])?;
    let ctx = context.display().to_string();
    let reg = registry.addr();
    let (image, cache) = (format!("{reg}/c:latest"), format!("{reg}/c:buildcache"));
    let cache_to =
        format!("type=registry,ref={cache},mode=max,image-manifest=true,oci-mediatypes=true");
    let run = docker(
        &tools,
        &classic,
        &[
            "buildx",
            "build",
            "--progress=plain",
            "--network=none",
            "--cache-to",
            &cache_to,
            "--tag",
            &image,
            "--push",
            &ctx,
        ],
    )?;
    eprintln!("classic --cache-to:\n{}", run.output);
    assert!(!run.ok);
    assert!(
        run.output
            .contains("ERROR: Cache export is not supported for the docker driver."),
        "{}",
        run.output
    );
    assert!(registry.tags("c")?.is_empty());

    // What a preflight can look at.
    let status = "{{json .DriverStatus}}";
    let driver = "{{.Driver}}";
    for (name, engine) in [("classic", &classic), ("modern", &modern)] {
        let driver_status = docker_ok(&tools, engine, &["info", "--format", status])?;
        let storage = docker_ok(&tools, engine, &["info", "--format", driver])?;
        let inspect = docker_ok(&tools, engine, &["buildx", "inspect"])?;
        let ls = docker_ok(&tools, engine, &["buildx", "ls"])?;
        eprintln!(
            "{name}: info .Driver: {}\n{name}: info .DriverStatus: {}\n{name}: buildx inspect:\n{inspect}{name}: buildx ls:\n{ls}",
            storage.trim(),
            driver_status.trim()
        );
    }
    let modern_status = docker_ok(&tools, &modern, &["info", "--format", status])?;
    assert_eq!(
        modern_status.trim(),
        r#"[["driver-type","io.containerd.snapshotter.v1"]]"#
    );
    let classic_status = docker_ok(&tools, &classic, &["info", "--format", status])?;
    assert!(
        !classic_status.contains("io.containerd.snapshotter"),
        "{classic_status}"
    );
    let modern_inspect = docker_ok(&tools, &modern, &["buildx", "inspect"])?;
    assert!(
        modern_inspect.contains("org.mobyproject.buildkit.worker.snapshotter:"),
        "{modern_inspect}"
    );
    let classic_inspect = docker_ok(&tools, &classic, &["buildx", "inspect"])?;
    assert!(
        classic_inspect.contains("BuildKit version: v0.8"),
        "{classic_inspect}"
    );
    fs::remove_dir_all(&context)?;
    Ok(())
}

#[test]
fn leftovers_of_a_killed_modern_engine_are_cleaned_up() -> Result<()> {
    let Some(tools) = testbed::require_modern() else {
        return Ok(());
    };
    // A directory named as if a process that is gone had made it.
    let scratch = testbed::temp_dir("probe")?;
    let root = scratch.parent().context("no temporary root")?.to_path_buf();
    fs::remove_dir(&scratch)?;
    let dir = root.join(format!("xtd-leftover-999999999-{}", std::process::id()));
    let engine = Engine::start(
        &tools,
        EngineOptions {
            flavor: Flavor::Modern,
            dir: Some(dir.clone()),
        },
    )?;
    let containerd = engine.containerd_pid().context("no containerd")?;
    let pid = engine.detach();
    assert_eq!(Engine::running_in(&dir), Some(pid));
    assert!(!traces_of(&dir)?.is_empty());
    testbed::clean_leftovers();
    // dockerd, containerd and the shims are gone, nothing is mounted, the directory is deleted.
    assert_eq!(traces_of(&dir)?, Vec::<String>::new());
    assert!(
        !Path::new(&format!("/proc/{containerd}")).exists() || {
            let stat = fs::read_to_string(format!("/proc/{containerd}/stat")).unwrap_or_default();
            stat.rsplit_once(')')
                .is_some_and(|(_, s)| s.trim_start().starts_with('Z'))
        }
    );
    Ok(())
}

//! Cache mounts that travel (`cache-mounts`), end to end on fresh agents and a real registry: a
//! counter kept in a `RUN --mount=type=cache` folder shows whether the folder's content came
//! along, as a non-root user with `sharing=locked`, on both engines and both cache modes.

mod support;

use std::path::{Path, PathBuf};

use support::{docker, events, tool, Run};

/// A busybox base image (a shell and `cp`), pushed to `registry` and named by digest.
fn busybox_base(tools: &testbed::Tools, registry: &testbed::Registry) -> String {
    let dir = testbed::temp_dir("mount-base").unwrap();
    std::fs::copy(&tools.busybox, dir.join("busybox")).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
    )
    .unwrap();
    let agent = tools.engine().unwrap();
    let image = format!("{}/library/busybox:1", registry.addr());
    for args in [
        vec![
            "build",
            "--network",
            "none",
            "-t",
            &image,
            dir.to_str().unwrap(),
        ],
        vec!["push", &image],
    ] {
        let out = docker(&tools.cli20, &agent, &args)
            .env("DOCKER_BUILDKIT", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let digest = registry
        .manifest_digest("library/busybox", "1")
        .unwrap()
        .expect("pushed");
    format!("{image}@{digest}")
}

/// A package whose build counts its runs in a cache mount, from `base`; the count is the
/// image's `/result`. `extra` goes into its table.
fn counter(registry: &testbed::Registry, base: &str, extra: &str) -> PathBuf {
    let dir = testbed::temp_dir("mounts").unwrap();
    std::fs::create_dir(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/input.txt"), "1").unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {base} AS build\nRUN mkdir -p /home/app /etc && echo app:x:1000:1000::/home/app:/bin/sh >> /etc/passwd && echo app:x:1000: >> /etc/group && chown 1000 /home/app\nUSER 1000\nCOPY src /src\nRUN --mount=type=cache,id=counter,target=/home/app/cache,uid=1000,sharing=locked n=$(cat /home/app/cache/count 2>/dev/null || echo 0); echo $((n + 1)) > /home/app/cache/count; cp /home/app/cache/count /home/app/result\nFROM build AS runtime\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"counter\"\nversion = \"1.0.0\"\nedition = \"2021\"\n\n[package.metadata.docker]\nimage = \"{}/acme/counter\"\nnetwork = \"none\"\ncache-mounts = true\n{extra}\n",
            registry.addr()
        ),
    )
    .unwrap();
    dir.join("Cargo.toml")
}

/// What the image `latest` holds in `/home/app/result` (what it counted), its words joined by
/// single spaces.
fn count(cli: &Path, agent: &testbed::Engine, registry: &testbed::Registry) -> String {
    let image = format!("{}/acme/counter:latest", registry.addr());
    let out = docker(
        cli,
        agent,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            &image,
            "cat",
            "/home/app/result",
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `step-finished` of the mount step of `kind` (`restore`, `export`), the first that ran if
/// any did, else the first.
fn mount_step(run: &Run, kind: &str) -> serde_json::Value {
    let finished: Vec<serde_json::Value> = events(run)
        .into_iter()
        .filter(|e| e["reason"] == "step-finished" && e["kind"] == kind)
        .collect();
    finished
        .iter()
        .find(|e| e["outcome"] == "done")
        .or(finished.first())
        .unwrap_or_else(|| panic!("no {kind} step\n{}", run.stderr))
        .clone()
}

/// The run restored its cache mount.
fn assert_restored(run: &Run) {
    assert_eq!(
        mount_step(run, "restore")["outcome"],
        "done",
        "{}",
        run.stderr
    );
}

fn build(cli: &Path, agent: &testbed::Engine, manifest: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "build",
        "--manifest-path",
        manifest.to_str().unwrap(),
        "--push",
        "--message-format",
        "json",
    ];
    args.extend(extra);
    let run = tool(cli, agent, &args);
    run.assert_ok();
    run
}

/// The tools for fresh agents of the modern engine, or of the classic one.
fn engine_tools(modern: bool) -> Option<testbed::Tools> {
    if modern {
        testbed::require_modern()
    } else {
        testbed::require()
    }
}

/// A fresh agent: a new, empty engine, modern or classic.
fn fresh_agent(tools: &testbed::Tools, modern: bool) -> testbed::Engine {
    if modern {
        tools.modern_engine()
    } else {
        tools.engine()
    }
    .unwrap()
}

/// Four generations: cold on agent 1; after an edit on fresh agent 2 (restored: the count
/// goes on); nothing changed, rebuilt on agent 2 (nothing ran: no export); after an edit on
/// agent 2 again (warm: the older copy in the registry is not restored over it).
fn generations(cli: &Path, modern: bool, extra: &str) {
    let Some(tools) = engine_tools(modern) else {
        return;
    };
    let registry = tools.registry().unwrap();
    let base = busybox_base(&tools, &registry);
    let manifest = counter(&registry, &base, extra);
    let agent = || fresh_agent(&tools, modern);
    let input = manifest.with_file_name("src").join("input.txt");

    let first = agent();
    let run = build(cli, &first, &manifest, &["--branch", "main"]);
    assert_eq!(count(cli, &first, &registry), "1", "{}", run.stderr);
    assert_eq!(
        mount_step(&run, "restore")["outcome"],
        "skipped",
        "no cache yet\n{}",
        run.stderr
    );
    let export = mount_step(&run, "export");
    assert_eq!(export["outcome"], "done", "{}", run.stderr);
    assert!(export["bytes"].as_u64().is_some_and(|b| b > 0), "{export}");
    first.stop();
    let tags = registry.tags("acme/counter").unwrap();
    assert!(tags.contains(&"mount-counter-main".to_string()), "{tags:?}");
    // The modern engine keeps images in the containerd store: the export pushed its copy
    // itself, in zstd, and told its digest. The classic one pushed it with `docker push`.
    let copy = registry
        .manifest("acme/counter", "mount-counter-main")
        .unwrap()
        .expect("the copy");
    let zstd = copy.body.contains("tar+zstd");
    assert_eq!(zstd, modern, "{}", copy.body);
    if modern {
        assert_eq!(export["digest"], copy.digest.as_str(), "{export}");
    }

    std::fs::write(&input, "2").unwrap();
    let second = agent();
    let run = build(cli, &second, &manifest, &["--branch", "main"]);
    assert_restored(&run);
    assert_eq!(
        count(cli, &second, &registry),
        "2",
        "the count went on from agent 1's\n{}",
        run.stderr
    );
    assert_eq!(mount_step(&run, "export")["outcome"], "done");

    let run = build(cli, &second, &manifest, &["--branch", "main", "--rebuild"]);
    let export = mount_step(&run, "export");
    assert_eq!(export["outcome"], "skipped", "{}", run.stderr);
    assert!(
        export["message"]
            .as_str()
            .unwrap()
            .contains("no step that uses"),
        "{export}"
    );

    std::fs::write(&input, "3").unwrap();
    let run = build(cli, &second, &manifest, &["--branch", "main"]);
    let restore = mount_step(&run, "restore");
    assert_eq!(restore["outcome"], "skipped", "{}", run.stderr);
    assert!(
        restore["message"]
            .as_str()
            .unwrap()
            .contains("holds the cache mount"),
        "{restore}"
    );
    assert_eq!(
        count(cli, &second, &registry),
        "3",
        "the warm mount went on\n{}",
        run.stderr
    );
}

#[test]
fn a_cache_mount_travels_with_the_20_10_cli() {
    let Some(tools) = testbed::require() else {
        return;
    };
    generations(&tools.cli20, false, "");
}

#[test]
fn a_cache_mount_travels_with_the_modern_cli() {
    let Some(tools) = testbed::require() else {
        return;
    };
    generations(&tools.cli28, false, "");
}

#[test]
fn a_cache_mount_travels_with_a_registry_cache_on_the_modern_engine() {
    let Some(tools) = testbed::require_modern() else {
        return;
    };
    generations(
        &tools.cli28,
        true,
        "cache = \"registry\"\nprovenance = false",
    );
}

#[test]
fn a_mount_past_its_limit_resets_its_travelling_copy_and_check_shows_the_mounts() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let base = busybox_base(&tools, &registry);
    let manifest = counter(&registry, &base, "cache-mount-limit = 1");
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_xtask-docker"))
        .args([
            "docker",
            "check",
            "--manifest-path",
            manifest.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains(&format!(
            "cache mount `counter` travels as `{}/acme/counter:mount-counter-{{branch}}`",
            registry.addr()
        )) && text.contains("used by `build` line 5"),
        "{text}"
    );

    let first = tools.engine().unwrap();
    let run = build(&tools.cli28, &first, &manifest, &["--branch", "main"]);
    let export = mount_step(&run, "export");
    assert_eq!(export["outcome"], "warning", "{export}");
    assert!(
        run.stderr.contains("more than `cache-mount-limit` (1 B)") && run.stderr.contains("reset"),
        "{}",
        run.stderr
    );
    assert_eq!(
        mount_step(&run, "push")["outcome"],
        "done",
        "the empty copy is pushed"
    );
    first.stop();
    std::fs::write(manifest.with_file_name("src").join("input.txt"), "2").unwrap();
    let second = tools.engine().unwrap();
    let run = build(&tools.cli28, &second, &manifest, &["--branch", "main"]);
    assert_restored(&run);
    assert_eq!(
        count(&tools.cli28, &second, &registry),
        "1",
        "the mount started afresh from the reset copy\n{}",
        run.stderr
    );
}

/// A two-platform busybox base image on `agent` (the modern engine), pushed to `registry` and
/// named by digest.
fn busybox_base_two_platforms(
    tools: &testbed::Tools,
    agent: &testbed::Engine,
    registry: &testbed::Registry,
) -> String {
    let dir = testbed::temp_dir("mount-base2").unwrap();
    std::fs::copy(&tools.busybox, dir.join("busybox-amd64")).unwrap();
    std::fs::copy(tools.busybox_arm64().unwrap(), dir.join("busybox-arm64")).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nARG TARGETARCH\nCOPY busybox-${TARGETARCH} /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
    )
    .unwrap();
    let image = format!("{}/library/busybox:2", registry.addr());
    let args = [
        "buildx",
        "build",
        "--network",
        "none",
        "--provenance=false",
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        &image,
        "--push",
        dir.to_str().unwrap(),
    ];
    let out = docker(&tools.cli28, agent, &args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = registry
        .manifest_digest("library/busybox", "2")
        .unwrap()
        .expect("pushed");
    format!("{image}@{digest}")
}

#[test]
fn each_platform_s_mount_travels_in_a_two_platform_build() {
    let Some(tools) = testbed::require_modern() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let first = tools.modern_engine().unwrap();
    let base = busybox_base_two_platforms(&tools, &first, &registry);
    let manifest = counter(
        &registry,
        &base,
        "cache = \"registry\"\nprovenance = false\nplatform = [\"linux/amd64\", \"linux/arm64\"]",
    );
    // One cache per platform, as a cross-platform Dockerfile keeps them apart.
    support::edit(
        &manifest.with_file_name("Dockerfile"),
        "RUN --mount=type=cache,id=counter,",
        "ARG TARGETARCH\nRUN --mount=type=cache,id=counter-$TARGETARCH,",
    );
    // The arm64 step counts in tens: a platform that got the other's copy would show it.
    support::edit(
        &manifest.with_file_name("Dockerfile"),
        "echo $((n + 1))",
        "echo $((n + $(uname -m | grep -q aarch64 && echo 10 || echo 1)))",
    );
    let count_on = |agent: &testbed::Engine, platform: &str| -> String {
        let image = format!("{}/acme/counter:latest", registry.addr());
        let args = [
            "run",
            "--rm",
            "--network",
            "none",
            "--platform",
            platform,
            &image,
            "cat",
            "/home/app/result",
        ];
        let out = docker(&tools.cli28, agent, &args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let run = build(&tools.cli28, &first, &manifest, &["--branch", "main"]);
    assert_eq!(
        mount_step(&run, "export")["outcome"],
        "done",
        "{}",
        run.stderr
    );
    first.stop();
    let tag = registry
        .tags("acme/counter")
        .unwrap()
        .into_iter()
        .find(|t| t.starts_with("mount-counter-targetarch-"))
        .expect("the mount's copy");
    let copy = registry.manifest("acme/counter", &tag).unwrap();
    let mut platforms = copy.expect("the mount's copy").platforms().unwrap();
    platforms.sort();
    assert_eq!(
        platforms,
        ["linux/amd64", "linux/arm64"],
        "one copy per platform"
    );

    std::fs::write(manifest.with_file_name("src").join("input.txt"), "2").unwrap();
    let second = tools.modern_engine().unwrap();
    let run = build(&tools.cli28, &second, &manifest, &["--branch", "main"]);
    assert_restored(&run);
    for (platform, expected) in [("linux/amd64", "2"), ("linux/arm64", "20")] {
        assert_eq!(
            count_on(&second, platform),
            expected,
            "{platform}: the count went on\n{}",
            run.stderr
        );
    }
}

/// A team whose agents run both engines: the modern one (containerd image store) writes its
/// copy in zstd, which Docker 20.10's image store cannot unpack. There the restore is a warning
/// and the build goes on without the mount; its export writes a copy in gzip, which the next
/// modern agent restores.
#[test]
fn a_zstd_copy_an_old_engine_cannot_read_is_a_warning_and_its_gzip_copy_travels_on() {
    let Some(tools) = testbed::require_modern() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let base = busybox_base(&tools, &registry);
    let manifest = counter(&registry, &base, "");
    let input = manifest.with_file_name("src").join("input.txt");
    let copy = || {
        registry
            .manifest("acme/counter", "mount-counter-main")
            .unwrap()
            .expect("the copy")
            .body
    };
    let modern = tools.modern_engine().unwrap();
    build(&tools.cli28, &modern, &manifest, &["--branch", "main"]);
    modern.stop();
    assert!(copy().contains("tar+zstd"), "{}", copy());

    std::fs::write(&input, "2").unwrap();
    let old = tools.engine().unwrap();
    let run = build(&tools.cli28, &old, &manifest, &["--branch", "main"]);
    let restore = mount_step(&run, "restore");
    assert_eq!(restore["outcome"], "warning", "{}", run.stderr);
    assert!(
        restore["message"]
            .as_str()
            .unwrap()
            .contains("cannot unpack the layer of"),
        "{restore}"
    );
    // The engine's words, as a person reads them (not BuildKit's JSON).
    assert!(
        restore["message"].as_str().unwrap().contains(
            "failed to register layer: Error processing tar file(exit status 1): unexpected EOF`;"
        ),
        "{restore}"
    );
    assert_eq!(count(&tools.cli28, &old, &registry), "1", "{}", run.stderr);
    assert_eq!(mount_step(&run, "export")["outcome"], "done");
    old.stop();
    assert!(copy().contains("tar.gzip"), "{}", copy());

    std::fs::write(&input, "3").unwrap();
    let modern = tools.modern_engine().unwrap();
    let run = build(&tools.cli28, &modern, &manifest, &["--branch", "main"]);
    assert_restored(&run);
    assert_eq!(
        count(&tools.cli28, &modern, &registry),
        "2",
        "the old agent's copy went on\n{}",
        run.stderr
    );
}

/// A package that counts its runs in a sub-folder of a cache mount, as a non-root user, and
/// writes a file there on its first run, which it deletes when `src/input.txt` says `drop`;
/// its image's `/home/app/result` is the count and the sub-folder's listing.
fn keeper(registry: &testbed::Registry, base: &str, extra: &str) -> PathBuf {
    let manifest = counter(registry, base, extra);
    let dir = manifest.parent().unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {base} AS build\nRUN mkdir -p /home/app && echo app:x:1000:1000::/home/app:/bin/sh >> /etc/passwd && echo app:x:1000: >> /etc/group && chown 1000 /home/app\nUSER 1000\nCOPY src /src\nRUN --mount=type=cache,id=keeper,target=/home/app/cache,uid=1000,sharing=locked cd /home/app/cache && mkdir -p sub && n=$(cat sub/count 2>/dev/null || echo 0) && echo $((n + 1)) > sub/count && if [ \"$n\" = 0 ]; then echo once > sub/first; fi && if grep -q drop /src/input.txt; then rm sub/first; fi && {{ cat sub/count; ls sub; }} > /home/app/result\nFROM build AS runtime\n"
        ),
    )
    .unwrap();
    manifest
}

/// The layer digests of the travelling copy `mount-keeper-main`, as the registry serves it.
fn copy_layers(registry: &testbed::Registry) -> Vec<String> {
    let repo = "acme/counter";
    let mut manifest: serde_json::Value = serde_json::from_str(
        &registry
            .manifest(repo, "mount-keeper-main")
            .unwrap()
            .expect("the copy")
            .body,
    )
    .unwrap();
    if let Some(first) = manifest["manifests"].get(0) {
        let digest = first["digest"].as_str().unwrap().to_string();
        let body = registry
            .manifest(repo, &digest)
            .unwrap()
            .expect("its manifest")
            .body;
        manifest = serde_json::from_str(&body).unwrap();
    }
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// Five fresh agents, one after the other, on a Debian base (GNU `find` and `tar`): each
/// restores the copy the one before exported. After a restore, the export adds what changed as
/// a layer on top of the restored copy, which the next agent reads through (the count goes on,
/// the file of the first run is still there, every folder still the step's user's); after a
/// deletion, it exports the whole mount, and the deleted file stays deleted.
fn added_on_the_restored_copy(modern: bool, extra: &str) {
    let Some((_, images)) = testbed::require_rust() else {
        return;
    };
    let Some(tools) = engine_tools(modern) else {
        return;
    };
    let registry = tools.registry().unwrap();
    let base = images.serve(&registry).unwrap().runtime;
    let manifest = keeper(&registry, &base, extra);
    let input = manifest.with_file_name("src").join("input.txt");
    let cli = &tools.cli28;
    let agent = || fresh_agent(&tools, modern);
    let generation = |input_text: &str| {
        std::fs::write(&input, input_text).unwrap();
        let engine = agent();
        let run = build(cli, &engine, &manifest, &["--branch", "main"]);
        let result = count(cli, &engine, &registry);
        engine.stop();
        let export = mount_step(&run, "export");
        assert_eq!(export["outcome"], "done", "{}", run.stderr);
        (run, result, export)
    };

    let (_, result, export) = generation("1");
    assert_eq!(result, "1 count first");
    assert!(export["added_bytes"].is_null(), "{export}");
    let first = copy_layers(&registry);
    assert_eq!(first.len(), 1, "{first:?}");

    let mut layers = first.clone();
    for n in ["2", "3"] {
        let (run, result, export) = generation(n);
        assert_restored(&run);
        assert_eq!(result, format!("{n} count first"), "{}", run.stderr);
        let added = export["added_bytes"].as_u64().expect("added on the copy");
        assert!(
            added > 0 && added < export["bytes"].as_u64().unwrap(),
            "{export}"
        );
        let now = copy_layers(&registry);
        assert_eq!(now.len(), layers.len() + 1, "{now:?}\n{}", run.stderr);
        assert_eq!(
            now[..layers.len()],
            layers[..],
            "the restored copy's layers, as they were"
        );
        layers = now;
    }

    let (run, result, export) = generation("drop");
    assert_restored(&run);
    assert_eq!(result, "4 count", "{}", run.stderr);
    assert!(export["added_bytes"].is_null(), "the whole mount: {export}");
    let whole = copy_layers(&registry);
    assert_eq!(whole.len(), 1, "{whole:?}");

    let (run, result, _) = generation("5");
    assert_restored(&run);
    assert_eq!(
        result, "5 count",
        "the deleted file stays deleted\n{}",
        run.stderr
    );
}

#[test]
fn an_export_after_a_restore_adds_what_changed_on_the_copy_with_a_registry_cache_on_the_modern_engine(
) {
    added_on_the_restored_copy(true, "cache = \"registry\"\nprovenance = false");
}

#[test]
fn an_export_after_a_restore_adds_what_changed_on_the_copy_with_inline_cache_on_the_classic_engine()
{
    added_on_the_restored_copy(false, "");
}

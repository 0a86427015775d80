//! The caching strategies end to end, on real engines (each a fresh CI agent) and a real
//! registry: branch caches with fallback, work skipped when nothing changed, exactly the affected
//! stages rebuilt when something did, independent stages at once, and registry cache on an
//! engine that can export it.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use xtask_docker::progress::{BuildProgress, Format};

use support::{edit, example, seed_script, stage_counts, tool, Run};

fn ok(run: Run) -> Run {
    run.assert_ok();
    run
}

fn digests(registry: &testbed::Registry, repo: &str, tags: &[&str]) -> Vec<Option<String>> {
    tags.iter()
        .map(|t| registry.manifest_digest(repo, t).unwrap())
        .collect()
}

#[test]
fn a_feature_branch_reads_the_default_branch_cache_and_writes_only_its_own() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let manifest = example("service", &tools, &registry);
    edit(
        &manifest,
        "compile = \"compile\"",
        "compile = \"compile-{branch}\"",
    );
    edit(&manifest, "runtime = \"dev\"", "runtime = \"dev-{branch}\"");
    let manifest = manifest.to_str().unwrap();

    let main = tools.engine().unwrap();
    ok(tool(
        &tools.cli28,
        &main,
        &[
            "build",
            "--manifest-path",
            manifest,
            "--push",
            "--branch",
            "main",
        ],
    ));
    main.stop();
    let published = ["compile-main", "dev-main", "0.3.1", "latest"];
    let before = digests(&registry, "acme/service", &published);
    assert!(before.iter().all(Option::is_some), "{before:?}");

    // A pull request's first build, on a fresh agent.
    let agent = tools.engine().unwrap();
    let run = ok(tool(
        &tools.cli28,
        &agent,
        &[
            "build",
            "--manifest-path",
            manifest,
            "--push-cache-only",
            "--branch",
            "feature/login",
            "--message-format",
            "json",
        ],
    ));
    for (stage, steps, cached) in stage_counts(&run) {
        assert!(
            steps > 0 && cached == steps,
            "stage {stage}: {cached}/{steps} from the default branch's cache\n{}",
            run.stderr
        );
    }
    // The pull request's run pushes no final tag, and so records no build: one marker, main's.
    let (tags, markers) = support::tags_and_markers(&registry, "acme/service");
    assert_eq!(markers, 1);
    assert_eq!(
        tags,
        [
            "0.3.1",
            "compile-feature-login",
            "compile-main",
            "dev-feature-login",
            "dev-main",
            "latest"
        ]
    );
    assert_eq!(
        digests(&registry, "acme/service", &published),
        before,
        "the default branch's tags kept their digests"
    );
}

#[test]
fn an_unchanged_rebuild_stores_far_less_than_the_seed_script_and_a_change_rebuilds_exactly_its_stages(
) {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let manifest = example("heavy", &tools, &registry);
    let context = manifest.parent().unwrap().to_path_buf();
    let path = manifest.to_str().unwrap();
    // A smaller toolchain than the benchmark's keeps the test quick; the ratio is the same.
    let size = ["--build-arg", "TOOLCHAIN_MB=24", "--build-arg", "DEPS_MB=8"];
    // `--rebuild`: this test is about the cache on the way through a build, not about finding the
    // build in the registry (see `a_fresh_agent_finds_...`).
    let build = |agent: &testbed::Engine, json: bool| {
        let mut args = vec!["build", "--manifest-path", path, "--push", "--rebuild"];
        args.extend(size);
        if json {
            args.extend(["--message-format", "json"]);
        }
        ok(tool(&tools.cli20, agent, &args))
    };
    let first = tools.engine().unwrap();
    build(&first, false);
    first.stop();

    // Nothing changed: our agent against the seed script's, both fresh.
    let ours = tools.engine().unwrap();
    let run = build(&ours, true);
    for (stage, steps, cached) in stage_counts(&run) {
        assert_eq!(cached, steps, "stage {stage} fully cached:\n{}", run.stderr);
    }
    let seed = tools.engine().unwrap();
    let image = |tag: &str| format!("{}/acme/heavy:{tag}", registry.addr());
    let seed_stages = [
        ("compile", image("seed-compile")),
        ("runtime", image("seed-runtime")),
    ];
    seed_script(
        &tools.cli20,
        &seed,
        &context,
        &seed_stages,
        &["TOOLCHAIN_MB=24", "DEPS_MB=8"],
    );
    // The script's second run is the one to compare: its first filled the seed tags.
    seed.stop();
    let seed = tools.engine().unwrap();
    seed_script(
        &tools.cli20,
        &seed,
        &context,
        &seed_stages,
        &["TOOLCHAIN_MB=24", "DEPS_MB=8"],
    );
    let (our_bytes, seed_bytes) = (ours.disk_usage(), seed.disk_usage());
    eprintln!("fresh agent, nothing changed: this tool stored {our_bytes} bytes, the seed script {seed_bytes}");
    assert!(
        our_bytes * 3 < seed_bytes,
        "ours {our_bytes} bytes, the seed script's {seed_bytes}"
    );
    ours.stop();
    seed.stop();

    // One source file changed: the compile stage's last steps and the runtime run again, the
    // toolchain does not, and both cache tags are pushed anew.
    let before = digests(&registry, "acme/heavy", &["compile", "runtime"]);
    edit(
        &context.join("src/main.rs"),
        "hello from",
        "hello again from",
    );
    let changed = tools.engine().unwrap();
    let run = build(&changed, true);
    let counts = stage_counts(&run);
    let get = |stage: &str| {
        counts
            .iter()
            .find(|c| c.0 == stage)
            .cloned()
            .unwrap_or_else(|| panic!("{stage}: {counts:?}"))
    };
    assert_eq!(get("toolchain").2, get("toolchain").1, "{counts:?}");
    assert_eq!(get("base").2, get("base").1, "{counts:?}");
    let compile = get("compile");
    assert_eq!(
        compile.1 - compile.2,
        2,
        "`COPY src` and the RUN after it ran again: {counts:?}"
    );
    assert_eq!(
        get("runtime").2,
        get("runtime").1 - 1,
        "only `COPY --from=compile` ran again: {counts:?}"
    );
    let after = digests(&registry, "acme/heavy", &["compile", "runtime"]);
    assert!(
        before
            .iter()
            .zip(&after)
            .all(|(b, a)| a.is_some() && a != b),
        "both cache tags pushed anew: {before:?} {after:?}"
    );
    changed.stop();

    // And the next fresh agent gets all of it from the cache.
    let next = tools.engine().unwrap();
    let run = build(&next, true);
    for (stage, steps, cached) in stage_counts(&run) {
        assert_eq!(
            cached, steps,
            "stage {stage} after the change:\n{}",
            run.stderr
        );
    }
}

/// Where the `reason` event of the build of `stage` is among the run's events. The events'
/// order is the scheduler's: steps it starts in one pass are all announced before any end is.
fn build_event(run: &Run, reason: &str, stage: &str) -> usize {
    support::events(run)
        .iter()
        .position(|e| e["reason"] == reason && e["kind"] == "build" && e["stage"] == stage)
        .unwrap_or_else(|| panic!("no {reason} of the build of `{stage}`:\n{}", run.stdout))
}

#[test]
fn independent_stages_build_at_once_and_only_the_changed_one_is_pushed_again() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let manifest = example("five-stage", &tools, &registry);
    let path = manifest.to_str().unwrap();
    let args = [
        "build",
        "--manifest-path",
        path,
        "--push",
        "--jobs",
        "4",
        "--message-format",
        "json",
    ];
    let agent = tools.engine().unwrap();
    let run = ok(tool(&tools.cli28, &agent, &args));
    // The registry held no cache image, so no stage build could be skipped: with four slots
    // for the four builds, each started while the others went on (the final build included:
    // they did not wait for it to end).
    for (one, other) in [
        ("compile-a", "compile-b"),
        ("compile-b", "compile-a"),
        ("compile-a", "runtime"),
        ("compile-b", "runtime"),
    ] {
        assert!(
            build_event(&run, "step-started", one) < build_event(&run, "step-finished", other),
            "the build of {one} started before the build of {other} ended\n{}",
            run.stderr
        );
    }
    agent.stop();

    let tags = ["base", "compile-a", "compile-b", "runtime", "latest"];
    let before = digests(&registry, "acme/five-stage", &tags);
    edit(
        &manifest.with_file_name("a").join("source.txt"),
        "part a",
        "part a, changed",
    );
    let agent = tools.engine().unwrap();
    let run = ok(tool(&tools.cli28, &agent, &args));
    let after = digests(&registry, "acme/five-stage", &tags);
    let changed: Vec<&str> = tags
        .iter()
        .zip(before.iter().zip(&after))
        .filter(|(_, (b, a))| b != a)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(
        changed,
        ["compile-a", "runtime", "latest"],
        "only what the change reaches is pushed anew\n{}",
        run.stderr
    );
}

#[test]
fn registry_cache_on_the_modern_engine_and_refused_before_any_work_on_the_classic_one() {
    let Some(tools) = testbed::require_modern() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let manifest = example("five-stage", &tools, &registry);
    edit(
        &manifest,
        "network = \"none\"",
        "network = \"none\"\ncache = \"registry\"\nprovenance = false",
    );
    let path = manifest.to_str().unwrap();
    let args = [
        "build",
        "-v",
        "--manifest-path",
        path,
        "--push",
        "--message-format",
        "json",
    ];

    let classic = tools.engine().unwrap();
    let refused = tool(&tools.cli28, &classic, &args);
    assert_eq!(refused.output.status.code(), Some(3), "{}", refused.stderr);
    assert!(refused.stderr.contains("the builder cannot export a registry cache: it is the docker driver without the containerd image store"), "{}", refused.stderr);
    assert!(
        !support::events(&refused)
            .iter()
            .any(|e| e["reason"] == "step-started"),
        "no work before the refusal"
    );
    classic.stop();

    let first = tools.modern_engine().unwrap();
    let ok_run = ok(tool(&tools.cli28, &first, &args));
    first.stop();
    let mut tags = registry.tags("acme/five-stage").unwrap();
    tags.sort();
    let marker = tags.iter().position(|t| t.starts_with("inputs-"));
    let marker = tags.remove(marker.expect("the marker tag"));
    assert_eq!(tags, ["buildcache", "latest"]);
    // `buildx imagetools create` wraps a single manifest in an index: the marker holds the final
    // image, which the fourth agent's check below relies on.
    assert!(registry
        .manifest_digest("acme/five-stage", &marker)
        .unwrap()
        .is_some());

    let cold = stage_counts(&ok_run);
    let latest = registry
        .manifest_digest("acme/five-stage", "latest")
        .unwrap();
    assert!(latest.is_some());

    // Through a build (`--rebuild`), on fresh agents, every step comes from the registry cache.
    // BuildKit's plain progress may print a hit whose layers are downloaded as `DONE` (dockerd
    // 26, the step varies from run to run), so the evidence is the tool's own build command
    // with `--progress=rawjson`, read by the tool's parser (see `progress`).
    let mut rebuild = args.to_vec();
    rebuild.push("--rebuild");
    let before = stored_blobs(&registry);
    let second = tools.modern_engine().unwrap();
    let build = final_build(&tools, &second, &rebuild);
    let progress = build.run_with_rawjson(&tools, &second);
    second.stop();
    assert_eq!(
        progress.cached(),
        progress.step_count(),
        "steps that ran: {:?}",
        progress.ran()
    );
    let mut steps: BTreeMap<String, u64> = BTreeMap::new();
    for step in progress.steps() {
        *steps
            .entry(step.stage_or("runtime").to_string())
            .or_default() += 1;
    }
    let cold_steps: BTreeMap<String, u64> = cold.iter().map(|(s, n, _)| (s.clone(), *n)).collect();
    assert_eq!(steps, cold_steps, "the same steps as the cold build's");
    assert_eq!(
        registry
            .manifest_digest("acme/five-stage", "latest")
            .unwrap(),
        latest,
        "the same image"
    );
    no_new_layer(&registry, &before, "the rebuild from the registry cache");

    // The tool itself through the same build: the same image, and no layer stored anew.
    let third = tools.modern_engine().unwrap();
    let run = ok(tool(&tools.cli28, &third, &rebuild));
    third.stop();
    assert!(
        kinds_done(&run).contains(&"build".to_string()),
        "{}",
        run.stderr
    );
    // The tool's builds read rawjson on this CLI: its own counts hold the same evidence.
    assert!(build.reads_rawjson(), "{:?}", build.args);
    for (stage, steps, cached) in stage_counts(&run) {
        assert!(
            steps > 0 && cached == steps,
            "stage {stage}: {cached}/{steps} from the registry cache\n{}",
            run.stderr
        );
    }
    assert_eq!(
        registry
            .manifest_digest("acme/five-stage", "latest")
            .unwrap(),
        latest
    );
    no_new_layer(&registry, &before, "the tool's rebuild");

    // Without `--rebuild` the marker, copied in the registry, spares the build.
    let fourth = tools.modern_engine().unwrap();
    let run = ok(tool(&tools.cli28, &fourth, &args));
    assert_eq!(kinds_done(&run), Vec::<String>::new(), "{}", run.stderr);
    assert!(found_fresh(&run, "five-stage"), "{}", run.stderr);
    assert_eq!(
        registry
            .manifest_digest("acme/five-stage", "latest")
            .unwrap(),
        latest
    );
}

/// The `step-finished` event of the registry cache's export-only build.
fn export_build(run: &Run) -> serde_json::Value {
    let events = support::events(run);
    let plan = events
        .iter()
        .rfind(|e| e["reason"] == "plan")
        .expect("a plan event");
    let id = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "build" && s["detail"]["export_only"].is_string())
        .expect("an export-only build in the plan")["id"]
        .clone();
    events
        .into_iter()
        .find(|e| e["reason"] == "step-finished" && e["id"] == id)
        .expect("the export-only build's end")
}

#[test]
fn the_registry_cache_is_exported_only_when_a_step_ran() {
    let Some(tools) = testbed::require_modern() else {
        return;
    };
    let registry = tools.registry().unwrap();
    // `heavy`: its steps write random bytes, so a step that ran again is a new layer.
    let manifest = example("heavy", &tools, &registry);
    edit(
        &manifest,
        "network = \"none\"",
        "network = \"none\"\ncache = \"registry\"\nprovenance = false",
    );
    let path = manifest.to_str().unwrap();
    let args = [
        "build",
        "--manifest-path",
        path,
        "--push",
        "--message-format",
        "json",
    ];
    let mut rebuild = args.to_vec();
    rebuild.push("--rebuild");
    let cache = || {
        registry
            .manifest_digest("acme/heavy", "buildcache")
            .unwrap()
    };

    let cold = tools.modern_engine().unwrap();
    let run = ok(tool(&tools.cli28, &cold, &args));
    cold.stop();
    assert_eq!(export_build(&run)["outcome"], "done", "{}", run.stderr);
    let first_cache = cache().expect("the registry cache");

    // Through a build on a fresh agent, nothing new: the registry receives no blob at all (an
    // export would store a new cache manifest and config for the same records).
    let before = stored_blobs(&registry);
    let unchanged = tools.modern_engine().unwrap();
    let run = ok(tool(&tools.cli28, &unchanged, &rebuild));
    unchanged.stop();
    assert!(
        kinds_done(&run).contains(&"build".to_string()),
        "{}",
        run.stderr
    );
    let export = export_build(&run);
    assert_eq!(export["outcome"], "skipped", "{export}\n{}", run.stderr);
    let after = stored_blobs(&registry);
    let new: Vec<&String> = after.keys().filter(|d| !before.contains_key(*d)).collect();
    assert!(new.is_empty(), "new blobs: {new:?}\n{}", run.stderr);
    assert_eq!(
        cache(),
        Some(first_cache.clone()),
        "the cache left as it was"
    );

    // An edit on a fresh agent: the export runs, and stores the new layer's records.
    let main = manifest.parent().unwrap().join("src/main.rs");
    let text = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, format!("{text}// an edit\n")).unwrap();
    let before = stored_blobs(&registry);
    let changed = tools.modern_engine().unwrap();
    let run = ok(tool(&tools.cli28, &changed, &args));
    changed.stop();
    assert_eq!(export_build(&run)["outcome"], "done", "{}", run.stderr);
    let second_cache = cache().expect("the registry cache");
    assert_ne!(second_cache, first_cache, "a new cache manifest");
    let new = stored_blobs(&registry)
        .into_iter()
        .filter(|(d, _)| !before.contains_key(d))
        .filter(|(_, path)| {
            let bytes = std::fs::read(path).unwrap();
            serde_json::from_slice::<serde_json::Value>(&bytes).is_err()
        })
        .count();
    assert!(new > 0, "the edit's layers are stored");

    // The next fresh agent finds every step of the edited build in that cache.
    let next = tools.modern_engine().unwrap();
    let run = ok(tool(&tools.cli28, &next, &rebuild));
    next.stop();
    for (stage, steps, cached) in stage_counts(&run) {
        assert_eq!(
            cached, steps,
            "stage {stage}: {cached}/{steps} from the registry cache\n{}",
            run.stderr
        );
    }
    assert_eq!(export_build(&run)["outcome"], "skipped", "{}", run.stderr);
    assert_eq!(cache(), Some(second_cache));
}

/// A build step of the tool's plan, as its `plan` event gives it.
struct PlannedBuild {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// The final build of the tool's plan for `args` (from a `--dry-run`, which needs no engine).
fn final_build(tools: &testbed::Tools, agent: &testbed::Engine, args: &[&str]) -> PlannedBuild {
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let run = ok(tool(&tools.cli28, agent, &dry));
    let plan = support::events(&run)
        .into_iter()
        .find(|e| e["reason"] == "plan")
        .expect("a plan event");
    let build = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "build" && s["detail"]["final"] == true)
        .expect("a final build")
        .clone();
    let text = |v: &serde_json::Value| v.as_str().unwrap().to_string();
    PlannedBuild {
        program: text(&build["program"]),
        args: build["args"].as_array().unwrap().iter().map(text).collect(),
        env: build["env"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), text(v)))
            .collect(),
    }
}

impl PlannedBuild {
    /// Whether it prints BuildKit's rawjson progress.
    fn reads_rawjson(&self) -> bool {
        let progress: Vec<&String> = self
            .args
            .iter()
            .filter(|a| a.starts_with("--progress="))
            .collect();
        assert_eq!(progress.len(), 1, "one progress flag: {:?}", self.args);
        progress[0] == "--progress=rawjson"
    }

    /// Runs it on `agent` with `--progress=rawjson`, and reads its progress (stderr) with the
    /// tool's parser.
    fn run_with_rawjson(&self, tools: &testbed::Tools, agent: &testbed::Engine) -> BuildProgress {
        assert_eq!(Path::new(&self.program), tools.cli28.as_path());
        let args: Vec<&str> = self
            .args
            .iter()
            .map(|a| {
                if a.starts_with("--progress=") {
                    "--progress=rawjson"
                } else {
                    a.as_str()
                }
            })
            .collect();
        let out = support::docker(&tools.cli28, agent, &args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{} {args:?}:\n{stderr}", self.program);
        let mut progress = BuildProgress::default();
        stderr.lines().for_each(|l| progress.feed(l));
        assert_eq!(progress.format(), Some(Format::RawJson), "{stderr}");
        assert!(progress.step_count() > 0, "{stderr}");
        progress
    }
}

/// The blobs in the registry's storage, by digest, with their paths.
fn stored_blobs(registry: &testbed::Registry) -> BTreeMap<String, std::path::PathBuf> {
    let root = registry.dir().join("data/docker/registry/v2/blobs/sha256");
    let mut blobs = BTreeMap::new();
    for prefix in std::fs::read_dir(&root).unwrap() {
        for blob in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let blob = blob.unwrap();
            let digest = format!("sha256:{}", blob.file_name().to_string_lossy());
            blobs.insert(digest, blob.path().join("data"));
        }
    }
    blobs
}

/// Asserts that every blob the registry stored since `before` is a JSON document (an image or
/// cache manifest or config), none a layer (a tarball, gzip or zstd).
fn no_new_layer(
    registry: &testbed::Registry,
    before: &BTreeMap<String, std::path::PathBuf>,
    what: &str,
) {
    let mut new = 0;
    for (digest, path) in stored_blobs(registry) {
        if before.contains_key(&digest) {
            continue;
        }
        new += 1;
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|v| v.is_object()),
            "{what} stored a new blob `{digest}` that is no JSON document: {} bytes starting {:02x?}",
            bytes.len(),
            &bytes[..bytes.len().min(4)]
        );
    }
    eprintln!("{what}: {new} new blobs, all JSON documents");
}

/// Whether the run's registry check found `package`'s very build in the registry.
fn found_fresh(run: &Run, package: &str) -> bool {
    support::events(run)
        .iter()
        .any(|e| e["reason"] == "registry-check" && e["package"] == package && e["fresh"] == true)
}

/// Whether the run asked the registry for a build of its inputs at all.
fn checked(run: &Run) -> bool {
    support::events(run)
        .iter()
        .any(|e| e["reason"] == "registry-check")
}

/// The kinds of the steps that did something (`outcome: done`) other than asking the registry,
/// in the order they ended.
fn kinds_done(run: &Run) -> Vec<String> {
    support::events(run)
        .iter()
        .filter(|e| {
            e["reason"] == "step-finished" && e["outcome"] == "done" && e["kind"] != "inspect"
        })
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_fresh_agent_finds_the_same_build_in_the_registry_and_does_nothing() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let manifest = example("service", &tools, &registry);
    let context = manifest.parent().unwrap().to_path_buf();
    std::fs::write(context.join(".dockerignore"), "notes\n").unwrap();
    std::fs::create_dir(context.join("notes")).unwrap();
    std::fs::write(context.join("notes/todo.txt"), "one").unwrap();
    let path = manifest.to_str().unwrap();
    let args = [
        "build",
        "-v",
        "--manifest-path",
        path,
        "--push",
        "--message-format",
        "json",
    ];
    let finals = ["0.3.1", "latest"];
    let markers = || -> Vec<String> {
        let mut tags = registry.tags("acme/service").unwrap();
        tags.retain(|t| t.starts_with("inputs-"));
        tags
    };

    let first = tools.engine().unwrap();
    let run = ok(tool(&tools.cli20, &first, &args));
    assert_eq!(
        kinds_done(&run).last().map(String::as_str),
        Some("mark"),
        "the marker is pushed last\n{}",
        run.stderr
    );
    first.stop();
    let marked = markers();
    assert_eq!(marked.len(), 1, "{marked:?}");
    let before = digests(&registry, "acme/service", &finals);
    assert_eq!(
        registry
            .manifest_digest("acme/service", &marked[0])
            .unwrap(),
        before[0],
        "the marker holds the final image"
    );

    // A fresh agent, nothing changed but a file the build does not see: nothing is built,
    // pulled or pushed, and the agent holds no image.
    std::fs::write(context.join("notes/todo.txt"), "two").unwrap();
    let second = tools.engine().unwrap();
    let run = ok(tool(&tools.cli20, &second, &args));
    assert_eq!(kinds_done(&run), Vec::<String>::new(), "{}", run.stderr);
    assert!(found_fresh(&run, "service"), "{}", run.stderr);
    assert!(
        run.stderr.contains("the registry holds this build"),
        "{}",
        run.stderr
    );
    // Said once, and no push announced that does not happen.
    assert!(!run.stderr.contains("Pushing"), "{}", run.stderr);
    let events = support::events(&run);
    let finished = events.last().unwrap();
    assert_eq!(finished["reason"], "build-finished");
    assert_eq!(finished["fresh"], serde_json::json!(["service"]));
    assert_eq!(finished["stages"], serde_json::json!([]));
    let images = support::docker(&tools.cli20, &second, &["image", "ls", "-q"])
        .output()
        .unwrap();
    assert!(images.stdout.is_empty(), "{images:?}");
    assert_eq!(digests(&registry, "acme/service", &finals), before);
    second.stop();

    // A final tag that moved on (another build pushed it) means building again.
    let third = tools.engine().unwrap();
    let moved = support::docker(
        &tools.cli20,
        &third,
        &["pull", &format!("{}/acme/service:compile", registry.addr())],
    )
    .status()
    .unwrap();
    assert!(moved.success());
    for args in [
        vec![
            "tag".to_string(),
            format!("{}/acme/service:compile", registry.addr()),
            format!("{}/acme/service:latest", registry.addr()),
        ],
        vec![
            "push".to_string(),
            format!("{}/acme/service:latest", registry.addr()),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert!(support::docker(&tools.cli20, &third, &args)
            .status()
            .unwrap()
            .success());
    }
    third.stop();
    let agent = tools.engine().unwrap();
    let run = ok(tool(&tools.cli20, &agent, &args));
    assert!(
        kinds_done(&run).contains(&"build".to_string()),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("holds another image"), "{}", run.stderr);
    agent.stop();

    // A source file the build reads: a build, a new marker.
    edit(&context.join("src/main.rs"), "hello", "hello again");
    let agent = tools.engine().unwrap();
    let run = ok(tool(&tools.cli20, &agent, &args));
    assert!(
        run.stderr
            .contains("no build of these inputs in the registry yet"),
        "{}",
        run.stderr
    );
    let compile = stage_counts(&run)
        .into_iter()
        .find(|c| c.0 == "compile")
        .unwrap();
    assert_eq!(
        compile.1 - compile.2,
        2,
        "`COPY src` and its RUN: {compile:?}"
    );
    assert_eq!(markers().len(), 2);
    assert_ne!(digests(&registry, "acme/service", &finals), before);
    agent.stop();

    // `--rebuild` builds all the same.
    let agent = tools.engine().unwrap();
    let mut rebuild = args.to_vec();
    rebuild.push("--rebuild");
    let run = ok(tool(&tools.cli20, &agent, &rebuild));
    assert!(!checked(&run), "{}", run.stderr);
    assert!(!stage_counts(&run).is_empty());
}

#[test]
fn examples_are_valid() {
    // The examples' tables check against their Dockerfiles (no engine needed).
    for name in ["service", "five-stage", "heavy", "rust-service"] {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name)
            .join("Cargo.toml");
        let packages = xtask_docker::workspace::load(
            &xtask_docker::SelectArgs::default().manifest_path(manifest),
        )
        .unwrap();
        assert_eq!(packages.len(), 1);
    }
}

#[test]
fn a_best_effort_registry_cache_export_is_checked_afterwards() {
    let Some(tools) = testbed::require_modern() else {
        return;
    };
    let good = tools.registry().unwrap();
    let locked = tools.registry_with_auth("ci", "hunter2").unwrap();
    for (registry, written) in [(&good, true), (&locked, false)] {
        let manifest = example("five-stage", &tools, registry);
        edit(
            &manifest,
            "network = \"none\"",
            "network = \"none\"\ncache = \"registry\"\nprovenance = false",
        );
        let path = manifest.to_str().unwrap();
        let agent = tools.modern_engine().unwrap();
        let run = tool(
            &tools.cli28,
            &agent,
            &["build", "--manifest-path", path, "--push-cache-only"],
        );
        run.assert_ok();
        let cache = format!("{}/acme/five-stage:buildcache", registry.addr());
        if written {
            assert!(
                !run.stderr.contains("was not written")
                    && !run.stderr.contains("could not be checked"),
                "{}",
                run.stderr
            );
            assert!(registry
                .tags("acme/five-stage")
                .unwrap()
                .contains(&"buildcache".to_string()));
        } else {
            let warned = run.stderr.contains(&format!(
                "warning: the registry cache `{cache}` was not written"
            )) || run.stderr.contains(&format!(
                "warning: the registry cache `{cache}` could not be checked"
            ));
            assert!(warned, "{}", run.stderr);
            // Without best effort, the same export fails the run and names the registry.
            let run = tool(
                &tools.cli28,
                &agent,
                &["build", "--manifest-path", path, "--push"],
            );
            assert_eq!(run.output.status.code(), Some(1), "{}", run.stderr);
            assert!(
                run.stderr
                    .contains(&format!("the registry of `{cache}` wants credentials")),
                "{}",
                run.stderr
            );
        }
    }
}

/// Three changes in a row, each built on a fresh agent: each rebuilds only what it changed. On
/// dockerd 20.10 the third re-ran the toolchain and the whole compile stage until stage images
/// were rebuilt with their old cache image pulled first (moby/buildkit#1981). (With a registry
/// cache on dockerd 26, BuildKit prints a step whose cached result it downloads without
/// `CACHED`, so counts cannot tell there; see the README's known limits.)
#[test]
fn consecutive_changes_rebuild_only_what_changed_with_inline_cache() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let manifest = example("heavy", &tools, &registry);
    let path = manifest.to_str().unwrap();
    let args = [
        "build",
        "--manifest-path",
        path,
        "--push",
        "--message-format",
        "json",
        "--build-arg",
        "TOOLCHAIN_MB=16",
        "--build-arg",
        "DEPS_MB=8",
    ];
    let first = tools.engine().unwrap();
    ok(tool(&tools.cli28, &first, &args));
    first.stop();
    // `base` has a cache tag of its own, written once by the cold build: the current rule
    // leaves it alone while `base` does not change, so its inline cache keeps every layer (a
    // re-pushed image's would lose some on this engine: moby/buildkit#2274), and every round
    // finds all of `base` in the registry.
    let base = digests(&registry, "acme/heavy", &["base"]);
    assert!(base[0].is_some());
    for round in 1..=3 {
        edit(
            &manifest.with_file_name("src").join("main.rs"),
            "hello",
            &format!("hello {round}"),
        );
        let next = tools.engine().unwrap();
        let run = ok(tool(&tools.cli28, &next, &args));
        for (stage, steps, cached) in stage_counts(&run) {
            // `COPY src` and the RUN after it; the runtime's copy of the binary.
            let ran = match stage.as_str() {
                "compile" => 2,
                "runtime" => 1,
                _ => 0,
            };
            assert_eq!(
                cached,
                steps - ran,
                "round {round}, stage {stage}: {cached}/{steps} cached\n{}",
                run.stderr
            );
        }
        // The final build's `COPY src` ran, so the `compile` stage build could not be skipped:
        // the pull of its old image started then, before the final build (whose last compile
        // step takes 1 s) ended. The events tell it by their order: a build's output reaches
        // the scheduler before its end does.
        let events = support::events(&run);
        let position = |reason: &str, kind: &str, stage: &str| {
            events
                .iter()
                .position(|e| e["reason"] == reason && e["kind"] == kind && e["stage"] == stage)
                .unwrap_or_else(|| panic!("no {reason} of a {kind} of {stage}\n{}", run.stderr))
        };
        assert!(
            position("step-started", "pull", "compile")
                < position("step-finished", "build", "runtime"),
            "round {round}: the pull before the compile build starts while the final build goes on\n{}",
            run.stderr
        );
        assert_eq!(
            digests(&registry, "acme/heavy", &["base"]),
            base,
            "round {round}: `base`'s cache image is left as it is"
        );
        next.stop();
    }
}

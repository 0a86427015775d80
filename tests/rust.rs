//! Real Rust, end to end: the Rust examples compiled by rustc in the testbed's toolchain image
//! (served by each test's registry, pinned by digest through `--build-arg`), on fresh agents, from
//! fresh `git clone`s of a committed copy (so every file has the clone's time, as on CI), with
//! vendored dependencies and `network = "none"`. Each scenario asserts, from the tool's JSON
//! events, which steps ran and which came from the registry.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testbed::{Engine, Registry, ServedImages, Tools};

use support::{edit, stage_counts, tool, Run};

/// An example copied, vendored and committed as a git repository of its own.
struct Project {
    repo: PathBuf,
    served: ServedImages,
    clones: usize,
}

impl Project {
    /// `examples/NAME` pointed at `registry`, its dependencies vendored, committed.
    fn new(name: &str, tools: &Tools, registry: &Registry) -> Project {
        let images = tools.rust_images().unwrap();
        let served = images.serve(registry).unwrap();
        let manifest = support::example(name, tools, registry);
        let repo = manifest.parent().unwrap().to_path_buf();
        std::fs::remove_file(repo.join("busybox")).unwrap();
        testbed::rust::vendor(&repo).unwrap();
        std::fs::write(repo.join(".gitignore"), "target\n").unwrap();
        testbed::rust::commit(&repo, "first").unwrap();
        Project {
            repo,
            served,
            clones: 0,
        }
    }

    /// Commits what changed in the working copy.
    fn commit(&self, message: &str) {
        testbed::rust::commit(&self.repo, message).unwrap();
    }

    /// A fresh clone of the last commit, as a CI agent checks it out.
    fn checkout(&mut self) -> PathBuf {
        self.clones += 1;
        let to = self
            .repo
            .with_file_name(format!("{}-clone-{}", self.name(), self.clones));
        testbed::rust::fresh_clone(&self.repo, &to).unwrap();
        to
    }

    fn name(&self) -> String {
        self.repo
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// `docker build --push` of a fresh clone on `engine` with `cli`; the run and its time.
    fn build(&mut self, cli: &Path, engine: &Engine, extra: &[&str]) -> (Run, Duration) {
        let clone = self.checkout();
        let manifest = clone.join("Cargo.toml");
        let [rust, runtime] = self.served.build_args();
        let mut args = vec![
            "build",
            "-v",
            "--manifest-path",
            manifest.to_str().unwrap(),
            "--push",
            "--message-format",
            "json",
            "--build-arg",
            &rust,
            "--build-arg",
            &runtime,
        ];
        args.extend(extra);
        let start = Instant::now();
        let run = tool(cli, engine, &args);
        let took = start.elapsed();
        run.assert_ok();
        std::fs::remove_dir_all(&clone).unwrap();
        (run, took)
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.repo);
    }
}

/// `(package, stage) -> (steps that ran, steps from the cache)` of the run's builds, from its
/// `build-finished` event.
fn counts(run: &Run) -> BTreeMap<(String, String), (u64, u64)> {
    // Panics when nothing was built: every caller looks at a build.
    stage_counts(run);
    let events = support::events(run);
    let finished = events
        .iter()
        .find(|e| e["reason"] == "build-finished")
        .expect("a build-finished event");
    finished["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let (steps, cached) = (s["steps"].as_u64().unwrap(), s["cached"].as_u64().unwrap());
            let key = (
                s["package"].as_str().unwrap().to_string(),
                s["stage"].as_str().unwrap().to_string(),
            );
            (key, (steps - cached, cached))
        })
        .collect()
}

/// `(ran, cached)` of one stage.
fn stage(
    counts: &BTreeMap<(String, String), (u64, u64)>,
    package: &str,
    stage: &str,
) -> (u64, u64) {
    *counts
        .get(&(package.to_string(), stage.to_string()))
        .unwrap_or_else(|| panic!("no stage `{package}/{stage}` in {counts:?}"))
}

/// Which crates cargo compiled in the run's builds (`-v` shows the build output).
fn compiled(run: &Run) -> Vec<String> {
    let mut crates: Vec<String> = run
        .stderr
        .lines()
        .filter_map(|l| l.split_once("Compiling ")?.1.split_whitespace().next())
        .map(str::to_string)
        .collect();
    crates.sort();
    crates.dedup();
    crates
}

/// What the workspace's `service` image (`acme/<service>:latest` in `registry`) prints for `arg`.
fn service_answer(
    cli: &Path,
    engine: &Engine,
    registry: &testbed::Registry,
    service: &str,
    arg: &str,
) -> String {
    let image = format!("{}/acme/{service}:latest", registry.addr());
    run_image(cli, engine, &image, &[arg])
}

/// `docker run --rm --network none IMAGE ARGS` on `engine`; its stdout.
fn run_image(cli: &Path, engine: &Engine, image: &str, args: &[&str]) -> String {
    let mut all = vec!["run", "--rm", "--network", "none", image];
    all.extend(args);
    let out = support::docker(cli, engine, &all).output().unwrap();
    assert!(
        out.status.success(),
        "docker {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The four scenarios on the Rust service, each on a fresh agent from a fresh clone: cold; the
/// next commit, which changes no layer; an edit in the main crate; a bump of one dependency.
fn rust_service(modern: bool) {
    let found = if modern {
        testbed::require_modern().and(testbed::require_rust())
    } else {
        testbed::require_rust()
    };
    let Some((tools, _)) = found else {
        return;
    };
    let registry = tools.registry().unwrap();
    let mut project = Project::new("rust-service", &tools, &registry);
    let (cli, flavor) = if modern {
        // buildx's rawjson progress tells a hit whose layers download from a step that ran.
        edit(
            &project.repo.join("Cargo.toml"),
            "network = \"none\"",
            "network = \"none\"\ncache = \"registry\"\nprovenance = false",
        );
        project.commit("registry cache");
        (tools.cli28.clone(), "modern")
    } else {
        (tools.cli20.clone(), "classic")
    };
    let agent = || {
        if modern {
            tools.modern_engine().unwrap()
        } else {
            tools.engine().unwrap()
        }
    };
    let p = "rust-service";
    let image = format!("{}/acme/rust-service:latest", registry.addr());

    // Cold: every step runs, cargo compiles every dependency in `deps` and the service in
    // `compile`.
    let served_bytes = registry.storage_bytes();
    let engine = agent();
    let (cold, cold_time) = project.build(&cli, &engine, &[]);
    let cold_pushed = registry.storage_bytes() - served_bytes;
    let c = counts(&cold);
    for ((package, stage), (_, cached)) in &c {
        assert_eq!(*cached, 0, "{package}/{stage} on an empty registry: {c:?}");
    }
    assert_eq!(
        stage(&c, p, "deps").0,
        3,
        "COPY vendor, COPY the recipe, cook: {c:?}"
    );
    assert_eq!(
        stage(&c, p, "compile").0,
        3,
        "COPY the manifests, COPY src, cargo build: {c:?}"
    );
    let built = compiled(&cold);
    for krate in [
        "serde",
        "tiny_http",
        "tracing-subscriber",
        "clap",
        "rust-service",
    ] {
        assert!(built.contains(&krate.to_string()), "{krate} in {built:?}");
    }
    drop(engine);

    // The next commit changes no file the image is made of, but the final image's OCI labels
    // (`revision`, `created`) are the commit's, so it is another image: every step that costs
    // comes from the registry, and cargo compiles nothing. (The planner may run: it has no
    // cache tag, and its second is no cost. A `FROM` the agent downloaded counts as from the
    // cache when a later step of its stage is.)
    // (`*.md` is in its .dockerignore.)
    std::fs::write(project.repo.join("NOTES.md"), "release notes\n").unwrap();
    project.commit("notes");
    let engine = agent();
    let (next, next_time) = project.build(&cli, &engine, &[]);
    drop(engine);
    let c = counts(&next);
    assert_eq!(stage(&c, p, "deps"), (0, 3), "{c:?}");
    assert_eq!(stage(&c, p, "compile"), (0, 3), "{c:?}");
    assert_eq!(stage(&c, p, "runtime"), (0, 2), "its FROM and COPY: {c:?}");
    assert_eq!(compiled(&next), Vec::<String>::new(), "{}", next.stderr);

    // An edit in the main crate: the planner runs (its `COPY . .` changed) and writes the same
    // recipe, so the dependency layer comes from the registry and `cargo chef cook` does not
    // run; cargo compiles the service alone (no dependency: `compile` copies no vendored
    // source, whose fresh file times would rerun their build scripts).
    edit(
        &project.repo.join("src/config.rs"),
        "\"hello\"",
        "\"hello again\"",
    );
    project.commit("edit");
    let engine = agent();
    let before = registry.storage_bytes();
    let (edited, edit_time) = project.build(&cli, &engine, &[]);
    let edit_pushed = registry.storage_bytes() - before;
    let edit_pulled = engine.disk_usage();
    drop(engine);
    let c = counts(&edited);
    assert_eq!(
        stage(&c, p, "deps"),
        (0, 3),
        "cook came from the registry: {c:?}"
    );
    assert_eq!(stage(&c, p, "planner"), (2, 0), "{c:?}");
    assert_eq!(
        stage(&c, p, "compile"),
        (2, 1),
        "COPY src and cargo build ran: {c:?}"
    );
    assert_eq!(compiled(&edited), ["rust-service"], "{}", edited.stderr);

    // A bump of one dependency in Cargo.lock: its vendored sources and the recipe change, so
    // `cargo chef cook` runs again.
    let lock = project.repo.join("Cargo.lock");
    edit(
        &lock,
        "name = \"anyhow\"\nversion = \"1.0.104\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"330a5ed07fa54e4702c9d6c4174f74427fc0ef6e214bbd677ae50a5099946470\"",
        "name = \"anyhow\"\nversion = \"1.0.105\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"2cb931c189b85683d69a5cfad41d4d418671e1ac413dd209f3f2fc31e3cfd902\"",
    );
    testbed::rust::vendor(&project.repo).unwrap();
    project.commit("bump anyhow");
    let engine = agent();
    let (bumped, bump_time) = project.build(&cli, &engine, &[]);
    let c = counts(&bumped);
    assert_eq!(stage(&c, p, "deps"), (3, 0), "cook ran again: {c:?}");
    assert_eq!(stage(&c, p, "compile").0, 3, "{c:?}");
    assert!(compiled(&bumped).contains(&"anyhow".to_string()));

    // The image answers: its version, and one request over loopback inside the container.
    assert_eq!(
        run_image(&cli, &engine, &image, &["--version"]).trim(),
        "rust-service 0.1.0"
    );
    let answer = run_image(&cli, &engine, &image, &["--self-test"]);
    assert!(
        answer.contains(r#""greeting":"hello again, docker!""#),
        "{answer}"
    );
    drop(engine);
    eprintln!(
        "figures: rust-service on the {flavor} engine, fresh agents: cold {:.1} s ({} MB pushed), next commit {:.1} s, edit in src {:.1} s ({} MB pushed, the agent's data folder {} MB after it), dependency bump {:.1} s",
        cold_time.as_secs_f64(),
        cold_pushed / 1_000_000,
        next_time.as_secs_f64(),
        edit_time.as_secs_f64(),
        edit_pushed / 1_000_000,
        edit_pulled / 1_000_000,
        bump_time.as_secs_f64()
    );
}

#[test]
fn the_rust_service_on_the_classic_engine_with_inline_cache() {
    rust_service(false);
}

#[test]
fn the_rust_service_on_the_modern_engine_with_registry_cache() {
    rust_service(true);
}

/// The workspace: each service has its own image from the one Dockerfile; an edit in one
/// service's crate compiles that service and no dependency. On the modern engine with the
/// registry cache: with inline cache on dockerd 20.10 the second service's stage images lack the
/// cache records of the steps it took from the first one's build on the same agent (BuildKit
/// 0.8 exports only what the build itself produced), so its compile stage ran again on the next
/// agent; the README's "For Rust users" says so.
///
/// The two images build at once on one agent, and BuildKit merges the steps they share: a
/// build's progress may then show its own vertex of a shared step canceled and nothing else of
/// it, which counts as run (nothing says it came from a cache). So the step counts bound what
/// ran, and cargo's own `Compiling` lines say what compiled. Which shared steps come from the
/// registry after an edit is BuildKit's to decide (see below): the bench measures it.
#[test]
fn a_workspace_edit_in_one_service_compiles_it_and_both_images_answer() {
    let Some((tools, _)) = testbed::require_modern().and(testbed::require_rust()) else {
        return;
    };
    let registry = tools.registry().unwrap();
    let mut project = Project::new("rust-workspace", &tools, &registry);
    edit(
        &project.repo.join("Cargo.toml"),
        "network = \"none\"",
        "network = \"none\"\ncache = \"registry\"\nprovenance = false",
    );
    project.commit("registry cache");
    let cli = tools.cli28.clone();

    let engine = tools.modern_engine().unwrap();
    let (cold, cold_time) = project.build(&cli, &engine, &[]);
    // The two images share the agent's build cache: the steps they have in common (the planner,
    // `deps`, the manifests and the shared crate) run for the first and are hits for the second,
    // or run for both if BuildKit takes them at once.
    let c = counts(&cold);
    let cook_runs = stage(&c, "api", "deps").0 + stage(&c, "worker", "deps").0;
    assert!(cook_runs == 3 || cook_runs == 6, "{c:?}");
    for service in ["api", "worker"] {
        let (ran, cached) = stage(&c, service, "compile");
        assert_eq!(ran + cached, 4, "{c:?}");
        assert!(ran >= 2, "its own COPY and cargo build ran: {c:?}");
    }
    let built = compiled(&cold);
    for krate in ["serde", "serde_json", "shared", "api", "worker"] {
        assert!(built.contains(&krate.to_string()), "{krate} in {built:?}");
    }
    let job = service_answer(&cli, &engine, &registry, "api", "send");
    assert_eq!(job.trim(), r#"api: {"id":1,"task":"send"}"#);
    let done = service_answer(
        &cli,
        &engine,
        &registry,
        "worker",
        r#"{"id":7,"task":"resize"}"#,
    );
    assert_eq!(done.trim(), "worker: job 7 does resize");
    drop(engine);

    edit(
        &project.repo.join("crates/api/src/main.rs"),
        "api: {}",
        "api sends: {}",
    );
    project.commit("edit the api");
    let engine = tools.modern_engine().unwrap();
    let (edited, edit_time) = project.build(&cli, &engine, &[]);
    // The api's own crates compile, and both images are right. What else comes from the
    // registry is not asserted: it should be every dependency of both services and the
    // worker's compile stage, and is in most runs, but BuildKit's merge of the steps the two
    // builds share sometimes runs one of them again (the worker's `cargo build`; in one CI run
    // the api's `cargo chef cook`), also with `--jobs 1`. Open: see the README's "For Rust
    // users"; `cargo xtask bench --fixture rust-workspace` measures what ran.
    let c = counts(&edited);
    let (ran, cached) = stage(&c, "api", "deps");
    assert_eq!(ran + cached, 3, "{c:?}");
    let (ran, cached) = stage(&c, "api", "compile");
    assert_eq!(ran + cached, 4, "{c:?}");
    assert!(ran >= 2, "COPY crates/api, cargo build: {c:?}");
    let built = compiled(&edited);
    assert!(built.contains(&"api".to_string()), "{built:?}");
    let job = service_answer(&cli, &engine, &registry, "api", "x");
    assert_eq!(job.trim(), r#"api sends: {"id":1,"task":"x"}"#);
    let done = service_answer(
        &cli,
        &engine,
        &registry,
        "worker",
        r#"{"id":8,"task":"crop"}"#,
    );
    assert_eq!(done.trim(), "worker: job 8 does crop");
    eprintln!(
        "figures: rust-workspace on the modern engine (registry cache), fresh agents: cold {:.1} s, edit in one service {:.1} s; compiled after the edit: {built:?}; steps (ran, cached): {c:?}",
        cold_time.as_secs_f64(),
        edit_time.as_secs_f64()
    );
}

#[test]
fn the_workspace_gives_each_service_its_image_from_the_one_dockerfile() {
    // No engine needed: the tables check against the root Dockerfile.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rust-workspace");
    let packages = xtask_docker::workspace::load(
        &xtask_docker::SelectArgs::default().manifest_path(root.join("Cargo.toml")),
    )
    .unwrap();
    let names: Vec<&str> = packages.iter().map(|p| p.config.package.as_str()).collect();
    assert_eq!(names, ["api", "worker"], "`shared` has no image");
}

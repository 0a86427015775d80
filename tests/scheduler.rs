//! The executor through the real program, without an engine: a stand-in `docker` (a script this
//! file writes, passed as `$DOCKER`) answers from files, prints the BuildKit output it is given,
//! fails or hangs where told, and logs every call. These run in `cargo test` in seconds, on any
//! machine; what they prove about real engines is proven again by the end-to-end tests.
//!
//! No test waits for a duration: a stand-in that must be running when something happens says
//! so through a FIFO, which the other side blocks on.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The stand-in CLI. It answers the preflight as a Docker 28 CLI with buildx talking to an
/// engine 26 would, and:
/// - `manifest inspect ... IMAGE`: prints `registry/<IMAGE with / and : as _>` if it exists,
///   else says there is no such manifest; if the FIFO `builds/question-<that name>.ready`
///   exists, writes its pid to it (blocking until the test reads it) and sleeps until ended;
/// - `version`: likewise hangs, through the FIFO `builds/version.ready`, when it exists;
/// - `pull IMAGE`: succeeds when the registry file exists, else "manifest unknown";
/// - `push IMAGE`: prints a digest, or fails as unauthorized where `builds/push-<IMAGE with / and
///   : as _>.refused` exists;
/// - `info`: the containerd image store's driver status;
/// - `build ... --target T` (and `buildx build`; `builds/T-export` for one with
///   `--output type=cacheonly`), `builds/T` standing for `builds/F-T` where
///   such files exist for the Dockerfile's folder `F`: prints `builds/T.out`; if `builds/T.wait`
///   exists, reads it first (a FIFO: it blocks until the other side writes); if `builds/T.hang`
///   exists, writes its pid to `builds/T.pid` and to the FIFO `builds/T.ready` (blocking until
///   the test reads it), then sleeps until it is ended; else exits with `builds/T.exit` (0).
///
/// Every call is logged to `calls` as `start ARGS` and, unless it hangs, `end ARGS`.
const FAKE_DOCKER: &str = r#"#!/bin/bash
set -u
dir="$FAKE_DIR"
echo "start $*" >> "$dir/calls"
finish() { echo "end $*" >> "$dir/calls"; }
file_of() { echo "$dir/registry/$(echo "$1" | tr '/:' '__')"; }
case "$1" in
  --version) echo "Docker version 28.2.2, build e6534b4"; finish "$@"; exit 0;;
  version)
    if [ -p "$dir/builds/version.ready" ]; then echo $$ > "$dir/builds/version.ready"; exec sleep 600; fi
    echo "26.1.5|linux|amd64"; finish "$@"; exit 0;;
  image) finish "$@"; exit 0;;
  info) echo '[["driver-type","io.containerd.snapshotter.v1"]]'; finish "$@"; exit 0;;
  manifest)
    image="${@: -1}"
    q="$dir/builds/question-$(basename "$(file_of "$image")").ready"
    if [ -p "$q" ]; then echo $$ > "$q"; exec sleep 600; fi
    if [ -f "$(file_of "$image")" ]; then cat "$(file_of "$image")"; finish "$@"; exit 0; fi
    echo "no such manifest: $image" >&2; finish "$@"; exit 1;;
  pull)
    if [ -f "$(file_of "$2")" ]; then echo "pulled $2"; finish "$@"; exit 0; fi
    echo "Error response from daemon: manifest for $2 not found: manifest unknown: manifest unknown" >&2
    finish "$@"; exit 1;;
  push)
    refuse="$dir/builds/push-$(basename "$(file_of "$2")").refused"
    if [ -f "$refuse" ]; then echo "unauthorized: authentication required" >&2; finish "$@"; exit 1; fi
    echo "$2: digest: sha256:$(printf '%064d' 7) size: 528"; finish "$@"; exit 0;;
  buildx) if [ "$2" = version ]; then echo "github.com/docker/buildx 0.13.1"; finish "$@"; exit 0; fi;;
esac
if [ "$1" = build ] || [ "$1" = buildx ]; then
  target=""; prev=""; file=""
  for a in "$@"; do
    if [ "$prev" = --target ]; then target="$a"; fi
    if [ "$prev" = -f ]; then file="$a"; fi
    prev="$a"
  done
  b="$dir/builds/$target"
  # The registry cache's export-only build is `builds/TARGET-export`.
  case " $* " in *" type=cacheonly "*) b="$b-export";; esac
  # In a workspace, a build is told by its Dockerfile's folder too: `builds/FOLDER-TARGET`.
  folder=$(basename "$(dirname "$file")")
  if ls "$dir/builds/$folder-$target".* > /dev/null 2>&1; then b="$dir/builds/$folder-$target"; fi
  # Bounded: a test whose other side never comes fails instead of hanging.
  if [ -p "$b.wait" ]; then timeout 60 cat "$b.wait" > /dev/null || { echo "waited in vain" >&2; finish "$@"; exit 2; }; fi
  if [ -f "$b.out" ]; then cat "$b.out"; fi
  if [ -f "$b.hang" ]; then
    echo $$ > "$b.pid"
    if [ -p "$b.ready" ]; then
      echo $$ | timeout 60 tee "$b.ready" > /dev/null || { echo "nobody asked whether I run" >&2; finish "$@"; exit 2; }
    fi
    exec sleep 600
  fi
  code=0; if [ -f "$b.exit" ]; then code=$(cat "$b.exit"); fi
  finish "$@"; exit "$code"
fi
echo "fake docker: unexpected call: $*" >&2
finish "$@"; exit 1
"#;

const DOCKERFILE: &str = "\
FROM scratch AS toolchain
COPY busybox /bin/busybox
FROM toolchain AS compile
COPY src ./src
RUN make
FROM toolchain AS runtime
COPY --from=compile /out /out
";

/// A package `svc` with a cached `compile` stage, and the stand-in CLI, in a new folder.
struct Fake {
    dir: PathBuf,
}

impl Fake {
    fn new() -> Fake {
        let dir = testbed::temp_dir("scheduler").unwrap();
        for sub in ["registry", "builds", "project/src"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let docker = dir.join("docker");
        std::fs::write(&docker, FAKE_DOCKER).unwrap();
        std::fs::set_permissions(&docker, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let project = dir.join("project");
        std::fs::write(
            project.join("Cargo.toml"),
            "[package]\nname = \"svc\"\nversion = \"1.0.0\"\nedition = \"2021\"\n\n[package.metadata.docker]\nimage = \"127.0.0.1:5999/acme/svc\"\ntags = [\"latest\"]\nstages = { compile = \"compile\", runtime = \"dev\" }\n",
        )
        .unwrap();
        std::fs::write(project.join("Dockerfile"), DOCKERFILE).unwrap();
        std::fs::write(project.join("src/main.rs"), "fn main() {}\n").unwrap();
        Fake { dir }
    }

    /// The registry holds `image` as `digest`.
    fn hold(&self, image: &str, digest: &str) {
        let name = image.replace(['/', ':'], "_");
        std::fs::write(
            self.dir.join("registry").join(name),
            format!("{{\"Descriptor\":{{\"digest\":\"{digest}\"}}}}"),
        )
        .unwrap();
    }

    /// The registry holds `image` as `digest`, an image manifest (or a registry cache's) with
    /// these layers.
    fn hold_layers(&self, image: &str, digest: &str, layers: &[&str]) {
        let name = image.replace(['/', ':'], "_");
        let layers: Vec<String> = layers
            .iter()
            .map(|l| format!("{{\"digest\":\"{l}\"}}"))
            .collect();
        std::fs::write(
            self.dir.join("registry").join(name),
            format!(
                "{{\"Descriptor\":{{\"digest\":\"{digest}\",\"platform\":{{\"os\":\"linux\"}}}},\"OCIManifest\":{{\"layers\":[{}]}}}}",
                layers.join(",")
            ),
        )
        .unwrap();
    }

    /// The package's image gets a registry cache (`cache = "registry"`, no stage tags).
    fn registry_cache(&self) {
        std::fs::write(
            self.dir.join("project/Cargo.toml"),
            "[package]\nname = \"svc\"\nversion = \"1.0.0\"\nedition = \"2021\"\n\n[package.metadata.docker]\nimage = \"127.0.0.1:5999/acme/svc\"\ntags = [\"latest\"]\ncache = \"registry\"\nprovenance = false\n",
        )
        .unwrap();
    }

    /// The build of `target` prints `output` and exits with `code`.
    fn build(&self, target: &str, output: &str, code: i32) {
        let b = self.dir.join("builds");
        std::fs::write(b.join(format!("{target}.out")), output).unwrap();
        std::fs::write(b.join(format!("{target}.exit")), code.to_string()).unwrap();
    }

    /// The build of `target` hangs until it is ended; it says so through a FIFO.
    fn hang(&self, target: &str) -> PathBuf {
        let b = self.dir.join("builds");
        std::fs::write(b.join(format!("{target}.hang")), "").unwrap();
        self.fifo(&format!("{target}.ready"))
    }

    /// The build of `target` starts printing only once `other`'s build is running.
    fn wait_for(&self, target: &str, other: &str) {
        let ready = self.hang(other);
        std::os::unix::fs::symlink(
            &ready,
            self.dir.join("builds").join(format!("{target}.wait")),
        )
        .unwrap();
    }

    fn fifo(&self, name: &str) -> PathBuf {
        let path = self.dir.join("builds").join(name);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        path
    }

    fn pid_of(&self, target: &str) -> u32 {
        std::fs::read_to_string(self.dir.join("builds").join(format!("{target}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// The stand-in's calls, in order, without the preflight's.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                !l.contains(" --version") && !l.contains(" version") && !l.contains(" image ls")
            })
            .map(str::to_string)
            .collect()
    }

    fn position(&self, prefix: &str) -> Option<usize> {
        self.calls().iter().position(|c| c.starts_with(prefix))
    }

    fn last_position(&self, prefix: &str) -> Option<usize> {
        self.calls().iter().rposition(|c| c.starts_with(prefix))
    }

    fn command(&self, extra: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask-docker"));
        command
            .args([
                "docker",
                "build",
                "--message-format",
                "json",
                "--manifest-path",
            ])
            .arg(self.dir.join("project/Cargo.toml"))
            .args(extra)
            .env("DOCKER", self.dir.join("docker"))
            .env("FAKE_DIR", &self.dir)
            .env_remove("CI")
            .stdin(Stdio::null());
        // A build of the default branch, which writes the shared tags and the marker: the
        // fixture is no git checkout, and a build without a branch writes neither.
        for name in [
            "GITHUB_HEAD_REF",
            "GITHUB_REF_NAME",
            "BUILDKITE_BRANCH",
            "CIRCLE_BRANCH",
            "BUILDKITE_PIPELINE_DEFAULT_BRANCH",
            "GITHUB_EVENT_PATH",
        ] {
            command.env_remove(name);
        }
        command
            .env("CI_COMMIT_REF_NAME", "main")
            .env("CI_DEFAULT_BRANCH", "main");
        command
    }

    fn run(&self, extra: &[&str]) -> Run {
        Run::from(self.command(extra).output().unwrap())
    }

    /// The marker tag a run asks for: it hashes what the preflight told of the engine, which a
    /// dry run does not ask, so it comes from the plan a run made after its preflight (on an
    /// empty registry; the calls it made are forgotten).
    fn marker(&self) -> String {
        let run = self.run(&["--push"]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let plan = run
            .events
            .iter()
            .rfind(|e| e["reason"] == "plan")
            .expect("a plan");
        std::fs::remove_file(self.dir.join("calls")).unwrap();
        plan["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["detail"]["role"] == "marker")
            .unwrap()["detail"]["image"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Run {
    code: Option<i32>,
    stderr: String,
    events: Vec<serde_json::Value>,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            events: String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
        }
    }
}

impl Run {
    /// `step-finished` of the `kind` step of `stage` (the build of a stage, or a push of
    /// `image`).
    fn finished(&self, kind: &str, which: &str) -> Option<&serde_json::Value> {
        self.events.iter().find(|e| {
            e["reason"] == "step-finished"
                && e["kind"] == kind
                && (e["stage"] == which || e["image"].as_str().is_some_and(|i| i.ends_with(which)))
        })
    }
}

const IMAGE: &str = "127.0.0.1:5999/acme/svc";

/// BuildKit's plain output for the final build, every step of `compile` run or cached.
fn final_build_output(compile: &str) -> String {
    format!(
        "#1 [internal] load build definition from Dockerfile\n#1 DONE 0.0s\n#5 [toolchain 1/1] COPY busybox /bin/busybox\n#5 CACHED\n#6 [compile 1/2] COPY src ./src\n#6 {compile}\n#7 [compile 2/2] RUN make\n#7 {compile}\n#8 [runtime 1/1] COPY --from=compile /out /out\n#8 {compile}\n"
    )
}

#[test]
fn a_build_the_registry_holds_runs_only_its_questions() {
    let fake = Fake::new();
    let digest = format!("sha256:{}", "a".repeat(64));
    fake.hold(&fake.marker(), &digest);
    fake.hold(&format!("{IMAGE}:latest"), &digest);
    let run = fake.run(&["--push"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let calls = fake.calls();
    assert!(
        calls
            .iter()
            .all(|c| c.contains(" manifest inspect -v --insecure ")),
        "{calls:#?}"
    );
    assert!(
        run.stderr.contains("the registry holds this build"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("Building"), "{}", run.stderr);
    let finished = run.events.last().unwrap();
    assert_eq!(finished["fresh"], serde_json::json!(["svc"]));
}

#[test]
fn nothing_ran_so_the_stage_build_and_the_cache_pushes_are_left_alone() {
    let fake = Fake::new();
    fake.hold(&format!("{IMAGE}:compile"), "sha256:c");
    fake.hold(&format!("{IMAGE}:dev"), "sha256:d");
    fake.build("runtime", &final_build_output("CACHED"), 0);
    let run = fake.run(&["--push"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        fake.position("start build"),
        fake.position(
            "start build --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --target runtime"
        )
    );
    assert!(
        fake.position(
            "start build --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --target compile"
        )
        .is_none(),
        "{:#?}",
        fake.calls()
    );
    assert!(fake.position("start pull").is_none(), "{:#?}", fake.calls());
    assert!(fake
        .position(&format!("start push {IMAGE}:compile"))
        .is_none());
    assert!(fake.position(&format!("start push {IMAGE}:dev")).is_none());
    assert!(fake
        .position(&format!("start push {IMAGE}:latest"))
        .is_some());
    assert_eq!(
        run.finished("build", "compile").unwrap()["outcome"],
        "skipped"
    );
    let stages = &run.events.last().unwrap()["stages"];
    assert!(
        stages
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["steps"] == s["cached"]),
        "{stages}"
    );
}

#[test]
fn a_step_that_ran_pulls_the_old_image_during_the_final_build_and_rebuilds_after_it() {
    let fake = Fake::new();
    fake.hold(&format!("{IMAGE}:compile"), "sha256:c");
    fake.hold(&format!("{IMAGE}:dev"), "sha256:d");
    // The final build's `COPY src` and the steps after it ran.
    fake.build("runtime", &final_build_output("DONE 0.1s"), 0);
    fake.build(
        "compile",
        "#6 [compile 1/2] COPY src ./src\n#6 CACHED\n#7 [compile 2/2] RUN make\n#7 CACHED\n",
        0,
    );
    let run = fake.run(&["--push"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let pull = fake
        .position(&format!("start pull {IMAGE}:compile"))
        .expect("the pull");
    let final_end = fake
        .position(
            "end build --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --target runtime",
        )
        .unwrap();
    let stage_start = fake
        .position(
            "start build --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --target compile",
        )
        .unwrap();
    assert!(
        final_end < stage_start,
        "the stage build after the final build: {:#?}",
        fake.calls()
    );
    assert!(pull < stage_start, "{:#?}", fake.calls());
    // Its events say it started before the final build ended: the scheduler saw the step run.
    let position = |reason: &str, kind: &str| {
        run.events
            .iter()
            .position(|e| {
                e["reason"] == reason
                    && e["kind"] == kind
                    && e["stage"] == if kind == "pull" { "compile" } else { "runtime" }
            })
            .unwrap()
    };
    assert!(position("step-started", "pull") < position("step-finished", "build"));
    assert!(fake
        .position(&format!("start push {IMAGE}:compile"))
        .is_some());
}

#[test]
fn the_built_line_the_json_and_the_table_count_a_stage_alike() {
    let fake = Fake::new();
    // A cold registry: the stage build runs beside the final build and runs `compile`'s steps,
    // which the final build then shows as cached.
    fake.build(
        "compile",
        "#5 [toolchain 1/1] COPY busybox /bin/busybox\n#5 CACHED\n#6 [compile 1/2] COPY src ./src\n#6 DONE 0.1s\n#7 [compile 2/2] RUN make\n#7 DONE 0.1s\n",
        0,
    );
    fake.build(
        "runtime",
        &final_build_output("CACHED").replace("#8 CACHED", "#8 DONE 0.0s"),
        0,
    );
    let run = fake.run(&[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let finished = run.events.last().unwrap();
    let table: Vec<(String, u64, u64)> = finished["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let stage = s["stage"].as_str().unwrap().to_string();
            (
                stage,
                s["cached"].as_u64().unwrap(),
                s["steps"].as_u64().unwrap(),
            )
        })
        .collect();
    let row = |stage: &str| table.iter().find(|r| r.0 == stage).cloned().unwrap();
    assert_eq!(row("runtime"), ("runtime".into(), 0, 1), "{table:?}");
    assert_eq!(row("compile"), ("compile".into(), 0, 2), "{table:?}");
    for stage in ["runtime", "compile"] {
        let (_, cached, steps) = row(stage);
        let event = run.finished("build", stage).unwrap();
        assert_eq!(
            (event["cached"].as_u64(), event["steps"].as_u64()),
            (Some(cached), Some(steps)),
            "{event}"
        );
        let line = format!("Built svc stage `{stage}` in ");
        let built = run.stderr.lines().find(|l| l.contains(&line)).unwrap();
        assert!(
            built.ends_with(&format!("({cached}/{steps} steps cached)")),
            "{built}"
        );
        // The summary table of stderr says the same.
        let summary = run
            .stderr
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cells| cells.len() >= 3 && cells[0] == "svc" && cells[1] == stage)
            .unwrap();
        assert_eq!(summary[2], format!("{cached}/{steps}"), "{}", run.stderr);
    }
}

/// The images of the `Pushing` and of the `Pushed` status lines, in order.
fn push_lines(stderr: &str) -> (Vec<&str>, Vec<&str>) {
    let images = |verb: &str| {
        stderr
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix(verb))
            .filter_map(|rest| rest.split_whitespace().next())
            .collect::<Vec<_>>()
    };
    (images("Pushing "), images("Pushed "))
}

#[test]
fn every_push_that_succeeded_says_pushed_and_one_that_failed_does_not() {
    let fake = Fake::new();
    fake.build("compile", &final_build_output("DONE 0.1s"), 0);
    fake.build("runtime", &final_build_output("DONE 0.1s"), 0);
    let run = fake.run(&["--push", "--tag", "extra"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let (pushing, mut pushed) = push_lines(&run.stderr);
    for tag in ["latest", "extra"] {
        let image = format!("{IMAGE}:{tag}");
        assert!(pushing.contains(&image.as_str()), "{}", run.stderr);
    }
    // Every push that started with `Pushing` said when it was done, and every cache tag too.
    for image in &pushing {
        assert!(
            pushed.contains(image),
            "no `Pushed {image}`:\n{}",
            run.stderr
        );
    }
    pushed.sort();
    let mut done: Vec<&str> = run
        .events
        .iter()
        .filter(|e| e["reason"] == "step-finished" && e["kind"] == "push")
        .filter(|e| e["outcome"] == "done")
        .map(|e| e["image"].as_str().unwrap())
        .collect();
    done.sort();
    assert_eq!(pushed, done, "{}", run.stderr);

    // A final tag's push that fails is reported `Pushing`, never `Pushed`.
    let fake = Fake::new();
    fake.build("compile", &final_build_output("DONE 0.1s"), 0);
    fake.build("runtime", &final_build_output("DONE 0.1s"), 0);
    let latest = format!("{IMAGE}:latest");
    std::fs::write(
        fake.dir
            .join("builds")
            .join(format!("push-{}.refused", latest.replace(['/', ':'], "_"))),
        "",
    )
    .unwrap();
    let run = fake.run(&["--push"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let (pushing, pushed) = push_lines(&run.stderr);
    assert!(pushing.contains(&latest.as_str()), "{}", run.stderr);
    assert!(!pushed.contains(&latest.as_str()), "{}", run.stderr);
}

#[test]
fn the_first_failure_ends_the_running_build_and_names_stage_package_and_command() {
    let fake = Fake::new();
    // A cold registry: the stage build starts beside the final build, which hangs; the stage
    // build fails once the final build is running.
    fake.wait_for("compile", "runtime");
    fake.build(
        "compile",
        "#7 [compile 2/2] RUN make\n#7 ERROR: process \"/bin/sh -c make\" did not complete successfully: exit code: 2\nERROR: failed to solve: process \"/bin/sh -c make\" did not complete successfully: exit code: 2\n",
        1,
    );
    let run = fake.run(&["--push"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the build of stage `compile` of package `svc` failed"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("command: DOCKER_BUILDKIT=1"),
        "{}",
        run.stderr
    );
    let runtime = run.finished("build", "runtime").unwrap();
    assert!(
        runtime["message"]
            .as_str()
            .unwrap()
            .ends_with("was stopped"),
        "{runtime}"
    );
    assert!(
        !process_exists(fake.pid_of("runtime")),
        "the hanging build was ended"
    );
    assert!(fake.position("start push").is_none(), "{:#?}", fake.calls());
    assert!(!run.stderr.contains("Finished"), "{}", run.stderr);
}

#[test]
fn a_signal_ends_every_command_and_the_run_exits_with_128_plus_it() {
    let fake = Fake::new();
    let ready = fake.hang("runtime");
    let mut child = fake
        .command(&["--push"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Blocks until the hanging build has started and says so.
    let pid: u32 = std::fs::read_to_string(&ready)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(process_exists(pid));
    // SAFETY: kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let stdout = child.stdout.take().unwrap();
    let events: Vec<serde_json::Value> = BufReader::new(stdout)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(128 + 15), "{stderr}");
    assert!(stderr.contains("interrupted by signal 15"), "{stderr}");
    assert!(!process_exists(pid), "the build's process group was ended");
    let finished = events.last().unwrap();
    assert_eq!(finished["reason"], "build-finished");
    assert_eq!(finished["success"], false);
}

#[test]
fn a_signal_during_the_preflight_ends_the_registry_questions_too() {
    let fake = Fake::new();
    let question = fake.fifo(&format!(
        "question-{}.ready",
        format!("{IMAGE}:latest").replace(['/', ':'], "_")
    ));
    let probe = fake.fifo("version.ready");
    let child = fake
        .command(&["--push"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Each read blocks until the stand-in runs: the question asked early, and the preflight's
    // probe, which hangs, so that the run is still in its preflight.
    let pid_of = |fifo: &Path| -> u32 {
        std::fs::read_to_string(fifo)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (question, probe) = (pid_of(&question), pid_of(&probe));
    assert!(process_exists(question) && process_exists(probe));
    // SAFETY: kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(128 + 15), "{stderr}");
    // The run may exit before a question's thread has seen its command end: wait for the
    // process itself (it would sleep 600 s if nothing had signalled its group).
    assert!(
        ends_within(probe, 20),
        "the probe's process group was ended"
    );
    assert!(
        ends_within(question, 20),
        "the registry question asked during the preflight was ended"
    );
}

/// Whether process `pid` ends (or has ended) within `seconds`: waits on a pidfd, which becomes
/// readable when the process exits.
fn ends_within(pid: u32, seconds: i32) -> bool {
    // SAFETY: pidfd_open(2) with a pid and no flags; the fd is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as i32;
    if fd < 0 {
        return !process_exists(pid);
    }
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) of one valid pollfd.
    let ready = unsafe { libc::poll(&mut poll, 1, seconds * 1000) };
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    ready == 1
}

/// Whether process `pid` is alive (not gone, and not a zombie waiting to be reaped).
fn process_exists(pid: u32) -> bool {
    let status = Path::new("/proc").join(pid.to_string()).join("status");
    std::fs::read_to_string(status).is_ok_and(|s| !s.contains("State:\tZ"))
}

#[test]
fn the_final_builds_of_two_packages_run_at_once() {
    let fake = Fake::new();
    // A second package beside the first, in one workspace.
    let project = fake.dir.join("project");
    std::fs::create_dir_all(project.join("worker")).unwrap();
    std::fs::write(
        project.join("worker/Cargo.toml"),
        "[package]\nname = \"worker\"\nversion = \"1.0.0\"\nedition = \"2021\"\n\n[package.metadata.docker]\nimage = \"127.0.0.1:5999/acme/worker\"\n",
    )
    .unwrap();
    std::fs::write(project.join("worker/Dockerfile"), DOCKERFILE).unwrap();
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    std::fs::write(
        project.join("Cargo.toml"),
        format!("[workspace]\nmembers = [\".\", \"worker\"]\n\n{manifest}"),
    )
    .unwrap();
    // `worker`'s final build hangs, and says so; `project`'s final build prints its output
    // only once `worker`'s runs. Were they run one after the other, the run could not end.
    let ready = fake.hang("worker-runtime");
    std::os::unix::fs::symlink(&ready, fake.dir.join("builds/project-runtime.wait")).unwrap();
    std::fs::write(fake.dir.join("builds/project-runtime.out"), "").unwrap();
    // The first package's build then fails, which ends the hanging one.
    std::fs::write(fake.dir.join("builds/project-runtime.exit"), "1").unwrap();
    let run = fake.run(&["--jobs", "2"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the build of stage `runtime` of package `svc` failed"),
        "{}",
        run.stderr
    );
    let worker = run
        .events
        .iter()
        .find(|e| {
            e["reason"] == "step-finished" && e["package"] == "worker" && e["kind"] == "build"
        })
        .expect("worker's build ended");
    assert!(
        worker["message"].as_str().unwrap().ends_with("was stopped"),
        "{worker}"
    );
    assert!(!process_exists(fake.pid_of("worker-runtime")));
}

/// The registry cache's export-only build, in the stand-in's calls.
const EXPORT: &str = "start buildx build --progress=rawjson --target runtime --cache-from type=registry,ref=127.0.0.1:5999/acme/svc:buildcache --cache-to type=registry,ref=127.0.0.1:5999/acme/svc:buildcache,mode=max,image-manifest=true,oci-mediatypes=true --output type=cacheonly";

/// `step-finished` of the export-only build.
fn export_finished(run: &Run) -> &serde_json::Value {
    run.events
        .iter()
        .find(|e| e["reason"] == "step-finished" && e["kind"] == "build" && e["stage"] == "runtime")
        .and_then(|_| {
            run.events.iter().rfind(|e| {
                e["reason"] == "step-finished" && e["kind"] == "build" && e["stage"] == "runtime"
            })
        })
        .expect("the export-only build's end")
}

#[test]
fn the_registry_cache_is_exported_only_when_a_step_ran_or_a_layer_is_new() {
    let cache = format!("{IMAGE}:buildcache");
    let latest = format!("{IMAGE}:latest");
    // Nothing ran, and the registry cache holds every layer of the pushed image: no export.
    let fake = Fake::new();
    fake.registry_cache();
    fake.hold_layers(&cache, "sha256:k", &["sha256:a", "sha256:b", "sha256:c"]);
    fake.hold_layers(&latest, "sha256:i", &["sha256:a", "sha256:c"]);
    fake.build("runtime", &final_build_output("CACHED"), 0);
    let run = fake.run(&["--push"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let calls = fake.calls();
    let final_build = fake
        .position("start buildx build --progress=rawjson --target runtime --cache-from")
        .expect("the final build");
    assert!(
        !calls[final_build].contains("--cache-to") && calls[final_build].contains(" --push "),
        "{}",
        calls[final_build]
    );
    assert!(fake.position(EXPORT).is_none(), "{calls:#?}");
    let export = export_finished(&run);
    assert_eq!(export["outcome"], "skipped", "{export}");
    assert!(
        export["message"]
            .as_str()
            .unwrap()
            .contains("the registry cache holds every layer"),
        "{export}"
    );
    // The image's layers were asked after the final build pushed it.
    let asked = fake
        .last_position(&format!("start manifest inspect -v --insecure {latest}"))
        .unwrap();
    assert!(
        fake.position("end buildx build --progress=rawjson --target runtime")
            .unwrap()
            < asked,
        "{calls:#?}"
    );

    // Nothing ran, yet a layer of the pushed image is not in the registry cache (a cache that
    // another build replaced, hits from the engine's own cache): export, after the question.
    let fake = Fake::new();
    fake.registry_cache();
    fake.hold_layers(&cache, "sha256:k", &["sha256:a", "sha256:b"]);
    fake.hold_layers(&latest, "sha256:i", &["sha256:a", "sha256:new"]);
    fake.build("runtime", &final_build_output("CACHED"), 0);
    let run = fake.run(&["--push"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let export = fake.position(EXPORT).expect("the export");
    assert!(
        fake.last_position(&format!("end manifest inspect -v --insecure {latest}"))
            .unwrap()
            < export,
        "{:#?}",
        fake.calls()
    );
    assert_eq!(export_finished(&run)["outcome"], "done");

    // No registry cache yet: export.
    let fake = Fake::new();
    fake.registry_cache();
    fake.hold_layers(&latest, "sha256:i", &["sha256:a"]);
    fake.build("runtime", &final_build_output("CACHED"), 0);
    let run = fake.run(&["--push"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(fake.position(EXPORT).is_some(), "{:#?}", fake.calls());

    // A step ran, though every layer is said to be in the cache: export, started as soon as
    // the final build's output shows it (before that build's end is handled).
    let fake = Fake::new();
    fake.registry_cache();
    fake.hold_layers(&cache, "sha256:k", &["sha256:a", "sha256:b", "sha256:c"]);
    fake.hold_layers(&latest, "sha256:i", &["sha256:a"]);
    fake.build("runtime", &final_build_output("DONE 0.1s"), 0);
    let run = fake.run(&["--push"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(fake.position(EXPORT).is_some(), "{:#?}", fake.calls());
    let builds: Vec<(usize, &str)> = run
        .events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["kind"] == "build")
        .map(|(i, e)| (i, e["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        builds.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
        [
            "step-started",
            "step-started",
            "step-finished",
            "step-finished"
        ],
        "the export starts before the final build's end: {builds:?}"
    );
    assert_eq!(export_finished(&run)["outcome"], "done");
    // The report counts the final build's steps once.
    let stages = &run.events.last().unwrap()["stages"];
    assert_eq!(stages.as_array().unwrap().len(), 3, "{stages}");
}

#[test]
fn the_export_only_build_waits_for_the_final_build_where_a_step_uses_a_cache_mount() {
    // A second run of the step (BuildKit does not always share it between the two builds)
    // would change what the mount holds: the export starts once the final build has ended.
    let fake = Fake::new();
    fake.registry_cache();
    std::fs::write(
        fake.dir.join("project/Dockerfile"),
        DOCKERFILE.replace(
            "RUN make",
            "RUN --mount=type=cache,target=/root/.cache make",
        ),
    )
    .unwrap();
    fake.hold_layers(&format!("{IMAGE}:buildcache"), "sha256:k", &["sha256:a"]);
    fake.hold_layers(&format!("{IMAGE}:latest"), "sha256:i", &["sha256:a"]);
    fake.build(
        "runtime",
        &final_build_output("DONE 0.1s").replace(
            "RUN make",
            "RUN --mount=type=cache,target=/root/.cache make",
        ),
        0,
    );
    let run = fake.run(&["--push"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let reasons: Vec<&str> = run
        .events
        .iter()
        .filter(|e| e["kind"] == "build")
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "step-started",
            "step-finished",
            "step-started",
            "step-finished"
        ],
        "the export starts after the final build's end"
    );
    assert!(
        fake.position("end buildx build --progress=rawjson --target runtime --cache-from")
            .unwrap()
            < fake.position(EXPORT).expect("the export"),
        "{:#?}",
        fake.calls()
    );
    assert_eq!(export_finished(&run)["outcome"], "done");
}

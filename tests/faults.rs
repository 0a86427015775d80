//! Faults, with real components: a registry that wants credentials, a registry that is down
//! before and during a run, a signal during a build, two agents at once, and secrets that must
//! never be printed. Each case checks what the tool printed and its exit code.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{edit, events, service, tool, tool_with};

fn code(run: &support::Run) -> Option<i32> {
    run.output.status.code()
}

/// No step reported a push that succeeded.
fn nothing_reported_pushed(run: &support::Run) {
    for event in events(run) {
        if event["reason"] == "step-finished" && event["kind"] == "push" {
            assert!(
                event["success"] == false || event["outcome"] != "done",
                "a push reported done: {event}"
            );
            assert!(event["digest"].is_null(), "a digest reported: {event}");
        }
    }
    assert!(
        !run.stderr.contains("@sha256:"),
        "a pushed digest in the summary:\n{}",
        run.stderr
    );
}

#[test]
fn a_registry_that_wants_credentials() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry_with_auth("ci", "hunter2").unwrap();
    let manifest = service(&tools, &registry);
    let path = manifest.to_str().unwrap();
    let agent = tools.engine().unwrap();

    // Reading the cache: the build goes on without it, and says why.
    let run = tool(&tools.cli28, &agent, &["build", "--manifest-path", path]);
    run.assert_ok();
    let warning = format!(
        "warning: the registry of `{}/acme/service:compile` wants credentials",
        registry.addr()
    );
    assert!(run.stderr.contains(&warning), "{}", run.stderr);

    // Pushing: an error that names the registry, and no success.
    let run = tool(
        &tools.cli28,
        &agent,
        &[
            "build",
            "--manifest-path",
            path,
            "--push",
            "--message-format",
            "json",
        ],
    );
    assert_eq!(code(&run), Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("the push of `{}/acme/service:", registry.addr())),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("wants credentials (`docker login`)"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("Finished"), "{}", run.stderr);
    nothing_reported_pushed(&run);
    let last = events(&run).pop().unwrap();
    assert_eq!(last["reason"], "build-finished");
    assert_eq!(last["success"], false);

    // A pull request from a fork refreshing caches: a warning naming each tag, not a failure.
    let run = tool(
        &tools.cli28,
        &agent,
        &["build", "--manifest-path", path, "--push-cache-only"],
    );
    run.assert_ok();
    for tag in ["compile", "dev"] {
        let warning = format!(
            "warning: the cache tag `{}/acme/service:{tag}` was not pushed",
            registry.addr()
        );
        assert!(run.stderr.contains(&warning), "{}", run.stderr);
    }
    assert!(registry.tags("acme/service").unwrap().is_empty());
}

#[test]
fn a_registry_that_is_down_before_the_run() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let mut registry = tools.registry().unwrap();
    let manifest = service(&tools, &registry);
    let path = manifest.to_str().unwrap();
    registry.stop();
    let agent = tools.engine().unwrap();

    let run = tool(&tools.cli20, &agent, &["build", "--manifest-path", path]);
    run.assert_ok();
    let warning = format!(
        "warning: the registry of `{}/acme/service:compile` could not be reached",
        registry.addr()
    );
    assert!(run.stderr.contains(&warning), "{}", run.stderr);

    let run = tool(
        &tools.cli20,
        &agent,
        &[
            "build",
            "--manifest-path",
            path,
            "--push",
            "--message-format",
            "json",
        ],
    );
    assert_eq!(code(&run), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("could not be reached"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("retrying the push") || run.stderr.contains("failed"),
        "{}",
        run.stderr
    );
    nothing_reported_pushed(&run);
}

/// Runs the tool with `--message-format json` and calls `on_event` with each event as it comes.
fn tool_watching(
    cli: &Path,
    engine: &testbed::Engine,
    args: &[&str],
    mut on_event: impl FnMut(&serde_json::Value),
) -> (Option<i32>, String) {
    let mut child = support::tool_command(cli, engine, args)
        .args(["--message-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let collect = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        on_event(&serde_json::from_str(&line.unwrap()).unwrap());
    }
    let status = child.wait().unwrap();
    (status.code(), collect.join().unwrap())
}

#[test]
fn a_registry_that_goes_down_during_the_run() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let mut registry = tools.registry().unwrap();
    let manifest = service(&tools, &registry);
    let path = manifest.to_str().unwrap();
    let agent = tools.engine().unwrap();
    let mut pushes = Vec::new();
    let (code, stderr) = tool_watching(
        &tools.cli20,
        &agent,
        &["build", "--manifest-path", path, "--push"],
        |event| {
            if event["reason"] == "step-started"
                && event["kind"] == "build"
                && registry.is_running()
            {
                registry.stop();
            }
            if event["reason"] == "step-finished" && event["kind"] == "push" {
                pushes.push(event.clone());
            }
        },
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("could not be reached"), "{stderr}");
    assert!(!pushes.is_empty(), "{stderr}");
    assert!(
        pushes
            .iter()
            .all(|p| p["success"] == false && p["digest"].is_null()),
        "{pushes:?}"
    );
    registry.restart().unwrap();
    assert!(
        registry.tags("acme/service").unwrap().is_empty(),
        "nothing reached the registry"
    );
}

/// Pids of the processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits until `done` holds, up to `limit`.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

#[test]
fn a_signal_during_a_build_ends_every_child_and_the_next_run_works() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let manifest = service(&tools, &registry);
    let dockerfile = manifest.with_file_name("Dockerfile");
    edit(
        &dockerfile,
        "COPY src ./src\n",
        "COPY src ./src\nARG SLOW=0\nRUN [ \"$SLOW\" = 0 ] || sleep 4711\n",
    );
    let path = manifest.to_str().unwrap();
    let agent = tools.engine().unwrap();
    for (signal, expected) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let args = [
            "build",
            "-v",
            "--manifest-path",
            path,
            "--build-arg",
            "SLOW=1",
        ];
        let mut child = support::tool_command(&tools.cli28, &agent, &args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                all.push_str(&line);
                all.push('\n');
                let _ = tx.send(line);
            }
            all
        });
        // The slow step has started once its `sleep` runs inside the engine.
        assert!(
            rx.iter().any(|l| l.contains("] || sleep 4711")),
            "the slow step never started"
        );
        assert!(
            wait_until(Duration::from_secs(60), || !processes_with("sleep 4711")
                .is_empty()),
            "no sleep ran"
        );
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let status = child.wait().unwrap();
        let output = reader.join().unwrap();
        assert_eq!(status.code(), Some(expected), "{output}");
        assert!(
            output.contains(&format!("interrupted by signal {signal}")),
            "{output}"
        );
        assert!(!output.contains("Finished"), "{output}");
        // Every child: the docker CLI and buildx (they name the fixture's folder), and the step.
        let folder = manifest.parent().unwrap().to_str().unwrap().to_string();
        assert!(
            wait_until(Duration::from_secs(30), || processes_with(&folder)
                .is_empty()
                && processes_with("sleep 4711").is_empty()),
            "left running: {:?} {:?}",
            processes_with(&folder),
            processes_with("sleep 4711")
        );
    }
    let run = tool(&tools.cli28, &agent, &["build", "--manifest-path", path]);
    run.assert_ok();
}

#[test]
fn two_agents_push_the_same_build_at_once() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let manifest = service(&tools, &registry);
    let path = manifest.to_str().unwrap().to_string();
    let (a, b) = (tools.engine().unwrap(), tools.engine().unwrap());
    let runs: Vec<support::Run> = std::thread::scope(|scope| {
        let handles: Vec<_> = [(&a, &tools.cli20), (&b, &tools.cli28)]
            .into_iter()
            .map(|(agent, cli)| {
                let path = path.clone();
                scope
                    .spawn(move || tool(cli, agent, &["build", "--manifest-path", &path, "--push"]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for run in &runs {
        run.assert_ok();
    }
    let puller = tools.engine().unwrap();
    for tag in ["compile", "dev", "0.3.1", "latest"] {
        let image = format!("{}/acme/service:{tag}", registry.addr());
        let out = Command::new(&tools.cli20)
            .args(["pull", &image])
            .env("DOCKER_HOST", puller.host())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn secrets_reach_the_build_and_are_never_printed() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let manifest = service(&tools, &registry);
    edit(&manifest, "network = \"none\"", "network = \"none\"\nsecrets = { npm_token = { env = \"NPM_TOKEN\" }, netrc = { file = \"netrc\" } }");
    let secret = "s3cr3t-value-4f1d9";
    std::fs::write(
        manifest.with_file_name("netrc"),
        "machine x password file-secret-77ab",
    )
    .unwrap();
    edit(
        &manifest.with_file_name("Dockerfile"),
        "COPY src ./src\n",
        "COPY src ./src\nRUN --mount=type=secret,id=npm_token --mount=type=secret,id=netrc sha256sum /run/secrets/npm_token /run/secrets/netrc\n",
    );
    let path = manifest.to_str().unwrap();
    let agent = tools.engine().unwrap();
    let env = [("NPM_TOKEN", secret)];
    let verbose = tool_with(
        &tools.cli28,
        &agent,
        &["build", "-v", "--manifest-path", path],
        &env,
    );
    verbose.assert_ok();
    // The value reached the build: its hash is in BuildKit's output.
    let expected = sha256_hex(secret.as_bytes());
    assert!(
        verbose.stderr.contains(&expected),
        "the secret's hash {expected} is not in:\n{}",
        verbose.stderr
    );
    let json = tool_with(
        &tools.cli28,
        &agent,
        &["build", "--manifest-path", path, "--message-format", "json"],
        &env,
    );
    json.assert_ok();
    let dry = tool_with(
        &tools.cli28,
        &agent,
        &["build", "--manifest-path", path, "--dry-run", "--push"],
        &env,
    );
    dry.assert_ok();
    assert!(
        dry.stdout.contains("--secret id=npm_token,env=NPM_TOKEN"),
        "{}",
        dry.stdout
    );
    for run in [&verbose, &json, &dry] {
        for value in [secret, "file-secret-77ab"] {
            assert!(
                !run.stdout.contains(value) && !run.stderr.contains(value),
                "`{value}` was printed"
            );
        }
    }
}

/// SHA-256, hex: the secret's hash is what the build prints, so the test needs it.
fn sha256_hex(data: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(data)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_cache_that_was_imported_yet_missed_is_a_warning() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let manifest = service(&tools, &registry);
    let path = manifest.to_str().unwrap();
    let first = tools.engine().unwrap();
    tool(
        &tools.cli20,
        &first,
        &["build", "--manifest-path", path, "--push"],
    )
    .assert_ok();
    first.stop();
    // The compile stage's first step changes: its cache is read, and none of it hits.
    edit(
        &manifest.with_file_name("Dockerfile"),
        "WORKDIR /src",
        "WORKDIR /source",
    );
    let agent = tools.engine().unwrap();
    let run = tool(
        &tools.cli20,
        &agent,
        &["build", "--manifest-path", path, "--message-format", "json"],
    );
    run.assert_ok();
    let warning = format!(
        "warning: stage `compile` of package `service` imported its cache `{}/acme/service:compile`, yet none of its 5 steps came from it",
        registry.addr()
    );
    assert!(run.stderr.contains(&warning), "{}", run.stderr);
    assert!(
        run.stderr.contains("note: the usual causes"),
        "{}",
        run.stderr
    );
    assert!(events(&run).iter().any(|e| e["reason"] == "warning"
        && e["message"]
            .as_str()
            .unwrap_or("")
            .contains("yet none of its")));
    agent.stop();

    // A source edit: `compile` runs its last steps, and the runtime stage's one step, which
    // copies from it, misses for that reason. Not a silent miss: no warning.
    edit(
        &manifest.with_file_name("Dockerfile"),
        "WORKDIR /source",
        "WORKDIR /src",
    );
    edit(
        &manifest.with_file_name("src").join("main.rs"),
        "fn main() {",
        "// edited\nfn main() {",
    );
    let agent = tools.engine().unwrap();
    let run = tool(
        &tools.cli28,
        &agent,
        &["build", "--manifest-path", path, "--message-format", "json"],
    );
    run.assert_ok();
    assert_eq!(run.cached("service", "runtime"), (0, 1), "{}", run.stderr);
    assert_eq!(run.cached("service", "compile"), (3, 5), "{}", run.stderr);
    assert!(!run.stderr.contains("warning:"), "{}", run.stderr);
}

#[test]
fn a_miss_that_follows_from_a_changed_input_is_no_silent_miss() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    // A runtime stage of one step that copies the binary from the context (built outside the
    // image), and its cache.
    let dir = testbed::temp_dir("context-miss").unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"svc\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[lib]\npath = \"lib.rs\"\n\n[package.metadata.docker]\nimage = \"{}/acme/svc\"\nnetwork = \"none\"\nstages = {{ runtime = \"dev\" }}\n",
            registry.addr()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("lib.rs"), "").unwrap();
    std::fs::write(dir.join("app"), "version 1\n").unwrap();
    std::fs::copy(&tools.busybox, dir.join("busybox")).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch AS toolchain\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nFROM toolchain AS runtime\nCOPY app /usr/local/bin/app\n",
    )
    .unwrap();
    let manifest = dir.join("Cargo.toml");
    let path = manifest.to_str().unwrap();
    let first = tools.engine().unwrap();
    tool(
        &tools.cli28,
        &first,
        &["build", "--manifest-path", path, "--push"],
    )
    .assert_ok();
    first.stop();

    // The binary changes: the runtime stage's one step misses, as it must.
    edit(&dir.join("app"), "version 1", "version 2");
    let agent = tools.engine().unwrap();
    let run = tool(
        &tools.cli28,
        &agent,
        &["build", "--manifest-path", path, "--message-format", "json"],
    );
    run.assert_ok();
    assert_eq!(run.cached("svc", "runtime"), (0, 1), "{}", run.stderr);
    assert_eq!(run.cached("svc", "toolchain"), (2, 2), "{}", run.stderr);
    let finished = events(&run).pop().unwrap();
    let runtime = finished["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "runtime")
        .unwrap()
        .clone();
    assert!(
        runtime["cache_sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str() == Some(&format!("{}/acme/svc:dev", registry.addr()))),
        "the runtime stage's cache was not imported, so nothing was tested: {runtime}"
    );
    assert!(!run.stderr.contains("warning:"), "{}", run.stderr);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_first_failure_stops_the_other_running_builds() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let dir = testbed::temp_dir("two-packages").unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[workspace]\nmembers = [\"fails\", \"slow\"]\nresolver = \"2\"\n",
    )
    .unwrap();
    for (name, step) in [
        ("fails", "RUN sleep 1 && false"),
        ("slow", "RUN sleep 4713"),
    ] {
        let package = dir.join(name);
        std::fs::create_dir_all(&package).unwrap();
        std::fs::write(
            package.join("Cargo.toml"),
            format!(
                "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[lib]\npath = \"lib.rs\"\n\n[package.metadata.docker]\nimage = \"{}/acme/{name}\"\nnetwork = \"none\"\n",
                registry.addr()
            ),
        )
        .unwrap();
        std::fs::write(package.join("lib.rs"), "").unwrap();
        std::fs::copy(&tools.busybox, package.join("busybox")).unwrap();
        std::fs::write(
            package.join("Dockerfile"),
            format!("FROM scratch AS runtime\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n{step}\n"),
        )
        .unwrap();
    }
    let agent = tools.engine().unwrap();
    let manifest = dir.join("Cargo.toml");
    let run = tool(
        &tools.cli28,
        &agent,
        &[
            "build",
            "--manifest-path",
            manifest.to_str().unwrap(),
            "--jobs",
            "2",
            "--message-format",
            "json",
        ],
    );
    assert_eq!(code(&run), Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the build of stage `runtime` of package `fails` failed"),
        "{}",
        run.stderr
    );
    let finished: Vec<serde_json::Value> = events(&run)
        .into_iter()
        .filter(|e| e["reason"] == "step-finished" && e["kind"] == "build")
        .collect();
    let slow = finished
        .iter()
        .find(|e| e["package"] == "slow")
        .expect("the slow build ended");
    assert_eq!(slow["success"], false, "{slow}");
    assert!(
        slow["message"]
            .as_str()
            .unwrap_or("")
            .contains("was stopped"),
        "{slow}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || processes_with("sleep 4713")
            .is_empty()),
        "the slow step is still running"
    );
    assert!(!run.stderr.contains("Finished"), "{}", run.stderr);
}

#[test]
fn a_run_step_on_an_engine_without_a_bridge_says_what_to_do() {
    let Some(tools) = testbed::require() else {
        return;
    };
    // The testbed's engines run with `--bridge=none`, as `cargo xtask engine up`'s does: a
    // `RUN` step without `network = "none"` cannot get the default network.
    let registry = tools.registry().unwrap();
    let manifest = service(&tools, &registry);
    edit(&manifest, "network = \"none\"\n", "");
    let path = manifest.to_str().unwrap();
    let agent = tools.engine().unwrap();
    for cli in [&tools.cli20, &tools.cli28] {
        let run = tool(cli, &agent, &["build", "--manifest-path", path]);
        assert_eq!(code(&run), Some(1), "{}", run.stderr);
        assert!(
            run.stderr.contains("network bridge not found"),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains(
                "note: the engine has no bridge network (dockerd `--bridge=none`), which a `RUN` step needs by default: set `network = \"none\"` in `[package.metadata.docker]`"
            ),
            "{}",
            run.stderr
        );
    }
}

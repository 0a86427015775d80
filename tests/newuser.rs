//! A new user's first hour, as the README tells it: a project made with `cargo new`, the
//! README's own snippets applied to it (read from README.md by the comment each fenced block
//! starts with, so that these tests fail when the README drifts), then `check`, a build, a push,
//! and the same build found in the registry. Once through the README's xtask setup (a project
//! that is one package, and one that already is a workspace), once through its "try it" path:
//! this repository's engine and registry started from the project's folder, and the clone's own
//! program.
//!
//! The nested cargo builds use `target/newuser` of this checkout, kept between runs: the first
//! run compiles the xtask's dependencies (a few minutes on a small machine), later runs only the
//! crates that changed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CHECKOUT: &str = env!("CARGO_MANIFEST_DIR");

/// Where the README's examples name the clone and the registry.
const CLONE_IN_README: &str = "/path/to/xtask-docker";
const REGISTRY_IN_README: &str = "127.0.0.1:5000";

/// The test's own Dockerfile for the README's stages (`build`, cached, and `runtime`): no image
/// can be pulled here, so it starts from scratch and brings busybox in; its `RUN`s need no
/// network, as the README's `network = "none"` gives them none.
const DOCKERFILE: &str = "\
FROM scratch AS build
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
COPY src /src
RUN cat /src/main.rs > /hello

FROM scratch AS runtime
COPY --from=build /hello /hello
";

/// The body of the README's fenced block whose first line is `header`, without that line.
/// Panics when there is none or more than one: the README changed, and so must this test.
fn block(header: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(CHECKOUT).join("README.md")).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("```") && lines.get(i + 1) == Some(&header) {
            let body: Vec<&str> = lines[i + 2..]
                .iter()
                .take_while(|l| !l.starts_with("```"))
                .copied()
                .collect();
            found.push(format!("{}\n", body.join("\n")));
        }
    }
    assert_eq!(
        found.len(),
        1,
        "README.md has {} fenced blocks that start with `{header}`",
        found.len()
    );
    found.remove(0)
}

/// The commands of a README `sh` block: its lines that are no comment, as argv.
fn commands(header: &str) -> Vec<Vec<String>> {
    block(header)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| {
            l.replace(CLONE_IN_README, CHECKOUT)
                .split_whitespace()
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// `argv` (a `cargo ...` command of the README) as a command run in `dir`: cargo is the one
/// running these tests, and its builds go to this checkout's `target/newuser`.
fn command(argv: &[String], dir: &Path) -> Command {
    assert_eq!(argv[0], "cargo", "not a cargo command: {argv:?}");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(&argv[1..]).current_dir(dir).env(
        "CARGO_TARGET_DIR",
        Path::new(CHECKOUT).join("target/newuser"),
    );
    command
}

/// Runs `command`, shows what it printed (with a failing test's output), and returns it.
fn run(mut command: Command) -> (Output, String) {
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!(
        "$ {command:?}\n{}{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    (output, stderr)
}

/// `command` must succeed; returns its stdout and stderr.
fn run_ok(command: Command) -> (String, String) {
    let (output, stderr) = run(command);
    assert!(output.status.success(), "failed: {stderr}");
    (String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
}

/// Appends `text` to the file at `path`.
fn append(path: &Path, text: &str) {
    let before = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, format!("{before}\n{text}")).unwrap();
}

/// A new project `hello` made with `cargo new` in a new temp folder, which it returns with the
/// project's folder.
fn cargo_new() -> (PathBuf, PathBuf) {
    let dir = testbed::temp_dir("newuser").unwrap();
    let argv: Vec<String> = ["cargo", "new", "hello"].map(String::from).to_vec();
    run_ok(command(&argv, &dir));
    let project = dir.join("hello");
    (dir, project)
}

/// The README's "try it" table (its image in `registry`), ignore file, and the test's
/// Dockerfile, given to the package in `package`.
fn give_an_image(package: &Path, registry: &str, tools: Option<&testbed::Tools>) {
    append(
        &package.join("Cargo.toml"),
        &block("# Cargo.toml: your package's image").replace(REGISTRY_IN_README, registry),
    );
    std::fs::write(package.join(".dockerignore"), block("# .dockerignore")).unwrap();
    std::fs::write(package.join("Dockerfile"), DOCKERFILE).unwrap();
    if let Some(tools) = tools {
        // `fs::copy` keeps the execute bit.
        std::fs::copy(&tools.busybox, package.join("busybox")).unwrap();
    }
}

/// The README's xtask setup in `root`, from `cargo new --bin xtask` on; `one_package`: the root
/// manifest is a package's (and gets the README's `[workspace]` table).
fn set_up_the_xtask(root: &Path, one_package: bool) {
    for argv in commands("# in your project's root") {
        let (_, stderr) = run_ok(command(&argv, root));
        if !one_package {
            // What the README says cargo does in a workspace.
            assert!(
                stderr.contains("Adding `xtask` as member of workspace"),
                "{stderr}"
            );
        }
    }
    if one_package {
        append(
            &root.join("Cargo.toml"),
            &block("# Cargo.toml (the root manifest), in a project that is one package"),
        );
    }
    std::fs::create_dir_all(root.join(".cargo")).unwrap();
    std::fs::write(
        root.join(".cargo/config.toml"),
        block("# .cargo/config.toml"),
    )
    .unwrap();
    let xtask_manifest = root.join("xtask/Cargo.toml");
    let text = std::fs::read_to_string(&xtask_manifest).unwrap();
    assert!(
        text.ends_with("[dependencies]\n"),
        "`cargo new` no longer ends the manifest with `[dependencies]`, where the README's line goes:\n{text}"
    );
    std::fs::write(
        &xtask_manifest,
        format!(
            "{text}{}",
            block("# xtask/Cargo.toml, under [dependencies]")
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("xtask/src/main.rs"),
        block("// xtask/src/main.rs"),
    )
    .unwrap();
    // The README's dependency line names the release on crates.io and is applied as written;
    // `[patch]` makes it this checkout, which is what is under test, without changing that line
    // (a path dependency would replace the very line the test reads). This checkout's lock file
    // keeps every other crate at a version already downloaded here.
    append(
        &root.join("Cargo.toml"),
        &format!("[patch.crates-io]\nxtask-docker = {{ path = \"{CHECKOUT}\" }}\n"),
    );
    std::fs::copy(
        Path::new(CHECKOUT).join("Cargo.lock"),
        root.join("Cargo.lock"),
    )
    .unwrap();
}

#[test]
fn the_readmes_xtask_setup_builds_and_pushes_a_new_cargo_project() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let agent = tools.engine().unwrap();
    let (dir, project) = cargo_new();
    set_up_the_xtask(&project, true);
    give_an_image(&project, &registry.addr(), Some(&tools));

    let steps = commands("# build, push, and build again");
    assert_eq!(steps.len(), 3, "{steps:?}");
    let mut outputs = Vec::new();
    for argv in &steps {
        let mut command = command(argv, &project);
        command
            .env("DOCKER", &tools.cli28)
            .env("DOCKER_HOST", agent.host())
            .env("DOCKER_CONFIG", agent.docker_config());
        outputs.push(run_ok(command));
    }
    // `check`: the package's stages, `build` cached under its tag.
    let (check, _) = &outputs[0];
    assert!(check.contains("package `hello`"), "{check}");
    assert!(
        check.contains(&format!(
            "build  (cached as `{}/acme/hello:build`)",
            registry.addr()
        )),
        "{check}"
    );
    // The build pushed the stage's cache and the image; the next found it in the registry.
    let mut tags = registry.tags("acme/hello").unwrap();
    tags.retain(|t| !t.starts_with("inputs-"));
    tags.sort();
    assert_eq!(tags, ["build", "latest", "runtime"]);
    let (_, again) = &outputs[2];
    assert!(again.contains("the registry holds this build"), "{again}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_readmes_xtask_setup_works_in_a_project_that_is_a_workspace() {
    // No engine: `check` needs none.
    let dir = testbed::temp_dir("newuser-workspace").unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[workspace]\nmembers = [\"app\"]\nresolver = \"2\"\n",
    )
    .unwrap();
    let argv: Vec<String> = ["cargo", "new", "app"].map(String::from).to_vec();
    run_ok(command(&argv, &dir));
    set_up_the_xtask(&dir, false);
    give_an_image(&dir.join("app"), "127.0.0.1:5999", None);
    let check: Vec<String> = ["cargo", "xtask", "docker", "check"]
        .map(String::from)
        .to_vec();
    assert_eq!(commands("# build, push, and build again")[0], check);
    let (stdout, _) = run_ok(command(&check, &dir));
    assert!(stdout.contains("package `app`"), "{stdout}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// What `engine up --dir DIR` started, stopped by `engine down --dir DIR` when dropped.
struct EngineUp {
    project: PathBuf,
    dir: PathBuf,
    argv: Vec<String>,
}

impl Drop for EngineUp {
    fn drop(&mut self) {
        let mut argv = self.argv.clone();
        let up = argv.iter().position(|a| a == "up").unwrap();
        argv[up] = "down".into();
        argv.truncate(up + 1);
        argv.extend(["--dir".into(), self.dir.display().to_string()]);
        run(command(&argv, &self.project));
    }
}

#[test]
fn the_readmes_try_it_path_works_from_a_new_cargo_project() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let (dir, project) = cargo_new();

    // The clone's `engine up`, run from the project's folder, with an engine and registry of
    // this test's own (`--dir`, a free port), since other work on this machine may use port
    // 5000 and the default folder.
    let up = commands(
        "# from your project's folder, with this repository cloned at /path/to/xtask-docker",
    );
    assert_eq!(up.len(), 2, "{up:?}");
    assert!(up[1][0] == "export" && up[1][1].starts_with("DOCKER_HOST="));
    let engine_dir = dir.join("engine");
    let mut argv = up[0].clone();
    argv.extend([
        "--dir".into(),
        engine_dir.display().to_string(),
        "--port".into(),
        "0".into(),
    ]);
    let (stdout, _) = run_ok(command(&argv, &project));
    let _engine = EngineUp {
        project: project.clone(),
        dir: engine_dir.clone(),
        argv,
    };
    // The `export DOCKER_HOST=...` line it printed, as the README's second line does.
    let host = stdout
        .lines()
        .find_map(|l| l.strip_prefix("export DOCKER_HOST="))
        .expect("an export line")
        .to_string();
    assert_eq!(
        host,
        format!("unix://{}/agent/sock", engine_dir.display()),
        "{stdout}"
    );
    let registry = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("engine up: registry started on `")?
                .split('`')
                .next()
        })
        .expect("the registry's address")
        .to_string();

    give_an_image(&project, &registry, Some(&tools));
    let build = commands("# without an xtask, from your project's folder");
    assert_eq!(build.len(), 1, "{build:?}");
    let config = dir.join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    let mut outputs = Vec::new();
    for _ in 0..2 {
        let mut command = command(&build[0], &project);
        command
            .env("DOCKER_HOST", &host)
            .env("DOCKER_CONFIG", &config);
        outputs.push(run_ok(command));
    }
    assert!(outputs[0].1.contains("Pushed"), "{}", outputs[0].1);
    assert!(
        outputs[1].1.contains("the registry holds this build"),
        "{}",
        outputs[1].1
    );
    drop(_engine);
    std::fs::remove_dir_all(dir).unwrap();
}

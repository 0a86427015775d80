//! Reading the workspace straight from its manifests gives what `cargo metadata --no-deps`
//! gives, on workspaces of every shape the reader accepts; on the shapes it leaves to cargo it
//! answers `None`.

use std::path::{Path, PathBuf};

use xtask_docker::manifest::{self, Workspace};

/// Writes `files` (path, text) under a new temp folder; every folder with a Cargo.toml gets a
/// `src/lib.rs`, since cargo refuses a package without a target.
fn tree(files: &[(&str, &str)]) -> PathBuf {
    let dir = testbed::temp_dir("manifest").unwrap();
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        if path.file_name().unwrap() == "Cargo.toml" && text.contains("[package]") {
            let src = path.parent().unwrap().join("src");
            std::fs::create_dir_all(&src).unwrap();
            std::fs::write(src.join("lib.rs"), "").unwrap();
        }
    }
    dir
}

/// What cargo says, run in `cwd`.
fn cargo(manifest_path: Option<&Path>, cwd: &Path) -> Workspace {
    let mut command = cargo_metadata::MetadataCommand::new();
    command.no_deps().current_dir(cwd);
    if let Some(path) = manifest_path {
        command.manifest_path(path);
    }
    Workspace::from_metadata(&command.exec().expect("cargo metadata"))
}

/// Both readings, from the root's Cargo.toml and, without `--manifest-path`, from `cwd`.
fn assert_same(dir: &Path, cwd: &str) {
    let manifest = dir.join("Cargo.toml");
    let read = manifest::read(Some(&manifest), Path::new("/"))
        .unwrap_or_else(|| panic!("the reader left {} to cargo", dir.display()));
    assert_eq!(read, cargo(Some(&manifest), dir));
    let cwd = dir.join(cwd);
    let read = manifest::read(None, &cwd)
        .unwrap_or_else(|| panic!("the reader left {} to cargo", cwd.display()));
    assert_eq!(read, cargo(None, &cwd));
}

const WORKSPACE: &str = r#"
[workspace]
members = ["zeta", "crates/*", "alpha"]
exclude = ["crates/skipped", "outside-but-listed"]
resolver = "2"

[workspace.package]
version = "2.1.0"
authors = ["A <a@example.com>", "B"]
license = "MIT OR Apache-2.0"
repository = "https://example.com/repo"

[workspace.dependencies]
alpha = { path = "alpha" }
serde = "1"

[workspace.metadata.docker]
registry = "127.0.0.1:5000/acme"
tags = ["{version}", "latest"]
"#;

#[test]
fn a_virtual_workspace_with_globs_inheritance_and_path_dependencies() {
    let top = tree(&[
        ("ws/Cargo.toml", WORKSPACE),
        (
            "far-away/Cargo.toml",
            "[package]\nname = \"far\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
        ),
        (
            "ws/zeta/Cargo.toml",
            r#"[package]
name = "zeta"
version.workspace = true
authors.workspace = true
license.workspace = true
edition = "2021"
description = "the last letter"

[dependencies]
alpha.workspace = true
beta = { path = "../crates/beta" }
serde.workspace = true

[target.'cfg(unix)'.dev-dependencies]
gamma = { path = "../crates/gamma", version = "0.1" }
skipped = { path = "../crates/skipped" }
far = { path = "../../far-away" }
missing = { path = "../crates/skipped/missing" }

[package.metadata.docker]
target = "runtime"
stages = { compile = "compile", base = "base" }
jobs = 4
ratio = 0.5
flags = [true, false]
"#,
        ),
        (
            "ws/crates/beta/Cargo.toml",
            "[package]\nname = \"beta\"\nversion = \"0.1.0\"\nedition = \"2021\"\nrepository.workspace = true\n",
        ),
        (
            "ws/crates/gamma/Cargo.toml",
            "[package]\nname = \"gamma\"\nversion = \"0.3.0-rc.1+build.5\"\nedition = \"2021\"\n\n[package.metadata.docker]\n",
        ),
        (
            "ws/crates/skipped/Cargo.toml",
            "[package]\nname = \"skipped\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
        ),
        (
            "ws/alpha/Cargo.toml",
            "[package]\nname = \"alpha\"\nedition = \"2021\"\nhomepage = \"https://example.com\"\ndocumentation = \"https://docs.example.com\"\nlicense-file = \"LICENSE\"\n\n[package.metadata.other]\nx = 1\n",
        ),
    ]);
    let dir = top.join("ws");
    assert_same(&dir, "zeta/src");
    let read = manifest::read(Some(&dir.join("Cargo.toml")), &dir).unwrap();
    let names: Vec<&str> = read
        .members
        .iter()
        .map(|m| m.labels.name.as_str())
        .collect();
    // Cargo's order: a listed member, then the members among its path dependencies.
    assert_eq!(names, ["zeta", "alpha", "beta", "gamma"]);
    assert_eq!(read.members[0].labels.version, "2.1.0");
    assert_eq!(read.members[1].labels.version, "0.0.0");
    let _ = std::fs::remove_dir_all(&top);
}

#[test]
fn a_root_package_that_is_also_the_workspace() {
    let dir = tree(&[
        (
            "Cargo.toml",
            "[package]\nname = \"root\"\nversion = \"1.0.0\"\nedition = \"2021\"\n\n[package.metadata.docker]\nimage = \"x\"\n\n[workspace]\nmembers = [\"xtask\"]\n\n[dependencies]\nxtask = { path = \"xtask\" }\n",
        ),
        (
            "xtask/Cargo.toml",
            "[package]\nname = \"xtask\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
        ),
    ]);
    assert_same(&dir, "xtask");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_lone_package_and_a_root_listed_as_a_member() {
    let lone = tree(&[(
        "Cargo.toml",
        "[package]\nname = \"lone\"\nversion = \"0.2.0\"\nedition = \"2021\"\nauthors = [\"Me\"]\n\n[package.metadata.docker]\ncache = \"registry\"\n",
    )]);
    assert_same(&lone, "src");
    let dotted = tree(&[(
        "Cargo.toml",
        "[workspace]\nmembers = [\".\", \"./sub/..\"]\n\n[package]\nname = \"dotted\"\nversion = \"0.2.0\"\nedition = \"2021\"\n",
    )]);
    assert_same(&dotted, ".");
    for dir in [lone, dotted] {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn shapes_the_reader_leaves_to_cargo() {
    let package = |name: &str, extra: &str| {
        format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n{extra}")
    };
    let cases: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "a path dependency inside the workspace that no entry lists",
            vec![
                (
                    "Cargo.toml".into(),
                    "[workspace]\nmembers = [\"a\"]\n".into(),
                ),
                (
                    "a/Cargo.toml".into(),
                    package("a", "[dependencies]\nb = { path = \"../b\" }\n"),
                ),
                ("b/Cargo.toml".into(), package("b", "")),
            ],
        ),
        (
            "a glob other than `dir/*`",
            vec![
                (
                    "Cargo.toml".into(),
                    "[workspace]\nmembers = [\"crates/a?\"]\n".into(),
                ),
                ("crates/ab/Cargo.toml".into(), package("ab", "")),
            ],
        ),
        (
            "a glob match without a manifest",
            vec![
                (
                    "Cargo.toml".into(),
                    "[workspace]\nmembers = [\"crates/*\"]\n".into(),
                ),
                ("crates/a/Cargo.toml".into(), package("a", "")),
                ("crates/notes/README".into(), String::new()),
            ],
        ),
        (
            "a key inherited from a workspace that lacks it",
            vec![
                (
                    "Cargo.toml".into(),
                    "[workspace]\nmembers = [\"a\"]\n".into(),
                ),
                (
                    "a/Cargo.toml".into(),
                    package("a", "description.workspace = true\n"),
                ),
            ],
        ),
        (
            "a version that is not semver",
            vec![(
                "Cargo.toml".into(),
                package("a", "").replace("0.1.0", "1.0"),
            )],
        ),
        (
            "a date in the docker table",
            vec![(
                "Cargo.toml".into(),
                package("a", "\n[package.metadata.docker]\nwhen = 2026-11-28\n"),
            )],
        ),
        (
            "a manifest that does not parse",
            vec![("Cargo.toml".into(), "[package\n".into())],
        ),
    ];
    for (why, files) in cases {
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, t)| (p.as_str(), t.as_str()))
            .collect();
        let dir = tree(&files);
        assert_eq!(
            manifest::read(Some(&dir.join("Cargo.toml")), &dir),
            None,
            "{why}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_member_started_from_inside_a_workspace_that_does_not_list_it_is_left_to_cargo() {
    let dir = tree(&[
        ("Cargo.toml", "[workspace]\nmembers = [\"a\"]\n"),
        (
            "a/Cargo.toml",
            "[package]\nname = \"a\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
        ),
        (
            "stray/Cargo.toml",
            "[package]\nname = \"stray\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
        ),
    ]);
    assert_eq!(manifest::read(None, &dir.join("stray")), None);
    // Cargo refuses it, and that refusal is what the user sees.
    let mut command = cargo_metadata::MetadataCommand::new();
    command.no_deps().current_dir(dir.join("stray"));
    assert!(command.exec().is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn this_repository_and_its_examples() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_same(repo, "xtask/src");
    // Each example is a package of its own, in a folder the repository's workspace excludes.
    for example in [
        "service",
        "five-stage",
        "heavy",
        "rust-service",
        "rust-workspace",
    ] {
        assert_same(&repo.join("examples").join(example), ".");
    }
}

/// Loads the tool's packages from `dir` as `build` and `check` do.
fn load(dir: &Path) -> anyhow::Result<Vec<String>> {
    let packages = xtask_docker::workspace::load(
        &xtask_docker::SelectArgs::default().manifest_path(dir.join("Cargo.toml")),
    )?;
    Ok(packages.into_iter().map(|p| p.config.package).collect())
}

#[test]
fn what_the_reader_leaves_to_cargo_loads_through_cargo_metadata() {
    let table = "\n[package.metadata.docker]\nimage = \"127.0.0.1:5000/acme/x\"\n";
    let dir = tree(&[
        ("Cargo.toml", "[workspace]\nmembers = [\"a\"]\n"),
        (
            "a/Cargo.toml",
            &format!("[package]\nname = \"a\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nb = {{ path = \"../b\" }}\n{table}"),
        ),
        (
            "b/Cargo.toml",
            &format!("[package]\nname = \"b\"\nversion = \"0.1.0\"\nedition = \"2021\"\n{table}"),
        ),
        ("a/Dockerfile", "FROM scratch\n"),
        ("b/Dockerfile", "FROM scratch\n"),
    ]);
    assert_eq!(manifest::read(Some(&dir.join("Cargo.toml")), &dir), None);
    // `b` is a member only because `a` depends on it by path: cargo knows.
    assert_eq!(load(&dir).unwrap(), ["a", "b"]);
    // A manifest that does not parse gets cargo's own message.
    std::fs::write(dir.join("b/Cargo.toml"), "[package\n").unwrap();
    let message = format!("{:#}", load(&dir).unwrap_err());
    assert!(message.contains("`cargo metadata` failed"), "{message}");
    assert!(message.contains("b/Cargo.toml"), "{message}");
    let _ = std::fs::remove_dir_all(&dir);
}

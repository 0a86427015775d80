//! The registry check's fingerprint against the real clients: for ignore files whose rules the
//! Docker clients read differently, every file that the 20.10 CLI or buildx puts in the image
//! (`COPY . /ctx/`, exported with `-o type=local`) is one whose edit changes the marker tag.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::docker;

/// (ignore file, files of the context)
const CASES: [(&str, &[&str]); 12] = [
    (
        "**\n!**.rs\n",
        &["build.rs", "src/main.rs", "src/lib.txt", "README.md"],
    ),
    (
        "*.txt\n/!keep.txt\n",
        &["keep.txt", "other.txt", "!keep.txt"],
    ),
    ("d\n!d/f\nd\n", &["d/f", "d/g", "e"]),
    ("a/b\n!a\n", &["a/b/c", "a/x"]),
    ("**/foo\n!x/y*\n", &["x/y/foo/z", "x/foo/q", "foo/q"]),
    ("x\n!**/keep\n", &["x/keep", "x/a/keep", "x/other"]),
    (
        "*\n!src/**/*.rs\n",
        &["src/a.rs", "src/b/c.rs", "src/d.txt", "top.rs"],
    ),
    ("**foo\n", &["barfoo", "x/barfoo", "foo"]),
    ("!a/keep\na\n", &["a/keep", "a/x", "b"]),
    (
        "**\n!util/docker/web\nutil/docker/web/foo\n",
        &["util/docker/web/foo", "util/docker/web/bar", "util/x"],
    ),
    (
        "target\n!target/release/app\n",
        &[
            "target/release/app",
            "target/release/dep",
            "target/debug/app",
            "src/main.rs",
        ],
    ),
    (
        "docs\n!docs/**/*.md\n",
        &["docs/a.md", "docs/sub/b.md", "docs/c.txt"],
    ),
];

/// The marker tag a dry run prints for the package in `dir`.
fn marker(dir: &Path) -> String {
    let out = support::on_default_branch(&mut Command::new(env!("CARGO_BIN_EXE_xtask-docker")))
        .args(["docker", "build", "--dry-run", "--push", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.split_whitespace()
        .find(|w| w.contains(":inputs-"))
        .unwrap_or_else(|| panic!("no marker tag in {text}"))
        .to_string()
}

/// The regular files under `dir`, relative to it.
fn files(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.file_type().unwrap().is_dir() {
            files(&entry.path(), &format!("{name}/"), out);
        } else {
            out.push(name);
        }
    }
}

#[test]
fn every_file_a_client_sends_changes_the_marker() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let engine = tools.engine().unwrap();
    // Three cases at a time: a build mostly waits for BuildKit's session.
    std::thread::scope(|scope| {
        for chunk in CASES.chunks(CASES.len().div_ceil(3)).enumerate() {
            let (tools, engine) = (&tools, &engine);
            scope.spawn(move || {
                for (j, case) in chunk.1.iter().enumerate() {
                    check(tools, engine, chunk.0 * 10 + j, case);
                }
            });
        }
    });
}

/// Builds one case with both clients and edits every file they sent.
fn check(tools: &testbed::Tools, engine: &testbed::Engine, i: usize, case: &(&str, &[&str])) {
    let (ignore, paths) = *case;
    {
        let dir = testbed::temp_dir(&format!("fingerprint-{i}")).unwrap();
        std::fs::write(
            dir.join("Cargo.toml"),
            "[package]\nname = \"svc\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [package.metadata.docker]\nimage = \"127.0.0.1:5000/test/svc\"\nnetwork = \"none\"\n",
        )
        .unwrap();
        // Outside the context, so that the export holds the context's files only.
        let dockerfile = dir.join("build/Dockerfile");
        std::fs::create_dir_all(dockerfile.parent().unwrap()).unwrap();
        std::fs::write(&dockerfile, "FROM scratch\nCOPY . /ctx/\n").unwrap();
        let context = dir.join("ctx");
        for path in paths {
            let file = context.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, path).unwrap();
        }
        std::fs::write(context.join(".dockerignore"), ignore).unwrap();
        let mut manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        manifest.push_str("dockerfile = \"build/Dockerfile\"\ncontext = \"ctx\"\n");
        std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();

        let mut sent: Vec<(String, String)> = Vec::new();
        for (client, cli) in [("docker 20.10", &tools.cli20), ("buildx", &tools.cli28)] {
            let out: PathBuf = dir.join(format!("out-{}", sent.len()));
            let dest = format!("type=local,dest={}", out.display());
            let args: Vec<&str> = if client == "buildx" {
                vec!["buildx", "build", "-q"]
            } else {
                vec!["build", "-q"]
            };
            let run = docker(cli, engine, &args)
                .env("DOCKER_BUILDKIT", "1")
                .args(["-f", dockerfile.to_str().unwrap(), "-o", &dest])
                .arg(&context)
                .output()
                .unwrap();
            assert!(
                run.status.success(),
                "{client} with {ignore:?}: {}",
                String::from_utf8_lossy(&run.stderr)
            );
            let mut exported = Vec::new();
            if out.join("ctx").exists() {
                files(&out.join("ctx"), "", &mut exported);
            }
            sent.extend(exported.into_iter().map(|f| (client.to_string(), f)));
        }
        assert!(!sent.is_empty(), "{ignore:?}: the clients sent nothing");
        for (client, file) in sent {
            if file == ".dockerignore" {
                continue;
            }
            let before = marker(&dir);
            let path = context.join(&file);
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, format!("{text} edited")).unwrap();
            assert_ne!(
                marker(&dir),
                before,
                "{client} sends `{file}` under {ignore:?}, and its edit must change the marker"
            );
            std::fs::write(&path, text).unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The benchmark's fixtures: the repository's examples, each made into a git repository per
//! contender (with busybox, its image moved to the benchmark's registry) that every run clones
//! afresh, and the commits of the scenarios.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use clap::ValueEnum;
use serde::Serialize;

use crate::test::root;

/// A fixture, by the name of its folder under `examples/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FixtureName {
    /// A real Rust service (`examples/rust-service`: about 45 crates.io packages, vendored),
    /// built with a cargo-chef Dockerfile from the testbed's Rust images.
    RustService,
    /// A real Rust workspace (`examples/rust-workspace`): two services sharing a library crate,
    /// each with its own image from the one cargo-chef Dockerfile at the root.
    RustWorkspace,
    /// Two stages: `compile` (8 MiB, 3 s of steps) and a small `runtime`.
    Service,
    /// A shared base, two compile stages that run in parallel, a runtime that copies from both.
    FiveStage,
    /// A compile stage that carries about 96 MiB (toolchain and dependencies), a small runtime.
    Heavy,
}

/// What the benchmark needs to know of a fixture besides its files.
#[derive(Debug, Clone, Copy)]
pub struct Fixture {
    /// Which one.
    pub name: FixtureName,
    /// The final stage (the table's `target`).
    pub target: &'static str,
    /// The stages the hand-written script builds, in its order (each cached stage, then the
    /// final one): each with `--cache-from` its own image and those of the stages before it.
    pub seed_stages: &'static [&'static str],
    /// The cache tags the tool writes with inline cache, the final target's first: what the
    /// best hand-written classic command reads with `--cache-from`.
    pub cache_tags: &'static [&'static str],
    /// The file the `changed` scenario edits, relative to the fixture.
    pub changed_file: &'static str,
    /// The stages downstream of that file: the only ones whose steps should run after the edit.
    pub downstream: &'static [&'static str],
    /// How many Dockerfile steps depend on that file: all that should run after the edit.
    pub changed_steps: u64,
    /// The package whose version the `dep-bump` scenario moves in `Cargo.lock` (Rust
    /// fixtures; their dependencies are vendored into the checkout again after each bump).
    pub bumped: Option<&'static str>,
    /// The workspace's services that have an image (`<namespace>/<app>`), each built from the
    /// one Dockerfile with `--build-arg APP=<app>`; empty for a single package, whose image is
    /// `<namespace>/<fixture>`.
    pub apps: &'static [&'static str],
}

/// Every fixture, in report order: real Rust first.
pub const ALL: [FixtureName; 5] = [
    FixtureName::RustService,
    FixtureName::RustWorkspace,
    FixtureName::Service,
    FixtureName::FiveStage,
    FixtureName::Heavy,
];

impl FixtureName {
    /// The folder name under `examples/`.
    pub fn as_str(self) -> &'static str {
        match self {
            FixtureName::RustService => "rust-service",
            FixtureName::RustWorkspace => "rust-workspace",
            FixtureName::Service => "service",
            FixtureName::FiveStage => "five-stage",
            FixtureName::Heavy => "heavy",
        }
    }

    /// Whether it compiles real Rust: it builds from the testbed's Rust images (served by
    /// every registry, named by the build arguments `RUST_IMAGE` and `RUNTIME_IMAGE`) and its
    /// dependencies are vendored into its checkout.
    pub fn is_rust(self) -> bool {
        matches!(self, FixtureName::RustService | FixtureName::RustWorkspace)
    }

    /// Whether its example has a cache-mount Dockerfile (`Dockerfile.mounts`), which the
    /// `tool-mounts` contender builds.
    pub fn has_mounts_variant(self) -> bool {
        self == FixtureName::RustService
    }

    /// The fixture's particulars (they mirror each example's Cargo.toml and Dockerfile).
    pub fn fixture(self) -> Fixture {
        match self {
            FixtureName::RustService => Fixture {
                name: self,
                target: "runtime",
                seed_stages: &["deps", "compile", "runtime"],
                // `deps = "deps-{branch}"`, `compile = "compile-{branch}"` on `main`.
                cache_tags: &["runtime", "deps-main", "compile-main"],
                changed_file: "src/main.rs",
                // The planner (not cached) copies the sources too; its recipe stays the same.
                downstream: &["compile", "planner", "runtime"],
                // `COPY . .` and `cargo chef prepare` of the planner, `COPY . .` and `cargo
                // build` of `compile`, `COPY --from=compile`.
                changed_steps: 5,
                bumped: Some("serde_json"),
                apps: &[],
            },
            FixtureName::RustWorkspace => Fixture {
                name: self,
                target: "runtime",
                seed_stages: &["deps", "compile", "runtime"],
                // Per service, as for the service.
                cache_tags: &["runtime", "deps-main", "compile-main"],
                changed_file: "crates/api/src/main.rs",
                // The api's; the worker's planner copies the whole workspace too (its recipe
                // stays the same), its compile stage copies only the shared crate and its own.
                downstream: &[
                    "api/compile",
                    "api/planner",
                    "api/runtime",
                    "worker/planner",
                ],
                // Each planner's `COPY . .` and `cargo chef prepare`, the api's `COPY
                // crates/api` and `cargo build`, its `COPY --from=compile`.
                changed_steps: 7,
                bumped: Some("serde_json"),
                apps: &["api", "worker"],
            },
            FixtureName::Service => Fixture {
                name: self,
                target: "runtime",
                seed_stages: &["compile", "runtime"],
                // `runtime = "dev"` in its table.
                cache_tags: &["dev", "compile"],
                changed_file: "src/main.rs",
                downstream: &["compile", "runtime"],
                // `COPY src`, the `RUN` after it, `COPY --from=compile`.
                changed_steps: 3,
                bumped: None,
                apps: &[],
            },
            FixtureName::FiveStage => Fixture {
                name: self,
                target: "runtime",
                seed_stages: &["base", "compile-a", "compile-b", "runtime"],
                // The final target's cache tag defaults to its stage name.
                cache_tags: &["runtime", "base", "compile-a", "compile-b"],
                changed_file: "a/source.txt",
                downstream: &["compile-a", "runtime"],
                // `COPY a`, its `RUN`, and both `COPY --from` of the runtime (the second one's
                // parent layer changed).
                changed_steps: 4,
                bumped: None,
                apps: &[],
            },
            FixtureName::Heavy => Fixture {
                name: self,
                target: "runtime",
                seed_stages: &["compile", "runtime"],
                cache_tags: &["runtime", "compile", "base"],
                changed_file: "src/main.rs",
                downstream: &["compile", "runtime"],
                changed_steps: 3,
                bumped: None,
                apps: &[],
            },
        }
    }
}

/// What a contender's checkout builds in place of the example's Dockerfile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Another Dockerfile next to the example's (its stages its own).
    File(&'static str),
    /// The example's, each `RUN` with `--network=none`: for a build command that cannot set
    /// the build's network (`buildx bake` before buildx 0.14 has no `network` key), on an
    /// engine without a bridge, where a `RUN` with a network fails. It runs the same commands
    /// in the same sandbox.
    RunWithoutNetwork,
}

/// `dockerfile` with `--network=none` on each `RUN` instruction.
pub fn run_without_network(dockerfile: &str) -> String {
    dockerfile
        .lines()
        .map(|line| match line.strip_prefix("RUN ") {
            Some(rest) => format!("RUN --network=none {rest}\n"),
            None => format!("{line}\n"),
        })
        .collect()
}

/// The registry address every example's image names; the checkout replaces it.
const EXAMPLE_REGISTRY: &str = "127.0.0.1:5000/acme/";

/// One contender's checkout of a fixture: a git repository made of the example (without its
/// `busybox` and `target`, with the testbed's static busybox), its image under the contender's
/// namespace. Every run builds from a fresh clone of it ([`Checkout::clone_fresh`]), as a CI
/// agent does: the clone gives every file the clone's time, which cargo's freshness rule sees.
/// Each scenario's change is a commit.
#[derive(Debug)]
pub struct Checkout {
    /// The repository's folder.
    pub repo: PathBuf,
    /// The Cargo.toml's text with `{REGISTRY}` where the registry's address goes.
    template: String,
    /// How many times `changed` edited it.
    edits: u32,
}

/// A fresh clone of a [`Checkout`]: the build context of one run. Deleted when dropped.
#[derive(Debug)]
pub struct Clone {
    /// The clone's folder: the build context.
    pub dir: PathBuf,
    /// Its Cargo.toml.
    pub manifest: PathBuf,
}

impl Checkout {
    /// Makes the repository of the example `fixture`. Its image will live under `namespace`;
    /// `extra` lines go into the table after `network = "none"`; `variant` is a Dockerfile
    /// that replaces the example's (the cache-mount variant).
    pub fn new(
        fixture: FixtureName,
        busybox: &Path,
        namespace: &str,
        extra: &str,
        variant: Option<Variant>,
    ) -> Result<Checkout> {
        let name = fixture.as_str();
        let dir = testbed::temp_dir(&format!("bench-{name}"))?;
        let example = root().join("examples").join(name);
        for entry in fs::read_dir(&example)
            .with_context(|| format!("cannot read `{}`", example.display()))?
        {
            let entry = entry?;
            let file_name = entry.file_name();
            if file_name == "busybox" || file_name == "target" {
                continue;
            }
            let from = entry.path();
            if from.is_dir() {
                testbed::copy_dir(&from, &dir.join(&file_name))?;
            } else {
                fs::copy(&from, dir.join(&file_name))
                    .with_context(|| format!("cannot copy `{}`", from.display()))?;
            }
        }
        fs::copy(busybox, dir.join("busybox"))
            .with_context(|| format!("cannot copy `{}`", busybox.display()))?;
        let dockerfile = dir.join("Dockerfile");
        match variant {
            Some(Variant::File(file)) => {
                let from = example.join(file);
                fs::copy(&from, &dockerfile)
                    .with_context(|| format!("cannot copy `{}`", from.display()))?;
            }
            Some(Variant::RunWithoutNetwork) => {
                let text = fs::read_to_string(&dockerfile)
                    .with_context(|| format!("cannot read `{}`", dockerfile.display()))?;
                fs::write(&dockerfile, run_without_network(&text))
                    .with_context(|| format!("cannot write `{}`", dockerfile.display()))?;
            }
            None => {}
        }
        let manifest = dir.join("Cargo.toml");
        let mut text = fs::read_to_string(&manifest)?;
        // The variant has stages of its own, and its registry cache needs no stage tags.
        if matches!(variant, Some(Variant::File(_))) {
            text = without_table(&text, "[package.metadata.docker.stages]");
        }
        ensure!(
            text.contains(EXAMPLE_REGISTRY) && text.contains("network = \"none\""),
            "the example `{name}` no longer names `{EXAMPLE_REGISTRY}` or `network = \"none\"`; update the benchmark"
        );
        let mut template = text.replace(EXAMPLE_REGISTRY, &format!("{{REGISTRY}}/{namespace}/"));
        if !extra.is_empty() {
            template = template.replacen(
                "network = \"none\"",
                &format!("network = \"none\"\n{extra}"),
                1,
            );
        }
        if fixture.is_rust() {
            vendor(&dir)?;
        }
        git(&dir, &["init", "--quiet", "--initial-branch", "main"])?;
        let mut checkout = Checkout {
            repo: dir,
            template,
            edits: 0,
        };
        checkout.point_at("127.0.0.1:5000", &[])?;
        Ok(checkout)
    }

    /// Points the checkout's image at the registry `addr` (`127.0.0.1:PORT`), with the
    /// build arguments `build_args` (`KEY=VALUE`: the Rust images that registry serves) in its
    /// table, as a commit.
    pub fn point_at(&mut self, addr: &str, build_args: &[String]) -> Result<()> {
        let manifest = self.repo.join("Cargo.toml");
        let mut text = self.template.replace("{REGISTRY}", addr);
        if !build_args.is_empty() {
            let table: Vec<String> = build_args
                .iter()
                .filter_map(|a| a.split_once('='))
                .map(|(k, v)| format!("{k} = \"{v}\""))
                .collect();
            text = text.replacen(
                "network = \"none\"",
                &format!(
                    "network = \"none\"\nbuild-args = {{ {} }}",
                    table.join(", ")
                ),
                1,
            );
        }
        fs::write(&manifest, text)
            .with_context(|| format!("cannot write `{}`", manifest.display()))?;
        self.commit("point at the registry")
    }

    /// Commits whatever changed (or nothing: the next commit of a repository whose images'
    /// layers do not change, only their revision label).
    pub fn commit(&mut self, message: &str) -> Result<()> {
        git(&self.repo, &["add", "--all"])?;
        git(
            &self.repo,
            &[
                "commit",
                "--quiet",
                "--allow-empty",
                "--no-verify",
                "-m",
                message,
            ],
        )
    }

    /// A fresh clone (untimed: a CI agent's checkout comes before the build).
    pub fn clone_fresh(&self) -> Result<Clone> {
        let dir = testbed::temp_dir("bench-clone")?;
        let _ = fs::remove_dir(&dir);
        let repo = self.repo.display().to_string();
        let target = dir.display().to_string();
        git(
            Path::new("/"),
            &["clone", "--quiet", "--no-hardlinks", &repo, &target],
        )?;
        Ok(Clone {
            manifest: dir.join("Cargo.toml"),
            dir,
        })
    }

    /// Changes one source file so that its content differs from every earlier state: a line
    /// is appended (a new one every time, so that each `changed` run has a change to rebuild),
    /// as a commit.
    pub fn edit(&mut self, fixture: &Fixture) -> Result<()> {
        self.edits += 1;
        let path = self.repo.join(fixture.changed_file);
        let mut text = fs::read_to_string(&path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        let line = if fixture.changed_file.ends_with(".rs") {
            format!("// benchmark change {}\n", self.edits)
        } else {
            format!("benchmark change {}\n", self.edits)
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&line);
        fs::write(&path, text).with_context(|| format!("cannot write `{}`", path.display()))?;
        self.commit("edit")
    }
}

impl Checkout {
    /// Moves the package `krate` one patch version down in `Cargo.lock` (each bump to a version
    /// the checkout never had, so that every `dep-bump` run has a new dependency to compile, as
    /// a dependency bot's pull requests do), vendors the sources again, and commits. Untimed:
    /// `cargo update` asks crates.io's index.
    pub fn bump(&mut self, krate: &str) -> Result<String> {
        let lock = self.repo.join("Cargo.lock");
        let text = fs::read_to_string(&lock)
            .with_context(|| format!("cannot read `{}`", lock.display()))?;
        let version = locked_version(&text, krate)
            .with_context(|| format!("`{krate}` is not in `{}`", lock.display()))?;
        let (stem, patch) = version
            .rsplit_once('.')
            .and_then(|(stem, patch)| Some((stem, patch.parse::<u32>().ok()?)))
            .with_context(|| format!("`{krate}` has the version `{version}`"))?;
        let manifest = self.repo.join("Cargo.toml").display().to_string();
        let cargo = crate::test::cargo();
        let mut tried = Vec::new();
        for down in 1..=4 {
            let Some(patch) = patch.checked_sub(down) else {
                break;
            };
            let precise = format!("{stem}.{patch}");
            let output = std::process::Command::new(&cargo)
                .args(["update", "--quiet", "--manifest-path", &manifest, "-p"])
                .arg(krate)
                .args(["--precise", &precise])
                .env_remove("CARGO_TARGET_DIR")
                .output()
                .with_context(|| format!("cannot run `{cargo}`"))?;
            if output.status.success() {
                vendor(&self.repo)?;
                self.commit(&format!("bump {krate} to {precise}"))?;
                return Ok(precise);
            }
            tried.push(format!(
                "{precise}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        anyhow::bail!(
            "cannot move `{krate}` down from `{version}`:\n{}",
            tried.join("\n")
        )
    }
}

/// `text` (a Cargo.toml) without the table `header` and its keys, up to the next table.
fn without_table(text: &str, header: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            inside = trimmed == header;
        }
        if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The version `Cargo.lock`'s text gives the package `krate` (its first entry).
fn locked_version<'t>(text: &'t str, krate: &str) -> Option<&'t str> {
    let at = text.find(&format!("\nname = \"{krate}\"\nversion = \""))?;
    let rest = &text[at..];
    let start = rest.find("version = \"")? + "version = \"".len();
    let end = rest[start..].find('"')?;
    Some(&rest[start..start + end])
}

/// Makes the Rust project in `dir` build offline: its dependencies' sources in `vendor/`, and
/// `.cargo/config.toml` pointing cargo at them.
pub fn vendor(dir: &Path) -> Result<()> {
    testbed::rust::vendor(dir)
        .with_context(|| format!("cannot vendor the dependencies of `{}`", dir.display()))
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.repo);
    }
}

impl Drop for Clone {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs `git ARGS` in `dir`, with an author of its own (the machine may have none).
fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let output = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.invalid")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.invalid")
        .output()
        .with_context(|| "cannot run `git`".to_string())?;
    ensure!(
        output.status.success(),
        "`git {}` in `{}` failed: {}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// `<addr>/<namespace>/<fixture>:<tag>`.
pub fn image(addr: &str, namespace: &str, fixture: FixtureName, tag: &str) -> String {
    format!("{addr}/{namespace}/{}:{tag}", fixture.as_str())
}

/// `<addr>/<namespace>/<app>:<tag>`: the image of one of a workspace's services.
pub fn app_image(addr: &str, namespace: &str, app: &str, tag: &str) -> String {
    format!("{addr}/{namespace}/{app}:{tag}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn puts_every_run_of_a_dockerfile_in_no_network() {
        let dockerfile = "FROM x AS a\nRUN cargo build\nCOPY . .\n# RUN not this\nRUN --mount=type=cache,target=/c true\n";
        assert_eq!(
            super::run_without_network(dockerfile),
            "FROM x AS a\nRUN --network=none cargo build\nCOPY . .\n# RUN not this\nRUN --network=none --mount=type=cache,target=/c true\n"
        );
    }

    #[test]
    fn reads_a_locked_version() {
        let lock = "[[package]]\nname = \"serde\"\nversion = \"1.0.228\"\n\n[[package]]\nname = \"serde_json\"\nversion = \"1.0.154\"\nsource = \"x\"\n";
        assert_eq!(super::locked_version(lock, "serde_json"), Some("1.0.154"));
        assert_eq!(super::locked_version(lock, "serde"), Some("1.0.228"));
        assert_eq!(super::locked_version(lock, "toml"), None);
    }

    #[test]
    fn drops_one_table() {
        let toml = "[package]\nname = \"a\"\n\n[package.metadata.docker]\nimage = \"x\"\n\n[package.metadata.docker.stages]\ndeps = \"deps\"\n\n[dependencies]\nserde = \"1\"\n";
        let out = super::without_table(toml, "[package.metadata.docker.stages]");
        assert!(
            !out.contains("deps = ")
                && out.contains("image = \"x\"")
                && out.contains("serde = \"1\""),
            "{out}"
        );
    }
}

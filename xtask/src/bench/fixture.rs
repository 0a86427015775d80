//! The benchmark's fixtures: the repository's three examples, each copied into a temporary
//! folder per contender (with busybox, its image moved to the benchmark's registry), and the
//! edit of the `changed` scenario.

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
}

/// Every fixture, in report order.
pub const ALL: [FixtureName; 3] = [
    FixtureName::Service,
    FixtureName::FiveStage,
    FixtureName::Heavy,
];

impl FixtureName {
    /// The folder name under `examples/`.
    pub fn as_str(self) -> &'static str {
        match self {
            FixtureName::Service => "service",
            FixtureName::FiveStage => "five-stage",
            FixtureName::Heavy => "heavy",
        }
    }

    /// The fixture's particulars (they mirror each example's Cargo.toml and Dockerfile).
    pub fn fixture(self) -> Fixture {
        match self {
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
            },
            FixtureName::Heavy => Fixture {
                name: self,
                target: "runtime",
                seed_stages: &["compile", "runtime"],
                cache_tags: &["runtime", "compile", "base"],
                changed_file: "src/main.rs",
                downstream: &["compile", "runtime"],
                changed_steps: 3,
            },
        }
    }
}

/// The registry address every example's image names; the copy replaces it.
const EXAMPLE_REGISTRY: &str = "127.0.0.1:5000/acme/";

/// One contender's copy of a fixture.
#[derive(Debug)]
pub struct Copy {
    /// The copy's folder: the build context.
    pub dir: PathBuf,
    /// Its Cargo.toml.
    pub manifest: PathBuf,
    /// The Cargo.toml's text with `{REGISTRY}` where the registry's address goes.
    template: String,
    /// How many times `changed` edited it.
    edits: u32,
}

impl Copy {
    /// Copies the example `fixture` (without its `busybox` and `target`, with the testbed's
    /// static busybox) into a new temporary folder. Its image will live under `namespace`;
    /// `extra` lines go into the table after `network = "none"`.
    pub fn new(fixture: FixtureName, busybox: &Path, namespace: &str, extra: &str) -> Result<Copy> {
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
        let manifest = dir.join("Cargo.toml");
        let text = fs::read_to_string(&manifest)?;
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
        Ok(Copy {
            dir,
            manifest,
            template,
            edits: 0,
        })
    }

    /// Points the copy's image at the registry `addr` (`127.0.0.1:PORT`).
    pub fn point_at(&self, addr: &str) -> Result<()> {
        fs::write(&self.manifest, self.template.replace("{REGISTRY}", addr))
            .with_context(|| format!("cannot write `{}`", self.manifest.display()))
    }

    /// Changes one source file so that its content differs from every earlier state: a line
    /// is appended (a new one every time, so that each `changed` run has a change to rebuild).
    pub fn edit(&mut self, fixture: &Fixture) -> Result<()> {
        self.edits += 1;
        let path = self.dir.join(fixture.changed_file);
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
        fs::write(&path, text).with_context(|| format!("cannot write `{}`", path.display()))
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `<addr>/<namespace>/<fixture>:<tag>`.
pub fn image(addr: &str, namespace: &str, fixture: FixtureName, tag: &str) -> String {
    format!("{addr}/{namespace}/{}:{tag}", fixture.as_str())
}

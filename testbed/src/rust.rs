//! Rust images made from Debian's packages, for tests that compile real Rust: a toolchain image
//! (Debian 13 `minbase` with `rustc`, `cargo`, `libc6-dev`, `gcc`, and a pinned `cargo-chef` in
//! `/usr/local/bin`) and a runtime image (Debian 13 `minbase`).
//!
//! They are made once per machine by `cargo xtask engine install` ([`make`]) and kept under
//! [`CACHE_DIR`], in a folder named by a hash of everything that went into them (suite, package
//! lists, trimmed paths, mirror, cargo-chef's version, the recipe's own version), so that a change
//! to any of them makes new images and an unchanged machine reuses the old ones. Making them
//! imports both root file systems into a private engine and pushes them into a private registry
//! with the 20.10 CLI; that registry's storage is kept. A test then serves them from its own
//! registry ([`RustImages::serve`]): the kept storage is copied in (blobs hard-linked), so every
//! test registry holds the very same images, by the same digests, at no cost, as an image hub
//! would.
//!
//! ```no_run
//! let Some((tools, images)) = testbed::require_rust() else { return };
//! let registry = tools.registry().unwrap();
//! let served = images.serve(&registry).unwrap();
//! // docker build --build-arg RUST_IMAGE={served.toolchain} --build-arg RUNTIME_IMAGE={served.runtime}
//! assert!(served.toolchain.contains("/library/rust@sha256:"));
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

use crate::{Registry, RegistryOptions, Tools};

/// Where the images and cargo-chef are kept between runs.
pub const CACHE_DIR: &str = "/var/cache/xtask-docker-testbed";

/// The cargo-chef put into the toolchain image (`cargo install cargo-chef --locked --version`).
pub const CARGO_CHEF_VERSION: &str = "0.1.78";

/// The Debian release both images are made of (rustc 1.85).
pub const SUITE: &str = "trixie";

/// The packages of the toolchain image, on top of `minbase`.
pub const TOOLCHAIN_PACKAGES: [&str; 4] = ["rustc", "cargo", "libc6-dev", "gcc"];

/// Paths dpkg leaves out of both images: documentation, manual pages, translations.
const TRIMMED: [&str; 3] = [
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/locale/*",
];

/// The repository and tag of the toolchain image in a test's registry.
pub const TOOLCHAIN_REPO: &str = "library/rust";
/// The repository of the runtime image in a test's registry.
pub const RUNTIME_REPO: &str = "library/debian";
/// The tag both images are pushed under.
pub const TAG: &str = "trixie";

/// The version of the way the images are made: raised when it changes in a way the key does
/// not otherwise see, so that machines make them again.
const RECIPE: u32 = 1;

/// The made images, found in [`CACHE_DIR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RustImages {
    /// The folder of this set of images, `CACHE_DIR/images-<key>`.
    pub dir: PathBuf,
    /// The toolchain's root file system as a tarball (what `docker import` read).
    pub toolchain_tar: PathBuf,
    /// The runtime's root file system as a tarball.
    pub runtime_tar: PathBuf,
    /// The cargo-chef binary that is in the toolchain image as `/usr/local/bin/cargo-chef`.
    pub cargo_chef: PathBuf,
    /// The toolchain image's manifest digest, `sha256:...`.
    pub toolchain_digest: String,
    /// The runtime image's manifest digest.
    pub runtime_digest: String,
}

/// The images as one test registry serves them: references pinned by digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedImages {
    /// `127.0.0.1:PORT/library/rust@sha256:...`.
    pub toolchain: String,
    /// `127.0.0.1:PORT/library/debian@sha256:...`.
    pub runtime: String,
}

impl ServedImages {
    /// The build arguments the examples' Dockerfiles take for them:
    /// `["RUST_IMAGE=...", "RUNTIME_IMAGE=..."]`.
    pub fn build_args(&self) -> [String; 2] {
        [
            format!("RUST_IMAGE={}", self.toolchain),
            format!("RUNTIME_IMAGE={}", self.runtime),
        ]
    }
}

impl RustImages {
    /// Puts both images into `registry` (under [`TOOLCHAIN_REPO`] and [`RUNTIME_REPO`], tag
    /// [`TAG`]) by copying the kept registry storage into its storage, blobs hard-linked, and
    /// returns the references pinned by digest. Takes well under a second.
    pub fn serve(&self, registry: &Registry) -> Result<ServedImages> {
        let from = self.dir.join("registry/data");
        let to = registry.dir().join("data");
        copy_storage(&from, &to)
            .with_context(|| format!("cannot copy the Rust images into `{}`", to.display()))?;
        let addr = registry.addr();
        for (repo, digest) in [
            (TOOLCHAIN_REPO, &self.toolchain_digest),
            (RUNTIME_REPO, &self.runtime_digest),
        ] {
            let found = registry.manifest_digest(repo, TAG)?;
            if found.as_ref() != Some(digest) {
                bail!("registry `{addr}` serves `{repo}:{TAG}` as {found:?}, not `{digest}`");
            }
        }
        Ok(ServedImages {
            toolchain: format!("{addr}/{TOOLCHAIN_REPO}@{}", self.toolchain_digest),
            runtime: format!("{addr}/{RUNTIME_REPO}@{}", self.runtime_digest),
        })
    }
}

/// Copies a registry's storage: blob data (written once, never changed) hard-linked, falling
/// back to a copy across file systems; every other file (links, which a push rewrites) copied.
fn copy_storage(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("cannot create `{}`", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("cannot read `{}`", from.display()))? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            copy_storage(&source, &target)?;
        } else if target.exists() {
            continue;
        } else if entry.file_name() == "data"
            && source.components().any(|c| c.as_os_str() == "blobs")
        {
            if fs::hard_link(&source, &target).is_err() {
                fs::copy(&source, &target)?;
            }
        } else {
            fs::copy(&source, &target)?;
        }
    }
    Ok(())
}

/// What the images are made of: every input, one per line. Its hash names their folder.
fn key_text(mirror: &str) -> String {
    format!(
        "recipe {RECIPE}\nsuite {SUITE}\nvariant minbase\nmirror {mirror}\ntoolchain {}\ntrimmed {}\ncargo-chef {CARGO_CHEF_VERSION}\n",
        TOOLCHAIN_PACKAGES.join(","),
        TRIMMED.join(",")
    )
}

fn images_dir(mirror: &str) -> PathBuf {
    let hash = Sha256::digest(key_text(mirror).as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    Path::new(CACHE_DIR).join(format!("images-{hex}"))
}

fn cargo_chef_dir() -> PathBuf {
    Path::new(CACHE_DIR).join(format!("cargo-chef-{CARGO_CHEF_VERSION}"))
}

/// The images made for this machine's mirror, if they are there.
pub fn find() -> Option<RustImages> {
    read(&images_dir(&crate::install::find_mirror()))
}

/// Reads a complete images folder: its `images.txt` (`toolchain DIGEST`, `runtime DIGEST`), the
/// tarballs and the registry storage.
fn read(dir: &Path) -> Option<RustImages> {
    let text = fs::read_to_string(dir.join("images.txt")).ok()?;
    let digest = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .filter(|d| d.starts_with("sha256:"))
            .map(str::to_string)
    };
    let images = RustImages {
        dir: dir.to_path_buf(),
        toolchain_tar: dir.join("toolchain.tar"),
        runtime_tar: dir.join("runtime.tar"),
        cargo_chef: cargo_chef_dir().join("bin/cargo-chef"),
        toolchain_digest: digest("toolchain")?,
        runtime_digest: digest("runtime")?,
    };
    let complete = images.toolchain_tar.is_file()
        && images.runtime_tar.is_file()
        && images.cargo_chef.is_file()
        && dir.join("registry/data/docker/registry/v2").is_dir();
    complete.then_some(images)
}

/// Makes whatever is missing (cargo-chef, the two root file systems, the kept registry with both
/// images), printing each step and its time, and returns the images. Needs root, `mmdebstrap`,
/// the engine's tools and the network to the Debian mirror and crates.io.
pub fn make(tools: &Tools) -> Result<RustImages> {
    let mirror = crate::install::find_mirror();
    let dir = images_dir(&mirror);
    if let Some(images) = read(&dir) {
        println!(
            "engine install: Rust images present in `{}` (toolchain `{}`)",
            dir.display(),
            images.toolchain_digest
        );
        return Ok(images);
    }
    let sh = Shell::new()?;
    let chef = make_cargo_chef(&sh)?;
    let partial = dir.with_extension("partial");
    crate::install::clear_dir(&partial)?;
    let toolchain_tar = partial.join("toolchain.tar");
    let runtime_tar = partial.join("runtime.tar");
    let include = format!("--include={}", TOOLCHAIN_PACKAGES.join(","));
    let copy_chef = format!("--customize-hook=copy-in {} /usr/local/bin", chef.display());
    if chef.display().to_string().contains(char::is_whitespace) {
        bail!(
            "the cargo-chef path `{}` has a space, which mmdebstrap's hook would split",
            chef.display()
        );
    }
    mmdebstrap(
        &sh,
        &[include.as_str(), copy_chef.as_str()],
        &toolchain_tar,
        &mirror,
    )
    .context("step `mmdebstrap` of the toolchain image failed")?;
    mmdebstrap(&sh, &[], &runtime_tar, &mirror)
        .context("step `mmdebstrap` of the runtime image failed")?;
    let (toolchain_digest, runtime_digest) = seed(tools, &partial, &toolchain_tar, &runtime_tar)?;
    fs::write(
        partial.join("images.txt"),
        format!(
            "toolchain {toolchain_digest}\nruntime {runtime_digest}\n# made of:\n{}",
            key_text(&mirror)
        ),
    )?;
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot clear `{}`", dir.display()))?;
    }
    fs::rename(&partial, &dir)
        .with_context(|| format!("cannot move `{}` to `{}`", partial.display(), dir.display()))?;
    let images = read(&dir).with_context(|| format!("`{}` is incomplete", dir.display()))?;
    println!(
        "engine install: Rust images made in `{}`: toolchain {} MB (`{}`), runtime {} MB",
        dir.display(),
        size_mb(&images.toolchain_tar),
        images.toolchain_digest,
        size_mb(&images.runtime_tar)
    );
    Ok(images)
}

fn size_mb(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len() / 1_000_000)
}

/// `cargo install cargo-chef --locked --version V --root CACHE_DIR/cargo-chef-V`, unless there.
fn make_cargo_chef(sh: &Shell) -> Result<PathBuf> {
    let root = cargo_chef_dir();
    let binary = root.join("bin/cargo-chef");
    if binary.is_file() {
        println!(
            "engine install: cargo-chef present at `{}`",
            binary.display()
        );
        return Ok(binary);
    }
    let partial = root.with_extension("partial");
    crate::install::clear_dir(&partial)?;
    let target = crate::temp_dir("cargo-chef")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    println!("engine install: building cargo-chef {CARGO_CHEF_VERSION} (`cargo install --locked`, about 80 s on 2 cores)");
    let start = Instant::now();
    let result = cmd!(
        sh,
        "{cargo} install cargo-chef --locked --version {CARGO_CHEF_VERSION} --root {partial} --target-dir {target}"
    )
    .stdin("")
    .run();
    let _ = fs::remove_dir_all(&target);
    result.context("step `cargo install cargo-chef` failed")?;
    fs::rename(&partial, &root).with_context(|| {
        format!(
            "cannot move `{}` to `{}`",
            partial.display(),
            root.display()
        )
    })?;
    println!(
        "engine install: cargo-chef built in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(binary)
}

/// `mmdebstrap --variant=minbase [extra] --dpkgopt=path-exclude=... SUITE OUT MIRROR`.
fn mmdebstrap(sh: &Shell, extra: &[&str], out: &Path, mirror: &str) -> Result<()> {
    let trims: Vec<String> = TRIMMED
        .iter()
        .map(|p| format!("--dpkgopt=path-exclude={p}"))
        .collect();
    println!(
        "engine install: `mmdebstrap --variant=minbase {} {SUITE}` (about 40 s)",
        extra.join(" ")
    );
    let start = Instant::now();
    cmd!(
        sh,
        "mmdebstrap --quiet --variant=minbase {extra...} {trims...} {SUITE} {out} {mirror}"
    )
    .stdin("")
    .run()?;
    println!(
        "engine install: `{}` written in {:.0} s, {} MB",
        out.display(),
        start.elapsed().as_secs_f64(),
        size_mb(out)
    );
    Ok(())
}

/// Imports both tarballs into a fresh classic engine and pushes them into a registry whose
/// storage is `dir/registry/data`; returns their manifest digests.
fn seed(tools: &Tools, dir: &Path, toolchain: &Path, runtime: &Path) -> Result<(String, String)> {
    let registry = Registry::start(
        tools,
        RegistryOptions {
            dir: Some(dir.join("registry")),
            ..RegistryOptions::default()
        },
    )?;
    let engine = tools.engine()?;
    let sh = Shell::new()?;
    let cli = &tools.cli20;
    let addr = registry.addr();
    let mut digests = Vec::new();
    for (tar, repo) in [(toolchain, TOOLCHAIN_REPO), (runtime, RUNTIME_REPO)] {
        let reference = format!("{addr}/{repo}:{TAG}");
        let start = Instant::now();
        cmd!(sh, "{cli} import --change {PATH_ENV} {tar} {reference}")
            .env("DOCKER_HOST", engine.host())
            .env("DOCKER_CONFIG", engine.docker_config())
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("step `docker import {}` failed", tar.display()))?;
        cmd!(sh, "{cli} push {reference}")
            .env("DOCKER_HOST", engine.host())
            .env("DOCKER_CONFIG", engine.docker_config())
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("step `docker push {reference}` failed"))?;
        let digest = registry
            .manifest_digest(repo, TAG)?
            .with_context(|| format!("`{reference}` is not in the registry after its push"))?;
        println!(
            "engine install: imported and pushed `{repo}:{TAG}` in {:.0} s: `{digest}`",
            start.elapsed().as_secs_f64()
        );
        digests.push(digest);
    }
    drop(engine);
    drop(registry);
    let runtime = digests.pop().unwrap_or_default();
    let toolchain = digests.pop().unwrap_or_default();
    Ok((toolchain, runtime))
}

/// The `ENV` both images get: `docker import` writes an image config without one, and a `RUN`
/// then finds programs through the builder's default only.
const PATH_ENV: &str = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `.cargo/config.toml` that points cargo at `vendor/` instead of crates.io.
pub const VENDOR_CONFIG: &str = "[source.crates-io]\nreplace-with = \"vendored-sources\"\n\n[source.vendored-sources]\ndirectory = \"vendor\"\n";

/// Makes `project` (a folder with `Cargo.toml` and `Cargo.lock`) build offline: its dependencies'
/// sources in `project/vendor` and [`VENDOR_CONFIG`] in `project/.cargo/config.toml`. The sources
/// come from `cargo vendor --locked`, run once per `Cargo.lock` (and kept under
/// `CACHE_DIR/vendor/<hash of Cargo.lock>`); later calls copy them. Needs crates.io the first
/// time only.
pub fn vendor(project: &Path) -> Result<()> {
    let lock = fs::read(project.join("Cargo.lock"))
        .with_context(|| format!("`{}` has no Cargo.lock", project.display()))?;
    let hash = Sha256::digest(&lock);
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    let kept = Path::new(CACHE_DIR).join("vendor").join(&hex);
    // cargo would read the old vendored sources through the old config: both go.
    let target = project.join("vendor");
    if target.exists() {
        fs::remove_dir_all(&target)?;
    }
    let config = project.join(".cargo");
    let _ = fs::remove_file(config.join("config.toml"));
    if !kept.is_dir() {
        let sh = Shell::new()?;
        let partial = kept.with_extension("partial");
        crate::install::clear_dir(&partial)?;
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let manifest = project.join("Cargo.toml");
        cmd!(
            sh,
            "{cargo} vendor --locked --quiet --manifest-path {manifest} {partial}"
        )
        .stdin("")
        .ignore_stdout()
        .run()
        .with_context(|| format!("step `cargo vendor` of `{}` failed", project.display()))?;
        fs::rename(&partial, &kept).with_context(|| {
            format!(
                "cannot move `{}` to `{}`",
                partial.display(),
                kept.display()
            )
        })?;
    }
    crate::copy_dir(&kept, &target)?;
    fs::create_dir_all(&config)?;
    fs::write(config.join("config.toml"), VENDOR_CONFIG)?;
    Ok(())
}

/// `git add -A` and `git commit` in `repo` (made a repository on branch `main` if it is not
/// one), as a fixed author.
pub fn commit(repo: &Path, message: &str) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(repo);
    if !repo.join(".git").exists() {
        cmd!(sh, "git init --quiet --initial-branch=main")
            .quiet()
            .run()?;
    }
    cmd!(sh, "git add -A").quiet().run()?;
    cmd!(
        sh,
        "git -c user.name=testbed -c user.email=testbed@127.0.0.1 -c commit.gpgsign=false commit --quiet --allow-empty -m {message}"
    )
    .quiet()
    .run()
    .with_context(|| format!("step `git commit` in `{}` failed", repo.display()))?;
    Ok(())
}

/// `git clone` of `repo` into `to` (which must not exist): every file then has the clone's time,
/// as a CI checkout gives it.
pub fn fresh_clone(repo: &Path, to: &Path) -> Result<()> {
    let sh = Shell::new()?;
    cmd!(sh, "git clone --quiet --no-hardlinks {repo} {to}")
        .quiet()
        .run()
        .with_context(|| format!("step `git clone {}` failed", repo.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_changes_the_folder() {
        let a = images_dir("http://a/debian");
        assert_eq!(a, images_dir("http://a/debian"));
        assert_ne!(a, images_dir("http://b/debian"));
        let text = key_text("http://a/debian");
        for needle in [
            SUITE,
            CARGO_CHEF_VERSION,
            "rustc,cargo,libc6-dev,gcc",
            "/usr/share/doc/*",
        ] {
            assert!(text.contains(needle), "{needle} not in {text}");
        }
    }
}

//! Real Docker engines and a real registry for this repository's tests, benchmarks and demo.
//!
//! ```no_run
//! let Some(tools) = testbed::require() else { return }; // reports `skipped: ...`
//! let engine = tools.engine().unwrap(); // a fresh, empty dockerd: a new CI agent
//! let registry = tools.registry().unwrap(); // a CNCF distribution registry on 127.0.0.1
//! // run `docker` with DOCKER_HOST=engine.host(), push to registry.addr() ...
//! assert!(registry.tags("acme/service").unwrap().is_empty());
//! ```
//!
//! Tests that need cache export or several platforms ask for the modern engine (dockerd 26 on its
//! own containerd, containerd image store) and arm64 emulation:
//!
//! ```no_run
//! let Some(tools) = testbed::require_modern() else { return }; // prints `skipped: ...`
//! let engine = tools.modern_engine().unwrap();
//! let arm64_busybox = tools.busybox_arm64().unwrap(); // for `COPY busybox-${TARGETARCH} ...`
//! // `docker buildx build --cache-to type=registry,ref=...,mode=max --platform
//! //  linux/amd64,linux/arm64 --push ...` with DOCKER_HOST=engine.host() ...
//! ```
//!
//! Everything is stopped, unmounted and deleted when dropped. Directories left behind by a test
//! process that was killed are cleaned up by the next process that calls [`require`] or
//! [`require_modern`].

#![warn(missing_docs)]

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Once, OnceLock};

use anyhow::{Context, Result};

mod binfmt;
mod engine;
mod http;
pub mod install;
mod mounts;
mod paths;
mod process;
mod registry;
pub mod rust;
mod tools;

pub use engine::{Engine, EngineOptions, Flavor};
pub use registry::{Manifest, Registry, RegistryOptions};
pub use rust::{RustImages, ServedImages};

/// The programs the engines, the registry and the test images need, all found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    /// `dockerd` 20.10 (Debian 12's `docker.io`).
    pub dockerd: PathBuf,
    /// The 20.10 CLI, `/usr/bin/docker`; it does BuildKit builds with `DOCKER_BUILDKIT=1`.
    pub cli20: PathBuf,
    /// A modern (23 or later) CLI, the first `docker` on `PATH` that is not `/usr/bin/docker`;
    /// it builds through the buildx plugin.
    pub cli28: PathBuf,
    /// The CNCF distribution registry, `docker-registry`.
    pub registry: PathBuf,
    /// A statically linked busybox, to copy into `FROM scratch` test images.
    pub busybox: PathBuf,
    /// `htpasswd`, to write the registry's bcrypt password file.
    pub htpasswd: PathBuf,
    /// The modern engine and what multi-platform builds need, when all of it is installed
    /// (always there in the tools [`require_modern`] returns).
    pub modern: Option<ModernTools>,
}

/// The modern engine (Debian 13's dockerd 26 and containerd 1.7, unpacked into
/// [`install::MODERN_DIR`]) and what building for arm64 needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModernTools {
    /// `dockerd` 26.
    pub dockerd: PathBuf,
    /// `containerd` 1.7.
    pub containerd: PathBuf,
    /// Directories put first on the daemons' `PATH`, so that they find the private
    /// `containerd-shim-runc-v2`, `docker-proxy` and `docker-init` (`runc` is Debian 12's).
    pub path: Vec<PathBuf>,
    /// The arm64 emulator registered with `binfmt_misc` (Debian 12's `qemu-user-static`).
    pub qemu_aarch64: PathBuf,
    /// A statically linked arm64 busybox (Debian 12's arm64 `busybox-static`), to copy into
    /// `FROM scratch` test images built for `linux/arm64`.
    pub busybox_arm64: PathBuf,
}

/// Everything a test needs, or the reason it cannot be had.
///
/// Returns `None` after printing `skipped: <reason>` when something is missing, unless the
/// environment variable `CI` is set: then it panics, naming what is missing and the command that
/// installs it (`cargo xtask engine install`). It never installs anything itself.
///
/// The tools' [`modern`](Tools::modern) part is filled in when it is installed, but not demanded:
/// see [`require_modern`].
pub fn require() -> Option<Tools> {
    static FOUND: OnceLock<Result<Tools, String>> = OnceLock::new();
    settle(FOUND.get_or_init(find_tools))
}

/// Like [`require`], but also demands the modern engine (dockerd 26 and containerd 1.7 in
/// [`install::MODERN_DIR`]), arm64 emulation (`qemu-user-static`, `binfmt-support`) and the arm64
/// busybox ([`install::BUSYBOX_ARM64`]): the returned tools' [`modern`](Tools::modern) is `Some`.
/// Prints `skipped: <reason>` and returns `None` when something is missing, or panics under `CI`.
/// The arm64 emulator's registration with the kernel is made when a modern engine starts.
pub fn require_modern() -> Option<Tools> {
    static FOUND: OnceLock<Result<Tools, String>> = OnceLock::new();
    settle(FOUND.get_or_init(|| {
        let tools = find_tools();
        let modern = tools::find_modern();
        match tools {
            Ok(tools) if tools.modern.is_some() => Ok(tools),
            Ok(_) => Err(missing_reason(&modern.missing)),
            Err(reason) if modern.missing.is_empty() => Err(reason),
            Err(reason) => Err(format!("{reason}; {}", missing_reason(&modern.missing))),
        }
    }))
}

/// Like [`require`], but also demands the Rust images ([`rust`]: a toolchain image with
/// cargo-chef and a runtime image, made by `cargo xtask engine install`), and returns them with
/// the tools. Prints `skipped: <reason>` and returns `None` when something is missing, or panics
/// under `CI`.
pub fn require_rust() -> Option<(Tools, RustImages)> {
    static FOUND: OnceLock<Result<Tools, String>> = OnceLock::new();
    let tools = settle(FOUND.get_or_init(|| {
        let tools = find_tools()?;
        match rust::find() {
            Some(_) => Ok(tools),
            None => Err(format!(
                "missing the Rust images in `{}`; make them with `cargo xtask engine install`",
                rust::CACHE_DIR
            )),
        }
    }))?;
    let images = rust::find()?;
    Some((tools, images))
}

/// What a test gets from a lookup: the tools (after cleaning up leftovers once per process), or
/// `skipped: <reason>` printed and `None`, or, under `CI`, a panic.
fn settle(found: &Result<Tools, String>) -> Option<Tools> {
    match found {
        Ok(tools) => {
            static CLEANED: Once = Once::new();
            CLEANED.call_once(|| {
                clean_leftovers();
            });
            Some(tools.clone())
        }
        Err(reason) if std::env::var_os("CI").is_some() => panic!("{reason}"),
        Err(reason) => {
            report_skip(reason);
            None
        }
    }
}

/// The environment variable naming a file to which each skipped test appends one line (`cargo
/// xtask test` sets it and counts the lines as skipped, not passed).
pub const SKIPS_FILE: &str = "XTASK_TEST_SKIPS";

/// Tells that the running test skips: on the real stderr (libtest captures `eprintln!` of a
/// test that passes, so the line would never be seen), and as a line of [`SKIPS_FILE`].
fn report_skip(reason: &str) {
    report_skip_to(
        reason,
        std::env::var_os(SKIPS_FILE).map(PathBuf::from).as_deref(),
    );
}

/// [`report_skip`], with the skips file given.
fn report_skip_to(reason: &str, skips: Option<&Path>) {
    use std::io::Write;
    // libtest names each test's thread after the test.
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("a test")
        .to_string();
    let line = format!("skipped: {test}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = skips {
        // One write of a short line to a file opened for appending: lines of tests running at
        // once do not mix.
        if let Ok(mut file) = fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = file.write_all(line.as_bytes());
        }
    }
}

/// "missing A (Debian package `p`), B; install with `cargo xtask engine install`".
fn missing_reason(missing: &[tools::Missing]) -> String {
    let what: Vec<String> = missing
        .iter()
        .map(|m| match m.package {
            Some(p) => format!("{} (Debian package `{p}`)", m.what),
            None => m.what.clone(),
        })
        .collect();
    format!(
        "missing {}; install with `cargo xtask engine install`",
        what.join(", ")
    )
}

pub(crate) fn find_tools() -> Result<Tools, String> {
    let found = tools::find();
    let mut problems = Vec::new();
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        problems.push("not running as root (engines need root)".to_string());
    }
    if !found.missing.is_empty() {
        problems.push(missing_reason(&found.missing));
    }
    match found {
        tools::Found {
            dockerd: Some(dockerd),
            cli20: Some(cli20),
            cli28: Some(cli28),
            registry: Some(registry),
            busybox: Some(busybox),
            htpasswd: Some(htpasswd),
            ..
        } if problems.is_empty() => Ok(Tools {
            dockerd,
            cli20,
            cli28,
            registry,
            busybox,
            htpasswd,
            modern: find_modern_tools(),
        }),
        _ => Err(problems.join("; ")),
    }
}

/// The modern tools when all of them are there.
fn find_modern_tools() -> Option<ModernTools> {
    match tools::find_modern() {
        tools::FoundModern {
            dockerd: Some(dockerd),
            containerd: Some(containerd),
            bin_dirs,
            qemu_aarch64: Some(qemu_aarch64),
            busybox_arm64: Some(busybox_arm64),
            missing,
        } if missing.is_empty() => Some(ModernTools {
            dockerd,
            containerd,
            path: bin_dirs,
            qemu_aarch64,
            busybox_arm64,
        }),
        _ => None,
    }
}

impl Tools {
    /// Starts a fresh, empty classic engine (dockerd 20.10) in a new temporary directory.
    pub fn engine(&self) -> Result<Engine> {
        Engine::start(self, EngineOptions::default())
    }

    /// Starts a fresh, empty modern engine (dockerd 26 on its own containerd, containerd image
    /// store) in a new temporary directory; an error when [`Tools::modern`] is `None`.
    pub fn modern_engine(&self) -> Result<Engine> {
        Engine::start(
            self,
            EngineOptions {
                flavor: Flavor::Modern,
                ..EngineOptions::default()
            },
        )
    }

    /// The statically linked arm64 busybox, when the modern tools are installed.
    pub fn busybox_arm64(&self) -> Option<PathBuf> {
        self.modern.as_ref().map(|m| m.busybox_arm64.clone())
    }

    /// The Rust images of this machine ([`rust`]), or an error that says how to make them.
    pub fn rust_images(&self) -> Result<RustImages> {
        rust::find().with_context(|| {
            format!(
                "the Rust images are not in `{}`; make them with `cargo xtask engine install`",
                rust::CACHE_DIR
            )
        })
    }

    /// Starts a registry without authentication on a free port of 127.0.0.1.
    pub fn registry(&self) -> Result<Registry> {
        Registry::start(self, RegistryOptions::default())
    }

    /// Starts a registry that requires basic authentication as `user` with `password`.
    pub fn registry_with_auth(&self, user: &str, password: &str) -> Result<Registry> {
        Registry::start(
            self,
            RegistryOptions {
                auth: Some((user.to_string(), password.to_string())),
                ..RegistryOptions::default()
            },
        )
    }
}

/// Prefix of every directory [`temp_dir`] makes.
const TEMP_PREFIX: &str = "xtd-";

/// The directory temporary directories go into: the system's, or `/tmp` when that path is so long
/// that unix socket paths under it could pass their 107-byte limit.
fn temp_root() -> PathBuf {
    let root = std::env::temp_dir();
    let root = if root.as_os_str().len() > 40 {
        PathBuf::from("/tmp")
    } else {
        root
    };
    fs::canonicalize(&root).unwrap_or(root)
}

/// Makes a new, empty directory `TMP/xtd-<prefix>-<pid>-<n>` and returns its canonical path.
///
/// The caller removes it; should this process die first, the next process calling [`require`]
/// removes it.
pub fn temp_dir(prefix: &str) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let root = temp_root();
    let prefix = prefix.trim_end_matches('-');
    for _ in 0..1000 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = root.join(format!("{TEMP_PREFIX}{prefix}-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create `{}`", dir.display()));
            }
        }
    }
    anyhow::bail!(
        "cannot find a free name for a temporary directory in `{}`",
        root.display()
    )
}

/// Copies the directory tree `from` into `to` (created if missing), keeping permissions and
/// symbolic links.
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("cannot create `{}`", to.display()))?;
    let entries =
        fs::read_dir(from).with_context(|| format!("cannot read `{}`", from.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read `{}`", from.display()))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&source, &target)?;
        } else if kind.is_symlink() {
            let link = fs::read_link(&source)?;
            std::os::unix::fs::symlink(&link, &target)
                .with_context(|| format!("cannot create link `{}`", target.display()))?;
        } else {
            fs::copy(&source, &target).with_context(|| {
                format!(
                    "cannot copy `{}` to `{}`",
                    source.display(),
                    target.display()
                )
            })?;
        }
    }
    Ok(())
}

/// Bytes in the regular files under `root`, not following symbolic links, not crossing into other
/// file systems (mounts), each hard-linked inode counted once.
pub(crate) fn tree_bytes(root: &Path) -> u64 {
    let Ok(top) = fs::symlink_metadata(root) else {
        return 0;
    };
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    let mut total = 0;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.dev() != top.dev() {
                continue;
            }
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && (meta.nlink() <= 1 || seen.insert((meta.dev(), meta.ino())))
            {
                total += meta.len();
            }
        }
    }
    total
}

/// The owner pid in a temporary directory's name, `xtd-<prefix>-<pid>-<n>`.
fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    parts.next()?.parse::<u64>().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next().filter(|p| !p.is_empty())?;
    Some(pid)
}

/// Stops, unmounts and deletes what dead test processes left in the temporary directory (engines
/// and registries still running, their mounts, their directories). Returns how many directories
/// it removed. Directories of living processes are not touched.
pub fn clean_leftovers() -> usize {
    let Ok(entries) = fs::read_dir(temp_root()) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else {
            continue;
        };
        if process::alive(pid) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = entry.path();
        let result = process::terminate_mentioning(&dir)
            .and_then(|()| mounts::unmount_under(&dir))
            .and_then(|()| fs::remove_dir_all(&dir).map_err(anyhow::Error::from));
        match result {
            Ok(()) => removed += 1,
            Err(e) => eprintln!("warning: cannot clean up `{}`: {e:#}", dir.display()),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_temp_dir_names() {
        assert_eq!(owner_pid("xtd-engine-123-4"), Some(123));
        assert_eq!(owner_pid("xtd-my-fixture-77-0"), Some(77));
        assert_eq!(owner_pid("xtd-123-4"), None);
        assert_eq!(owner_pid("xtd-engine-x-4"), None);
        assert_eq!(owner_pid("other-engine-1-2"), None);
    }

    #[test]
    fn temp_dirs_are_unique_and_copy_dir_copies() -> Result<()> {
        let a = temp_dir("unit")?;
        let b = temp_dir("unit-")?;
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(owner_pid(&name), Some(std::process::id() as i32));
        fs::create_dir_all(a.join("src/deep"))?;
        fs::write(a.join("src/deep/f.txt"), "hello")?;
        fs::write(a.join("top"), "12345")?;
        fs::hard_link(a.join("top"), a.join("top-link"))?;
        std::os::unix::fs::symlink("top", a.join("sym"))?;
        let copy = b.join("copy");
        copy_dir(&a, &copy)?;
        assert_eq!(fs::read_to_string(copy.join("src/deep/f.txt"))?, "hello");
        assert_eq!(fs::read_link(copy.join("sym"))?, Path::new("top"));
        // 5 + 5 bytes in `a` counted once for the hard link: 5 + 5 ("hello").
        assert_eq!(tree_bytes(&a), 10);
        // The copy has no hard link any more: 5 + 5 + 5.
        assert_eq!(tree_bytes(&copy), 15);
        fs::remove_dir_all(&a)?;
        fs::remove_dir_all(&b)?;
        Ok(())
    }

    #[test]
    fn a_skip_is_told_past_the_capture_and_counted() -> Result<()> {
        let dir = temp_dir("unit-skips")?;
        let file = dir.join("skips");
        report_skip_to("missing dockerd", Some(&file));
        report_skip_to("missing dockerd", Some(&file));
        let text = fs::read_to_string(&file)?;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("skipped: tests::a_skip_is_told_past_the_capture_and_counted")
                && lines[0].ends_with(": missing dockerd"),
            "{text}"
        );
        fs::remove_dir_all(&dir)?;
        Ok(())
    }
}

//! Installing what the engines need: Debian 12 packages; the buildx plugin and the modern engine
//! (dockerd 26 and containerd 1.7) taken out of Debian 13's packages; a static arm64 busybox
//! taken out of Debian 12's arm64 `busybox-static`. Packages of other releases and architectures
//! are fetched with private apt lists and unpacked with `dpkg -x`: the system's package state is
//! never touched by them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::tools::{self, EM_AARCH64};

pub use crate::binfmt::ensure_arm64_emulation;

pub use crate::paths::{APT_ARM64_DIR, APT_DIR, BUSYBOX_ARM64, MODERN_DIR, QEMU_AARCH64};
use crate::paths::{BUILDX_PLUGIN, MODERN_PROGRAMS};

/// Used when no Debian mirror can be read from the machine's apt sources.
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// Installs what is missing, and only that: the Debian 12 packages when one of their programs is
/// missing (`docker.io`, `containerd`, `runc`, `docker-registry`, `busybox-static`,
/// `apache2-utils`, `iptables`, `qemu-user-static`, `binfmt-support`); the buildx plugin when
/// `/usr/libexec/docker/cli-plugins/docker-buildx` is missing; the modern engine when a program of
/// [`MODERN_DIR`] is missing; the arm64 busybox when [`BUSYBOX_ARM64`] is missing. Then, as root,
/// makes sure arm64 programs run under emulation ([`ensure_arm64_emulation`]); last, makes the
/// Rust images when they are not in their cache ([`crate::rust::make`]: `mmdebstrap`, which is
/// installed too, and cargo-chef). Prints what it does; errors name the step that failed. Needs
/// root only when something is missing.
pub fn install_all() -> Result<()> {
    let sh = Shell::new()?;
    let modern = tools::find_modern();
    let mut packages: Vec<&str> = tools::find()
        .missing
        .iter()
        .chain(&modern.missing)
        .filter_map(|m| m.package)
        .collect();
    if tools::which("iptables").is_none() {
        packages.push("iptables");
    }
    // For the Rust images (`crate::rust`).
    if tools::which("mmdebstrap").is_none() {
        packages.push("mmdebstrap");
    }
    packages.sort_unstable();
    packages.dedup();
    let buildx_missing = !Path::new(BUILDX_PLUGIN).exists();
    let engine_missing = !modern_engine_present(Path::new(MODERN_DIR));
    let busybox_missing = modern.busybox_arm64.is_none();
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let fetches = buildx_missing || engine_missing || busybox_missing;
    if !root && (fetches || !packages.is_empty()) {
        bail!("`cargo xtask engine install` must run as root: it runs `apt-get` and writes `/usr/libexec/docker/cli-plugins` and `/opt/xtask-docker`");
    }
    if packages.is_empty() {
        println!("engine install: Debian packages present");
    } else {
        println!(
            "engine install: installing {} from Debian 12",
            packages.join(", ")
        );
        if packages.contains(&"qemu-user-static") {
            // With binfmt_misc mounted, the package registers its emulators itself.
            if let Err(e) = crate::binfmt::mount_binfmt_misc() {
                println!("engine install: {e:#}");
            }
        }
        install_packages(&sh, &packages)?;
    }
    let mut trixie = PrivateApt::new(APT_DIR, "trixie", None);
    if !buildx_missing {
        println!("engine install: buildx plugin present at `{BUILDX_PLUGIN}`");
    } else {
        println!("engine install: fetching the buildx plugin from Debian 13 (`docker-buildx`)");
        fetch_buildx(&sh, &mut trixie)?;
    }
    if !engine_missing {
        println!("engine install: modern engine present in `{MODERN_DIR}`");
    } else {
        println!(
            "engine install: fetching the modern engine from Debian 13 (`docker.io`, `containerd`)"
        );
        fetch_modern_engine(&sh, &mut trixie)?;
    }
    if !busybox_missing {
        println!("engine install: arm64 busybox present at `{BUSYBOX_ARM64}`");
    } else {
        println!(
            "engine install: fetching the arm64 busybox from Debian 12 (`busybox-static:arm64`)"
        );
        fetch_busybox_arm64(&sh)?;
    }
    if root {
        ensure_arm64_emulation().context("step `set up arm64 emulation` failed")?;
        println!("engine install: arm64 emulation registered (`qemu-aarch64` in `/proc/sys/fs/binfmt_misc`)");
    }
    let still: Vec<String> = tools::find()
        .missing
        .into_iter()
        .chain(tools::find_modern().missing)
        .map(|m| m.what)
        .collect();
    if !still.is_empty() {
        bail!("still missing after installing: {}", still.join(", "));
    }
    let tools = crate::find_tools().map_err(|reason| anyhow::anyhow!("{reason}"))?;
    crate::rust::make(&tools).context("step `make the Rust images` failed")?;
    Ok(())
}

/// Whether every program of [`MODERN_PROGRAMS`] is in `dir`.
fn modern_engine_present(dir: &Path) -> bool {
    MODERN_PROGRAMS.iter().all(|p| dir.join(p).is_file())
}

fn install_packages(sh: &Shell, packages: &[&str]) -> Result<()> {
    let _no_services = NoServiceStarts::new()?;
    cmd!(sh, "apt-get update -q")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin("")
        .run()
        .context("step `apt-get update` failed")?;
    cmd!(
        sh,
        "apt-get install -y -q --no-install-recommends {packages...}"
    )
    .env("DEBIAN_FRONTEND", "noninteractive")
    .stdin("")
    .run()
    .with_context(|| format!("step `apt-get install {}` failed", packages.join(" ")))?;
    Ok(())
}

/// While it lives, `/usr/sbin/policy-rc.d` forbids packages to start services, so that installing
/// `docker.io` starts no system dockerd (with a bridge and iptables rules). Only written when the
/// machine has no such file.
struct NoServiceStarts(Option<PathBuf>);

impl NoServiceStarts {
    fn new() -> Result<NoServiceStarts> {
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Ok(NoServiceStarts(None));
        }
        fs::write(&path, "#!/bin/sh\n# written by `cargo xtask engine install` while it runs apt-get\nexit 101\n")
            .with_context(|| format!("cannot write `{}`", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(NoServiceStarts(Some(path)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

/// apt with its own sources file (one line, `deb MIRROR SUITE main`), lists and caches under
/// `base`, for downloading packages of another release or architecture without touching the
/// system's package state. Packages are only ever downloaded, never installed.
struct PrivateApt {
    base: PathBuf,
    suite: &'static str,
    arch: Option<&'static str>,
    updated: bool,
}

impl PrivateApt {
    fn new(base: &str, suite: &'static str, arch: Option<&'static str>) -> PrivateApt {
        PrivateApt {
            base: PathBuf::from(base),
            suite,
            arch,
            updated: false,
        }
    }

    fn label(&self) -> String {
        match self.arch {
            Some(arch) => format!("{} {arch}", self.suite),
            None => self.suite.to_string(),
        }
    }

    fn options(&self) -> Vec<String> {
        let base = &self.base;
        let mut options = vec![
            format!(
                "Dir::Etc::SourceList={}",
                base.join("sources.list").display()
            ),
            format!(
                "Dir::Etc::SourceParts={}",
                base.join("sources.list.d").display()
            ),
            format!("Dir::State::Lists={}", base.join("lists").display()),
            format!("Dir::Cache={}", base.join("cache").display()),
            // The private directories belong to root; apt's `_apt` user could not write them.
            "APT::Sandbox::User=root".to_string(),
        ];
        if let Some(arch) = self.arch {
            options.push(format!("APT::Architecture={arch}"));
            options.push(format!("APT::Architectures={arch}"));
        }
        options
            .into_iter()
            .flat_map(|o| ["-o".to_string(), o])
            .collect()
    }

    /// Writes the sources file and runs `apt-get update` on the private lists, once.
    fn update(&mut self, sh: &Shell) -> Result<()> {
        if self.updated {
            return Ok(());
        }
        let base = &self.base;
        for dir in [
            base.join("lists/partial"),
            base.join("cache/archives/partial"),
            base.join("sources.list.d"),
        ] {
            fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create `{}`", dir.display()))?;
        }
        let mirror = find_mirror();
        let sources = base.join("sources.list");
        let line = format!("deb {mirror} {} main", self.suite);
        fs::write(&sources, format!("{line}\n"))
            .with_context(|| format!("cannot write `{}`", sources.display()))?;
        println!(
            "engine install: private apt sources `{}`: {line}",
            sources.display()
        );
        let options = self.options();
        cmd!(sh, "apt-get {options...} -q update")
            .stdin("")
            .run()
            .with_context(|| {
                format!(
                    "step `apt-get update` of the private {} lists failed",
                    self.label()
                )
            })?;
        self.updated = true;
        Ok(())
    }

    /// Downloads `packages` into a cleared `download` folder under `base`; returns the .deb file
    /// of each, in order.
    fn download(&mut self, sh: &Shell, packages: &[&str]) -> Result<Vec<PathBuf>> {
        self.update(sh)?;
        let download = self.base.join("download");
        clear_dir(&download)?;
        let options = self.options();
        {
            let _cwd = sh.push_dir(&download);
            cmd!(sh, "apt-get {options...} -q download {packages...}")
                .stdin("")
                .run()
                .with_context(|| {
                    format!(
                        "step `apt-get download {}` ({}) failed",
                        packages.join(" "),
                        self.label()
                    )
                })?;
        }
        let files: Vec<PathBuf> = fs::read_dir(&download)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        packages
            .iter()
            .map(|package| {
                files
                    .iter()
                    .find(|p| {
                        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                            n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
                        })
                    })
                    .cloned()
                    .with_context(|| {
                        format!(
                            "step `apt-get download {package}` left no .deb in `{}`",
                            download.display()
                        )
                    })
            })
            .collect()
    }

    /// Removes the downloads and unpacked files (the lists stay for the next time).
    fn clean(&self) {
        let _ = fs::remove_dir_all(self.base.join("download"));
        let _ = fs::remove_dir_all(self.base.join("extract"));
    }
}

/// Removes `dir` if it exists and creates it empty.
pub(crate) fn clear_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot clear `{}`", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))
}

/// `dpkg -x DEB INTO`.
fn unpack(sh: &Shell, deb: &Path, into: &Path) -> Result<()> {
    cmd!(sh, "dpkg -x {deb} {into}")
        .run()
        .with_context(|| format!("step `dpkg -x {}` failed", deb.display()))
}

/// Copies `from` to `to` (mode 0755) through a temporary name in the same folder, so that `to`
/// is either the old file or the whole new one.
fn install_file(from: &Path, to: &Path) -> Result<()> {
    let dir = to.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let name = to.file_name().unwrap_or_default().to_string_lossy();
    let partial = dir.join(format!(".{name}.partial"));
    fs::copy(from, &partial)
        .and_then(|_| fs::set_permissions(&partial, fs::Permissions::from_mode(0o755)))
        .and_then(|()| fs::rename(&partial, to))
        .with_context(|| format!("cannot write `{}`", to.display()))
}

/// Downloads `docker-buildx` from trixie, unpacks it and copies the plugin into
/// `/usr/libexec/docker/cli-plugins`.
fn fetch_buildx(sh: &Shell, apt: &mut PrivateApt) -> Result<()> {
    let debs = apt.download(sh, &["docker-buildx"])?;
    let deb = &debs[0];
    let extract = apt.base.join("extract");
    clear_dir(&extract)?;
    unpack(sh, deb, &extract)?;
    let plugin = extract.join("usr/libexec/docker/cli-plugins/docker-buildx");
    if !plugin.is_file() {
        bail!(
            "step `dpkg -x`: `{}` has no `usr/libexec/docker/cli-plugins/docker-buildx`",
            deb.display()
        );
    }
    install_file(&plugin, Path::new(BUILDX_PLUGIN)).context("step `install the plugin` failed")?;
    let name = deb.file_name().unwrap_or_default().to_string_lossy();
    println!("engine install: installed `{BUILDX_PLUGIN}` from `{name}`");
    apt.clean();
    if let Some(cli) = tools::modern_cli() {
        let version = cmd!(sh, "{cli} buildx version")
            .quiet()
            .read()
            .context("step `docker buildx version` failed: the plugin does not run")?;
        println!("engine install: {}", version.trim());
    }
    Ok(())
}

/// Downloads `docker.io` and `containerd` from trixie and unpacks both into [`MODERN_DIR`]
/// (through a temporary folder beside it, renamed when complete). The runc of Debian 12 serves
/// both engines (trixie's needs a newer glibc).
fn fetch_modern_engine(sh: &Shell, apt: &mut PrivateApt) -> Result<()> {
    let debs = apt.download(sh, &["docker.io", "containerd"])?;
    let target = Path::new(MODERN_DIR);
    let parent = target.parent().unwrap_or(Path::new("/"));
    let partial = parent.join(".modern.partial");
    clear_dir(&partial)?;
    for deb in &debs {
        unpack(sh, deb, &partial)?;
    }
    if !modern_engine_present(&partial) {
        bail!(
            "step `dpkg -x`: `{}` lack one of {}",
            debs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join("`, `"),
            MODERN_PROGRAMS.map(|p| format!("`{p}`")).join(", ")
        );
    }
    // `usr/bin/docker-init` links to `tini-static` beside it, which is in the `tini` package:
    // point it at the system's (Debian 12's docker.io depends on tini), or drop it.
    let init = partial.join("usr/bin/docker-init");
    let _ = fs::remove_file(&init);
    let tini = Path::new("/usr/bin/tini-static");
    if tini.is_file() {
        std::os::unix::fs::symlink(tini, &init)
            .with_context(|| format!("cannot create link `{}`", init.display()))?;
    }
    if target.exists() {
        fs::remove_dir_all(target).with_context(|| format!("cannot clear `{MODERN_DIR}`"))?;
    }
    fs::rename(&partial, target)
        .with_context(|| format!("cannot move `{}` to `{MODERN_DIR}`", partial.display()))?;
    apt.clean();
    let (dockerd, containerd) = (
        target.join(MODERN_PROGRAMS[0]),
        target.join(MODERN_PROGRAMS[1]),
    );
    let dockerd_version = cmd!(sh, "{dockerd} --version")
        .quiet()
        .read()
        .context("step `dockerd --version` failed: the modern dockerd does not run")?;
    let containerd_version = cmd!(sh, "{containerd} --version")
        .quiet()
        .read()
        .context("step `containerd --version` failed: the modern containerd does not run")?;
    println!(
        "engine install: unpacked into `{MODERN_DIR}`: {}; {}",
        dockerd_version.trim(),
        containerd_version.trim()
    );
    Ok(())
}

/// Downloads Debian 12's arm64 `busybox-static` with private arm64 lists, unpacks it and copies
/// its `bin/busybox` to [`BUSYBOX_ARM64`].
fn fetch_busybox_arm64(sh: &Shell) -> Result<()> {
    let mut apt = PrivateApt::new(APT_ARM64_DIR, "bookworm", Some("arm64"));
    let debs = apt.download(sh, &["busybox-static"])?;
    let extract = apt.base.join("extract");
    clear_dir(&extract)?;
    unpack(sh, &debs[0], &extract)?;
    let busybox = extract.join("bin/busybox");
    if !tools::is_static_elf_for(&busybox, EM_AARCH64) {
        bail!(
            "step `dpkg -x`: `{}` has no static arm64 `bin/busybox`",
            debs[0].display()
        );
    }
    install_file(&busybox, Path::new(BUSYBOX_ARM64))
        .context("step `install the arm64 busybox` failed")?;
    let name = debs[0].file_name().unwrap_or_default().to_string_lossy();
    println!("engine install: installed `{BUSYBOX_ARM64}` from `{name}`");
    apt.clean();
    Ok(())
}

/// The Debian mirror of this machine's apt sources (deb822 `*.sources` first, then
/// `/etc/apt/sources.list`, then `*.list`), or `http://deb.debian.org/debian`.
pub(crate) fn find_mirror() -> String {
    let dir = Path::new("/etc/apt/sources.list.d");
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    let by_ext = |ext: &str| -> Vec<PathBuf> {
        files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .cloned()
            .collect()
    };
    let deb822 = by_ext("sources").into_iter().map(|p| (p, true));
    let one_line = std::iter::once(PathBuf::from("/etc/apt/sources.list"))
        .chain(by_ext("list"))
        .map(|p| (p, false));
    for (path, is_deb822) in deb822.chain(one_line) {
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let found = if is_deb822 {
            mirror_from_deb822(&text)
        } else {
            mirror_from_one_line(&text)
        };
        if let Some(mirror) = found {
            return mirror;
        }
    }
    println!("engine install: no Debian mirror in the apt sources; using `{DEFAULT_MIRROR}`");
    DEFAULT_MIRROR.to_string()
}

/// Whether a suite is a release's main suite (`bookworm`, `stable`), not `-updates` or
/// `-security`.
fn main_suite(suite: &str) -> bool {
    !suite.is_empty() && !suite.contains('-') && !suite.contains('/')
}

/// The first URI of a deb822 stanza of type `deb` with a main suite.
pub(crate) fn mirror_from_deb822(text: &str) -> Option<String> {
    let mut stanzas: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.lines() {
        if line.trim().is_empty() {
            stanzas.push(Vec::new());
        } else if line.starts_with('#') || line.starts_with(' ') || line.starts_with('\t') {
            continue;
        } else if let Some((key, value)) = line.split_once(':') {
            let stanza = stanzas.last_mut()?;
            stanza.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    stanzas.iter().find_map(|fields| {
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let enabled = field("enabled").is_none_or(|v| !v.eq_ignore_ascii_case("no"));
        let deb = field("types")?.split_whitespace().any(|t| t == "deb");
        let suites = field("suites")?.split_whitespace().any(main_suite);
        let uri = field("uris")?.split_whitespace().next()?;
        (enabled && deb && suites).then(|| uri.to_string())
    })
}

/// The URI of the first `deb URI SUITE ...` line with a main suite (options in brackets skipped).
pub(crate) fn mirror_from_one_line(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next()?.trim();
        let rest = line.strip_prefix("deb ")?.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(options) => options.split_once(']')?.1.trim_start(),
            None => rest,
        };
        let mut words = rest.split_whitespace();
        let uri = words.next()?;
        main_suite(words.next()?).then(|| uri.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_SOURCES: &str = "\
Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian http://deb.debian.org/debian
Suites: bookworm-updates bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

    #[test]
    fn reads_the_main_mirror_from_deb822() {
        assert_eq!(
            mirror_from_deb822(DEBIAN_SOURCES).as_deref(),
            Some("http://mirror.example/debian")
        );
        let disabled = "Enabled: no\nTypes: deb\nURIs: http://a/debian\nSuites: bookworm\n";
        assert_eq!(mirror_from_deb822(disabled), None);
        let src_only = "Types: deb-src\nURIs: http://a/debian\nSuites: bookworm\n";
        assert_eq!(mirror_from_deb822(src_only), None);
        assert_eq!(mirror_from_deb822(""), None);
    }

    #[test]
    fn reads_the_main_mirror_from_one_line_sources() {
        let text = "\
# deb http://commented.example/debian bookworm main
deb http://security.debian.org/debian-security bookworm-security main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://mirror.example/debian bookworm main # note
deb http://other.example/debian bookworm main
";
        assert_eq!(
            mirror_from_one_line(text).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            mirror_from_one_line("deb-src http://a/debian bookworm main"),
            None
        );
    }
}

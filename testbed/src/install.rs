//! Installing what the engines need: Debian 12 packages, and the buildx plugin taken out of
//! Debian 13's `docker-buildx` without touching the system's package state.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::tools::{self, BUILDX_PLUGIN};

/// Private apt state for fetching from Debian 13: sources, lists, caches, downloads.
pub const APT_DIR: &str = "/var/cache/xtask-docker/apt";

/// Used when no Debian mirror can be read from the machine's apt sources.
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// Installs what is missing, and only that: the Debian 12 packages when one of their programs is
/// missing, the buildx plugin when `/usr/libexec/docker/cli-plugins/docker-buildx` is missing.
/// Prints what it does; errors name the step that failed. Needs root only when something is
/// missing.
pub fn install_all() -> Result<()> {
    let sh = Shell::new()?;
    let mut packages: Vec<&str> = tools::find()
        .missing
        .iter()
        .filter_map(|m| m.package)
        .collect();
    if tools::which("iptables").is_none() {
        packages.push("iptables");
    }
    packages.sort_unstable();
    packages.dedup();
    let buildx_missing = !Path::new(BUILDX_PLUGIN).exists();
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && (buildx_missing || !packages.is_empty()) {
        bail!("`cargo xtask engine install` must run as root: it runs `apt-get` and writes `/usr/libexec/docker/cli-plugins`");
    }
    if packages.is_empty() {
        println!("engine install: Debian packages present");
    } else {
        println!(
            "engine install: installing {} from Debian 12",
            packages.join(", ")
        );
        install_packages(&sh, &packages)?;
    }
    if !buildx_missing {
        println!("engine install: buildx plugin present at `{BUILDX_PLUGIN}`");
    } else {
        println!("engine install: fetching the buildx plugin from Debian 13 (`docker-buildx`)");
        fetch_buildx(&sh)?;
    }
    let still: Vec<String> = tools::find().missing.into_iter().map(|m| m.what).collect();
    if !still.is_empty() {
        bail!("still missing after installing: {}", still.join(", "));
    }
    Ok(())
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

/// Downloads `docker-buildx` from trixie with a private sources file and private lists, unpacks
/// it with `dpkg -x` and copies the plugin into `/usr/libexec/docker/cli-plugins`.
fn fetch_buildx(sh: &Shell) -> Result<()> {
    let base = Path::new(APT_DIR);
    let (lists, cache, parts) = (
        base.join("lists"),
        base.join("cache"),
        base.join("sources.list.d"),
    );
    let (download, extract) = (base.join("download"), base.join("extract"));
    for dir in [&download, &extract] {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("cannot clear `{}`", dir.display()))?;
        }
    }
    for dir in [
        lists.join("partial"),
        cache.join("archives/partial"),
        parts.clone(),
        download.clone(),
        extract.clone(),
    ] {
        fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    }
    let mirror = find_mirror();
    let sources = base.join("sources.list");
    fs::write(&sources, format!("deb {mirror} trixie main\n"))
        .with_context(|| format!("cannot write `{}`", sources.display()))?;
    println!(
        "engine install: private apt sources `{}`: deb {mirror} trixie main",
        sources.display()
    );
    let options = [
        format!("Dir::Etc::SourceList={}", sources.display()),
        format!("Dir::Etc::SourceParts={}", parts.display()),
        format!("Dir::State::Lists={}", lists.display()),
        format!("Dir::Cache={}", cache.display()),
        // The private directories belong to root; apt's `_apt` user could not write them.
        "APT::Sandbox::User=root".to_string(),
    ];
    let options: Vec<String> = options
        .iter()
        .flat_map(|o| ["-o".to_string(), o.clone()])
        .collect();
    let options = &options;
    cmd!(sh, "apt-get {options...} -q update")
        .stdin("")
        .run()
        .context("step `apt-get update` of the private Debian 13 lists failed")?;
    {
        let _cwd = sh.push_dir(&download);
        cmd!(sh, "apt-get {options...} -q download docker-buildx")
            .stdin("")
            .run()
            .context("step `apt-get download docker-buildx` (Debian 13) failed")?;
    }
    let deb = fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("docker-buildx_") && n.ends_with(".deb"))
        })
        .with_context(|| {
            format!(
                "step `apt-get download docker-buildx` left no .deb in `{}`",
                download.display()
            )
        })?;
    cmd!(sh, "dpkg -x {deb} {extract}")
        .run()
        .with_context(|| format!("step `dpkg -x {}` failed", deb.display()))?;
    let plugin = extract.join("usr/libexec/docker/cli-plugins/docker-buildx");
    if !plugin.is_file() {
        bail!(
            "step `dpkg -x`: `{}` has no `usr/libexec/docker/cli-plugins/docker-buildx`",
            deb.display()
        );
    }
    let target = Path::new(BUILDX_PLUGIN);
    let target_dir = target.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(target_dir)
        .with_context(|| format!("cannot create `{}`", target_dir.display()))?;
    let partial = target_dir.join(".docker-buildx.partial");
    fs::copy(&plugin, &partial)
        .and_then(|_| fs::set_permissions(&partial, fs::Permissions::from_mode(0o755)))
        .and_then(|()| fs::rename(&partial, target))
        .with_context(|| {
            format!("step `install the plugin` failed: cannot write `{BUILDX_PLUGIN}`")
        })?;
    let name = deb.file_name().unwrap_or_default().to_string_lossy();
    println!("engine install: installed `{BUILDX_PLUGIN}` from `{name}`");
    let _ = fs::remove_dir_all(&extract);
    let _ = fs::remove_dir_all(&download);
    if let Some(cli) = tools::modern_cli() {
        let version = cmd!(sh, "{cli} buildx version")
            .quiet()
            .read()
            .context("step `docker buildx version` failed: the plugin does not run")?;
        println!("engine install: {}", version.trim());
    }
    Ok(())
}

/// The Debian mirror of this machine's apt sources (deb822 `*.sources` first, then
/// `/etc/apt/sources.list`, then `*.list`), or `http://deb.debian.org/debian`.
fn find_mirror() -> String {
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

//! Finding the programs the engines, the registry and the test images need.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use xshell::{cmd, Shell};

use crate::paths::{BUILDX_PLUGIN, BUSYBOX_ARM64, MODERN_DIR, QEMU_AARCH64};

/// Other places the Docker CLI looks for plugins.
const PLUGIN_DIRS: [&str; 4] = [
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
];

/// The 20.10 CLI of Debian 12's `docker.io`.
pub(crate) const CLI20: &str = "/usr/bin/docker";

/// `e_machine` of arm64 ELF files.
pub(crate) const EM_AARCH64: u16 = 183;

/// Something needed that is not there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Missing {
    /// What, e.g. "`dockerd`".
    pub what: String,
    /// The Debian 12 package that brings it, if any.
    pub package: Option<&'static str>,
}

/// The programs found, and what is missing.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub dockerd: Option<PathBuf>,
    pub cli20: Option<PathBuf>,
    pub cli28: Option<PathBuf>,
    pub registry: Option<PathBuf>,
    pub busybox: Option<PathBuf>,
    pub htpasswd: Option<PathBuf>,
    pub missing: Vec<Missing>,
}

/// Looks for everything the tests need, including a modern CLI (which no Debian 12 package
/// brings).
pub(crate) fn find() -> Found {
    let mut missing = Vec::new();
    let mut need = |name: &str, package: &'static str, found: Option<PathBuf>| {
        if found.is_none() {
            missing.push(Missing {
                what: format!("`{name}`"),
                package: Some(package),
            });
        }
        found
    };
    let dockerd = need("dockerd", "docker.io", which("dockerd"));
    need("containerd", "containerd", which("containerd"));
    need("runc", "runc", which("runc"));
    let cli20 = need(
        CLI20,
        "docker.io",
        executable(Path::new(CLI20)).then(|| CLI20.into()),
    );
    let registry = need(
        "docker-registry",
        "docker-registry",
        which("docker-registry"),
    );
    let busybox = need(
        "busybox (statically linked)",
        "busybox-static",
        which("busybox").filter(|p| is_static_elf(p)),
    );
    let htpasswd = need("htpasswd", "apache2-utils", which("htpasswd"));
    if buildx_plugin().is_none() {
        missing.push(Missing {
            what: format!("the buildx plugin `{BUILDX_PLUGIN}` (Debian 13's `docker-buildx`)"),
            package: None,
        });
    }
    let cli28 = modern_cli();
    if cli28.is_none() {
        missing.push(Missing {
            what: format!("a docker CLI of version 23 or later on `PATH` besides `{CLI20}`"),
            package: None,
        });
    }
    Found {
        dockerd,
        cli20,
        cli28,
        registry,
        busybox,
        htpasswd,
        missing,
    }
}

/// The modern engine's programs and what multi-platform builds need, and what is missing.
#[derive(Debug, Clone)]
pub(crate) struct FoundModern {
    pub dockerd: Option<PathBuf>,
    pub containerd: Option<PathBuf>,
    pub bin_dirs: Vec<PathBuf>,
    pub qemu_aarch64: Option<PathBuf>,
    pub busybox_arm64: Option<PathBuf>,
    pub missing: Vec<Missing>,
}

/// Looks for the modern engine unpacked by `engine install` (Debian 13's `docker.io` and
/// `containerd` in [`MODERN_DIR`]), qemu's arm64 emulator with `update-binfmts`, and the static
/// arm64 busybox.
pub(crate) fn find_modern() -> FoundModern {
    let mut missing = Vec::new();
    let root = Path::new(MODERN_DIR);
    let mut private = |relative: &str, package: &str| {
        let path = root.join(relative);
        if executable(&path) {
            Some(path)
        } else {
            missing.push(Missing {
                what: format!("`{}` (Debian 13's `{package}`)", path.display()),
                package: None,
            });
            None
        }
    };
    let dockerd = private("usr/sbin/dockerd", "docker.io");
    let containerd = private("usr/bin/containerd", "containerd");
    private("usr/bin/containerd-shim-runc-v2", "containerd");
    let qemu = Path::new(QEMU_AARCH64);
    let qemu_aarch64 = executable(qemu).then(|| qemu.to_path_buf());
    if qemu_aarch64.is_none() {
        missing.push(Missing {
            what: format!("the arm64 emulator `{QEMU_AARCH64}`"),
            package: Some("qemu-user-static"),
        });
    }
    if which("update-binfmts").is_none() {
        missing.push(Missing {
            what: "`update-binfmts`".to_string(),
            package: Some("binfmt-support"),
        });
    }
    let busybox = Path::new(BUSYBOX_ARM64);
    let busybox_arm64 = is_static_elf_for(busybox, EM_AARCH64).then(|| busybox.to_path_buf());
    if busybox_arm64.is_none() {
        missing.push(Missing {
            what: format!(
                "a static arm64 busybox at `{BUSYBOX_ARM64}` (Debian 12's arm64 `busybox-static`)"
            ),
            package: None,
        });
    }
    FoundModern {
        dockerd,
        containerd,
        bin_dirs: vec![root.join("usr/sbin"), root.join("usr/bin")],
        qemu_aarch64,
        busybox_arm64,
        missing,
    }
}

/// The buildx plugin, wherever the CLI would find it.
pub(crate) fn buildx_plugin() -> Option<PathBuf> {
    let home = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")));
    home.map(|h| h.join("cli-plugins"))
        .into_iter()
        .chain(PLUGIN_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join("docker-buildx"))
        .find(|p| executable(p))
}

/// The first `name` in `PATH` or in the system's sbin and bin directories.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    which_all(name).into_iter().next()
}

/// Every `name` in `PATH`, then in the system's sbin and bin directories, duplicates removed.
pub(crate) fn which_all(name: &str) -> Vec<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut found: Vec<PathBuf> = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    let dirs = path.split(':').filter(|d| !d.is_empty()).chain([
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]);
    for dir in dirs {
        let candidate = Path::new(dir).join(name);
        if executable(&candidate) {
            let canonical = fs::canonicalize(&candidate).unwrap_or_else(|_| candidate.clone());
            if !seen.contains(&canonical) {
                seen.push(canonical);
                found.push(candidate);
            }
        }
    }
    found
}

fn executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The first `docker` on `PATH` that is not `/usr/bin/docker` and reports version 23 or later.
pub(crate) fn modern_cli() -> Option<PathBuf> {
    let cli20 = fs::canonicalize(CLI20).ok();
    let sh = Shell::new().ok()?;
    which_all("docker").into_iter().find(|candidate| {
        if fs::canonicalize(candidate).ok() == cli20 && cli20.is_some() {
            return false;
        }
        cmd!(sh, "{candidate} --version")
            .quiet()
            .ignore_stderr()
            .read()
            .ok()
            .and_then(|v| client_major(&v))
            .is_some_and(|major| major >= 23)
    })
}

/// The major version in `docker --version` output: `Docker version 28.2.2, build e6534b4`.
pub(crate) fn client_major(version: &str) -> Option<u32> {
    let rest = version.trim().strip_prefix("Docker version ")?;
    rest.split('.').next()?.parse().ok()
}

/// Whether `path` is an ELF file without a program interpreter (statically linked), as an image
/// built `FROM scratch` needs.
pub(crate) fn is_static_elf(path: &Path) -> bool {
    elf_head(path).is_some_and(|head| elf_is_static(&head))
}

/// Whether `path` is a statically linked 64-bit little-endian ELF file for the machine `machine`
/// (`e_machine`, e.g. [`EM_AARCH64`]).
pub(crate) fn is_static_elf_for(path: &Path, machine: u16) -> bool {
    elf_head(path).is_some_and(|head| elf_machine(&head) == Some(machine) && elf_is_static(&head))
}

/// The first 64 KiB of a file.
fn elf_head(path: &Path) -> Option<Vec<u8>> {
    let mut head = vec![0u8; 64 * 1024];
    let n = File::open(path).ok()?.read(&mut head).ok()?;
    head.truncate(n);
    Some(head)
}

/// The `e_machine` field of a 64-bit little-endian ELF header.
pub(crate) fn elf_machine(head: &[u8]) -> Option<u16> {
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return None;
    }
    Some(u16::from_le_bytes([head[0x12], head[0x13]]))
}

/// Whether the start of a 64-bit little-endian ELF file lists no `PT_INTERP` program header.
pub(crate) fn elf_is_static(head: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(head[0x20..0x28].try_into().unwrap_or_default()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        head.get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `e_machine` of x86-64 ELF files.
    const EM_X86_64: u16 = 62;

    #[test]
    fn reads_client_major_versions() {
        assert_eq!(
            client_major("Docker version 28.2.2, build e6534b4\n"),
            Some(28)
        );
        assert_eq!(
            client_major("Docker version 20.10.24+dfsg1, build 297e128"),
            Some(20)
        );
        assert_eq!(client_major("podman version 4.3.1"), None);
    }

    fn elf(program_headers: &[u32]) -> Vec<u8> {
        let mut head = vec![0u8; 64 + 56 * program_headers.len()];
        head[..6].copy_from_slice(b"\x7fELF\x02\x01");
        head[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
        head[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        head[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        head[0x38..0x3a].copy_from_slice(&(program_headers.len() as u16).to_le_bytes());
        for (i, t) in program_headers.iter().enumerate() {
            head[64 + 56 * i..68 + 56 * i].copy_from_slice(&t.to_le_bytes());
        }
        head
    }

    #[test]
    fn tells_static_from_dynamic_elf() {
        assert!(elf_is_static(&elf(&[1, 1, 4])));
        assert!(!elf_is_static(&elf(&[6, 3, 1])));
        assert!(!elf_is_static(b"#!/bin/sh\n"));
        // Program headers beyond what was read: not provably static.
        let mut truncated = elf(&[1, 1]);
        truncated.truncate(100);
        assert!(!elf_is_static(&truncated));
    }

    #[test]
    fn reads_the_elf_machine() {
        assert_eq!(elf_machine(&elf(&[1])), Some(EM_X86_64));
        let mut arm = elf(&[1]);
        arm[0x12..0x14].copy_from_slice(&EM_AARCH64.to_le_bytes());
        assert_eq!(elf_machine(&arm), Some(EM_AARCH64));
        assert_eq!(elf_machine(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn the_system_busybox_is_not_arm64() {
        let busybox = Path::new("/bin/busybox");
        if cfg!(target_arch = "x86_64") && is_static_elf(busybox) {
            assert!(is_static_elf_for(busybox, EM_X86_64));
            assert!(!is_static_elf_for(busybox, EM_AARCH64));
        }
    }
}

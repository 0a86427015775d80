//! Where `engine install` puts what it installs, and where the tests look for it: the one
//! place both read, so that finding and installing never disagree.

/// Private apt state for fetching from Debian 13: sources, lists, caches, downloads.
pub const APT_DIR: &str = "/var/cache/xtask-docker/apt";

/// Private apt state for fetching Debian 12's arm64 packages.
pub const APT_ARM64_DIR: &str = "/var/cache/xtask-docker/apt-arm64";

/// Where Debian 13's `docker.io` and `containerd` are unpacked: the modern engine's dockerd is
/// `usr/sbin/dockerd` in there, containerd and its runc shim are in `usr/bin`.
pub const MODERN_DIR: &str = "/opt/xtask-docker/modern";

/// The programs of [`MODERN_DIR`] the modern engine cannot do without.
pub(crate) const MODERN_PROGRAMS: [&str; 3] = [
    "usr/sbin/dockerd",
    "usr/bin/containerd",
    "usr/bin/containerd-shim-runc-v2",
];

/// The statically linked arm64 busybox (from Debian 12's arm64 `busybox-static`), to copy into
/// `FROM scratch` test images built for `linux/arm64`.
pub const BUSYBOX_ARM64: &str = "/opt/xtask-docker/arm64/busybox";

/// The arm64 emulator Debian 12's `qemu-user-static` registers with `binfmt_misc`.
pub const QEMU_AARCH64: &str = "/usr/libexec/qemu-binfmt/aarch64-binfmt-P";

/// Where `engine install` puts the buildx plugin.
pub(crate) const BUILDX_PLUGIN: &str = "/usr/libexec/docker/cli-plugins/docker-buildx";

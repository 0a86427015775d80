//! Mounts a daemon leaves under its directory (dockerd bind-mounts its data root onto itself,
//! overlay2 mounts layers, containers get `shm` and network namespace mounts).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The mount points listed in a `/proc/PID/mountinfo` text, in order, with `\040`-style escapes
/// undone.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .collect()
}

/// Undoes the octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash) the kernel
/// writes into mountinfo paths.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points at or under `dir`, deepest first (later mounts first among equals, so that a
/// mount stacked on another one goes before it).
pub(crate) fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(usize, usize, PathBuf)> = parse_mountinfo(mountinfo)
        .into_iter()
        .enumerate()
        .filter(|(_, m)| m.starts_with(dir))
        .map(|(i, m)| (m.components().count(), i, m))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse((m.0, m.1)));
    found.into_iter().map(|(_, _, m)| m).collect()
}

/// Lazily unmounts (`umount -l`, i.e. `MNT_DETACH`) everything mounted at or under `dir`, deepest
/// first, until `/proc/self/mountinfo` lists nothing there.
pub(crate) fn unmount_under(dir: &Path) -> Result<()> {
    for _round in 0..5 {
        let info = fs::read_to_string("/proc/self/mountinfo")
            .context("cannot read `/proc/self/mountinfo`")?;
        let mounts = mounts_under(&info, dir);
        if mounts.is_empty() {
            return Ok(());
        }
        for mount in mounts {
            let path = CString::new(mount.as_os_str().as_bytes())?;
            // SAFETY: a valid NUL-terminated path; MNT_DETACH needs nothing else.
            if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                let err = io::Error::last_os_error();
                // EINVAL: no longer a mount point (a parent's lazy unmount took it along).
                if err.raw_os_error() != Some(libc::EINVAL)
                    && err.raw_os_error() != Some(libc::ENOENT)
                {
                    bail!("cannot unmount `{}`: {err}", mount.display());
                }
            }
        }
    }
    bail!(
        "mounts remain under `{}` after five rounds of unmounting",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
24 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
42 24 254:0 /tmp/e/data /tmp/e/data rw,relatime shared:1 - ext4 /dev/vda rw
43 42 0:50 / /tmp/e/data/overlay2/abc/merged rw - overlay overlay rw,lowerdir=x
44 24 0:51 / /tmp/e10/data rw - tmpfs tmpfs rw
45 24 0:52 / /tmp/with\\040space rw - tmpfs tmpfs rw
46 42 0:53 / /tmp/e/data rw - tmpfs tmpfs rw
";

    #[test]
    fn parses_mount_points_and_escapes() {
        let points = parse_mountinfo(INFO);
        assert_eq!(points.len(), 6);
        assert_eq!(points[0], Path::new("/"));
        assert_eq!(points[4], Path::new("/tmp/with space"));
    }

    #[test]
    fn unescapes_octal_only() {
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("a\\011b\\012"), "a\tb\n");
        assert_eq!(unescape("end\\04"), "end\\04");
        assert_eq!(unescape("no\\x41"), "no\\x41");
    }

    #[test]
    fn mounts_under_are_deepest_first_and_whole_components() {
        let under = mounts_under(INFO, Path::new("/tmp/e"));
        assert_eq!(
            under,
            [
                PathBuf::from("/tmp/e/data/overlay2/abc/merged"),
                PathBuf::from("/tmp/e/data"),
                PathBuf::from("/tmp/e/data"),
            ]
        );
        assert!(mounts_under(INFO, Path::new("/nothing")).is_empty());
    }
}

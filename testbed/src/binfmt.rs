//! Running arm64 programs under emulation: the kernel's `binfmt_misc` hands arm64 ELF files to
//! Debian 12's `qemu-user-static`. Neither the mount nor the registration survives a reboot, so
//! both are checked (and made) every time a modern engine starts.

use std::ffi::CString;
use std::fs;
use std::io;
use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::paths::QEMU_AARCH64;
use crate::tools;

/// Where the kernel's `binfmt_misc` file system is mounted.
const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// The name of the arm64 handler, as Debian's `qemu-user-static` registers it.
const HANDLER: &str = "qemu-aarch64";

/// Debian's `systemd-binfmt` line for the handler; what is written to `register` when
/// `update-binfmts` cannot do it.
const BINFMT_D_CONF: &str = "/usr/lib/binfmt.d/qemu-aarch64.conf";

/// The registration of Debian 12's `qemu-user-static` (`/usr/lib/binfmt.d/qemu-aarch64.conf`),
/// used when that file is missing. `F` (fix binary) opens the interpreter now, so that it also
/// runs inside containers whose file system has no qemu.
const REGISTRATION: &str = ":qemu-aarch64:M::\
\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\
\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:\
/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF";

/// What the kernel says about a handler (`/proc/sys/fs/binfmt_misc/NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Handler {
    pub enabled: bool,
    pub interpreter: String,
    pub flags: String,
}

/// Parses the text of `/proc/sys/fs/binfmt_misc/NAME`.
pub(crate) fn parse_handler(text: &str) -> Option<Handler> {
    let mut lines = text.lines();
    let enabled = match lines.next()?.trim() {
        "enabled" => true,
        "disabled" => false,
        _ => return None,
    };
    let mut handler = Handler {
        enabled,
        interpreter: String::new(),
        flags: String::new(),
    };
    for line in lines {
        if let Some(rest) = line.strip_prefix("interpreter ") {
            handler.interpreter = rest.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("flags:") {
            handler.flags = rest.trim().to_string();
        }
    }
    Some(handler)
}

fn handler() -> Option<Handler> {
    let text = fs::read_to_string(Path::new(BINFMT_DIR).join(HANDLER)).ok()?;
    parse_handler(&text)
}

/// Mounts `binfmt_misc` at `/proc/sys/fs/binfmt_misc` unless its `register` file is there.
pub(crate) fn mount_binfmt_misc() -> Result<()> {
    let dir = Path::new(BINFMT_DIR);
    if dir.join("register").exists() {
        return Ok(());
    }
    let c = |s: &str| CString::new(s).expect("no NUL in a constant");
    let (source, target, fstype) = (c("binfmt_misc"), c(BINFMT_DIR), c("binfmt_misc"));
    // SAFETY: valid NUL-terminated strings; binfmt_misc takes no data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        // Another process may have mounted it meanwhile.
        if !dir.join("register").exists() {
            bail!("cannot mount `binfmt_misc` on `{BINFMT_DIR}`: {err}");
        }
    }
    Ok(())
}

/// Makes sure arm64 programs run under emulation, also inside containers: mounts `binfmt_misc` if
/// needed and registers (or enables) Debian's `qemu-aarch64` handler with the `F` flag, first
/// through `update-binfmts --enable`, else by writing the `register` file. Idempotent; safe
/// against another process doing the same at the same time. Needs root and `qemu-user-static`.
pub fn ensure_arm64_emulation() -> Result<()> {
    if !Path::new(QEMU_AARCH64).exists() {
        bail!("cannot set up arm64 emulation: `{QEMU_AARCH64}` is missing (Debian package `qemu-user-static`); install with `cargo xtask engine install`");
    }
    mount_binfmt_misc()?;
    let entry = Path::new(BINFMT_DIR).join(HANDLER);
    match handler() {
        Some(h) if h.enabled => {}
        Some(_) => {
            // Registered but switched off.
            fs::write(&entry, "1")
                .with_context(|| format!("cannot enable `{}`", entry.display()))?;
        }
        None => register()?,
    }
    match handler() {
        Some(h) if h.enabled && h.flags.contains('F') => Ok(()),
        Some(h) if h.enabled => bail!(
            "the binfmt handler `{}` has flags `{}` without `F`: arm64 steps would not find `{}` inside containers; remove it (`echo -1 > {}`) and start again",
            entry.display(),
            h.flags,
            h.interpreter,
            entry.display()
        ),
        _ => bail!("the binfmt handler `{}` is not enabled", entry.display()),
    }
}

/// Registers the handler: `update-binfmts --enable` (after `--import` if binfmt-support does not
/// know it yet), else the `systemd-binfmt` line written to `register` directly.
fn register() -> Result<()> {
    if let Some(update) = tools::which("update-binfmts") {
        let sh = Shell::new()?;
        if !Path::new("/var/lib/binfmts").join(HANDLER).exists() {
            let _ = cmd!(sh, "{update} --import {HANDLER}")
                .quiet()
                .ignore_stdout()
                .ignore_stderr()
                .run();
        }
        let _ = cmd!(sh, "{update} --enable {HANDLER}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run();
        if handler().is_some_and(|h| h.enabled) {
            return Ok(());
        }
    }
    let line = fs::read_to_string(BINFMT_D_CONF)
        .ok()
        .and_then(|text| {
            text.lines()
                .map(str::trim)
                .find(|l| l.starts_with(&format!(":{HANDLER}:")))
                .map(str::to_string)
        })
        .unwrap_or_else(|| REGISTRATION.to_string());
    let register = Path::new(BINFMT_DIR).join("register");
    if let Err(e) = fs::write(&register, &line) {
        // EEXIST: someone registered it meanwhile.
        if handler().is_none() {
            return Err(e).with_context(|| {
                format!("cannot register `{HANDLER}` in `{}`", register.display())
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_handler_files() {
        let text = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\nmagic 7f454c46\nmask ffffffff\n";
        assert_eq!(
            parse_handler(text),
            Some(Handler {
                enabled: true,
                interpreter: "/usr/libexec/qemu-binfmt/aarch64-binfmt-P".into(),
                flags: "POF".into(),
            })
        );
        assert!(!parse_handler("disabled\nflags: \n").unwrap().enabled);
        assert_eq!(parse_handler(""), None);
        assert_eq!(parse_handler("what\n"), None);
    }

    #[test]
    fn the_fallback_registration_is_well_formed() {
        let fields: Vec<&str> = REGISTRATION.split(':').collect();
        assert_eq!(fields.len(), 8, "{REGISTRATION}");
        assert_eq!(fields[1], HANDLER);
        assert_eq!(fields[2], "M");
        assert_eq!(fields[4].len(), 20 * 4);
        assert_eq!(fields[5].len(), 20 * 4);
        assert_eq!(fields[6], QEMU_AARCH64);
        assert!(fields[7].contains('F'));
    }
}

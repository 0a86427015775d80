//! Processes: starting daemons in their own session, waiting for conditions, ending them.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Directories a daemon needs on `PATH` to find its helpers (`containerd`, `runc`, `umount`).
const SYSTEM_PATH: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// Starts `program` with `args` in a new session (so that it outlives its parent and no terminal
/// signal reaches it), stdin closed, stdout and stderr appended to `log`.
pub(crate) fn spawn_daemon<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    log: &Path,
) -> Result<Child> {
    spawn_daemon_with(program, args, log, &[], &[])
}

/// [`spawn_daemon`] with `path_first` put before the rest of `PATH` and the variables `env` set.
pub(crate) fn spawn_daemon_with<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    log: &Path,
    path_first: &[PathBuf],
    env: &[(&str, &OsStr)],
) -> Result<Child> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open log file `{}`", log.display()))?;
    let err = out.try_clone()?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env("PATH", daemon_path(path_first))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("cannot start `{}`", program.display()))
}

/// `first`, then `PATH`, with the system's binary directories added when missing.
fn daemon_path(first: &[PathBuf]) -> String {
    let current = std::env::var("PATH").unwrap_or_default();
    let first: Vec<String> = first.iter().map(|p| p.display().to_string()).collect();
    let mut parts: Vec<&str> = first.iter().map(String::as_str).collect();
    for dir in current
        .split(':')
        .filter(|p| !p.is_empty())
        .chain(SYSTEM_PATH)
    {
        if !parts.contains(&dir) {
            parts.push(dir);
        }
    }
    parts.join(":")
}

/// Calls `probe` every `interval` until it yields a value, it fails, or `timeout` passes.
///
/// `probe` returns `Ok(None)` for "not yet" and `Err` for "will never happen" (e.g. the process
/// died), which ends the wait at once.
pub(crate) fn wait_for<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = probe()? {
            return Ok(value);
        }
        if start.elapsed() >= timeout {
            bail!("timed out after {}s waiting for {what}", timeout.as_secs());
        }
        thread::sleep(interval);
    }
}

/// Whether a process with this pid exists and is not a zombie.
pub(crate) fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !zombie(pid)
}

/// Whether `/proc/PID/stat` says the process is a zombie (dead, not yet reaped).
fn zombie(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat_state(&stat) == Some('Z')
}

/// The state letter of a `/proc/PID/stat` line (the field after the parenthesised name).
pub(crate) fn stat_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// The arguments of a running process, from `/proc/PID/cmdline`.
pub(crate) fn cmdline(pid: i32) -> Vec<String> {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(bytes) => split_cmdline(&bytes),
        Err(_) => Vec::new(),
    }
}

/// Splits a NUL-separated command line.
pub(crate) fn split_cmdline(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Whether one of `args` names `dir` or a path inside it (also as part of `--flag=PATH` or
/// `unix://PATH`).
pub(crate) fn mentions(args: &[String], dir: &Path) -> bool {
    let dir = dir.to_string_lossy();
    let dir = dir.trim_end_matches('/');
    let inside = format!("{dir}/");
    args.iter().any(|arg| {
        arg.contains(&inside)
            || arg == dir
            || arg.ends_with(&format!("={dir}"))
            || arg.ends_with(&format!("//{dir}"))
    })
}

/// Pids of every process (but this one) whose command line names `dir` or a path inside it.
pub(crate) fn processes_mentioning(dir: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me && alive(*pid) && mentions(&cmdline(*pid), dir))
        .collect()
}

/// Reads a pid file; `None` when it is missing or holds no number.
pub(crate) fn read_pidfile(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sends SIGTERM, waits up to `grace` for the process to end, then SIGKILL and waits up to 10 s.
/// Returns an error when the process is still there after that.
pub(crate) fn terminate(pid: i32, grace: Duration) -> Result<()> {
    if !alive(pid) {
        return Ok(());
    }
    signal(pid, libc::SIGTERM);
    let interval = Duration::from_millis(20);
    let gone = || Ok((!alive(pid)).then_some(()));
    if wait_for("exit", grace, interval, gone).is_ok() {
        return Ok(());
    }
    signal(pid, libc::SIGKILL);
    wait_for(
        &format!("process `{pid}` to end after SIGKILL"),
        Duration::from_secs(10),
        interval,
        gone,
    )
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: plain kill(2) on a pid we checked to be alive; a race only yields ESRCH.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Ends every process whose command line mentions `dir` (helpers a killed daemon left behind,
/// such as `containerd` and its shims).
pub(crate) fn terminate_mentioning(dir: &Path) -> Result<()> {
    for pid in processes_mentioning(dir) {
        terminate(pid, Duration::from_secs(5))?;
    }
    Ok(())
}

/// Reaps `child` if it has ended, so that it leaves no zombie.
pub(crate) fn reap(child: &mut Option<Child>) {
    if let Some(c) = child.as_mut() {
        if let Ok(Some(_)) = c.try_wait() {
            *child = None;
        }
    }
}

/// The last `lines` lines of a log file.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_state_skips_the_name() {
        assert_eq!(stat_state("42 (a) b) Z 1 2 3"), Some('Z'));
        assert_eq!(stat_state("7 (dockerd) S 1 7 7 0"), Some('S'));
        assert_eq!(stat_state("garbage"), None);
    }

    #[test]
    fn mentions_matches_whole_paths_only() {
        let dir = Path::new("/tmp/xtd-engine-1-1");
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(mentions(
            &args(&["dockerd", "--data-root", "/tmp/xtd-engine-1-1/data"]),
            dir
        ));
        assert!(mentions(
            &args(&["dockerd", "-H", "unix:///tmp/xtd-engine-1-1"]),
            dir
        ));
        assert!(mentions(&args(&["x", "--root=/tmp/xtd-engine-1-1"]), dir));
        assert!(!mentions(
            &args(&["dockerd", "--data-root", "/tmp/xtd-engine-1-10/data"]),
            dir
        ));
        assert!(!mentions(&args(&["/tmp/xtd-engine-1-10"]), dir));
    }

    #[test]
    fn daemon_path_puts_the_given_dirs_first_once() {
        let path = daemon_path(&[PathBuf::from("/opt/x/usr/sbin"), PathBuf::from("/usr/bin")]);
        let parts: Vec<&str> = path.split(':').collect();
        assert_eq!(parts[..2], ["/opt/x/usr/sbin", "/usr/bin"]);
        assert_eq!(parts.iter().filter(|p| **p == "/usr/bin").count(), 1);
        for dir in SYSTEM_PATH {
            assert!(parts.contains(&dir), "{path}");
        }
    }

    #[test]
    fn cmdline_splits_on_nul() {
        assert_eq!(split_cmdline(b"a\0b c\0\0d\0"), ["a", "b c", "d"]);
    }

    #[test]
    fn this_process_is_alive() {
        assert!(alive(std::process::id() as i32));
        assert!(!alive(0));
        assert!(!alive(-1));
    }

    #[test]
    fn wait_for_times_out_with_a_clear_error() {
        let err = wait_for::<()>("nothing", Duration::ZERO, Duration::ZERO, || Ok(None))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "timed out after 0s waiting for nothing");
    }
}

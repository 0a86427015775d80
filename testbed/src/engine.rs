//! Docker engines: each one a separate dockerd with its own data, sockets and pid file, as a
//! fresh CI agent would have.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::{mounts, process, temp_dir, tree_bytes, ModernTools, Tools};

/// Longest path a unix socket may have (`sun_path` is 108 bytes with the closing NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How long an engine may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long dockerd (and containerd) may take to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// A modern engine's containerd socket, in its directory.
const CONTAINERD_SOCKET: &str = "ctrd.sock";

/// A modern engine's containerd pid file, in its directory (written by the testbed).
const CONTAINERD_PID: &str = "ctrd.pid";

/// A modern engine's containerd log, in its directory.
const CONTAINERD_LOG: &str = "ctrd.log";

/// Which kind of engine to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flavor {
    /// Debian 12's dockerd 20.10 with its classic image store and BuildKit v0.8 built in (the
    /// `docker` build driver: no cache export).
    #[default]
    Classic,
    /// Debian 13's dockerd 26 on a private containerd 1.7, with the containerd image store
    /// (`"features": {"containerd-snapshotter": true}`): its `docker` build driver exports cache
    /// (`--cache-to type=registry,...,mode=max`) and builds for several platforms at once, arm64
    /// steps running under qemu (needs [`Tools::modern`](crate::Tools::modern)).
    Modern,
}

/// Where and how to start an engine.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// The kind of engine.
    pub flavor: Flavor,
    /// A fixed directory that outlives the engine (its data is kept); default: a new temporary
    /// directory that is deleted when the engine stops.
    pub dir: Option<PathBuf>,
}

/// A running dockerd (and, for [`Flavor::Modern`], its containerd), stopped (and, if its
/// directory is temporary, deleted) when dropped.
///
/// Its directory holds `sock` (the API socket), `pid`, `dockerd.log`, `daemon.json`, `data` (the
/// data root), `exec` (the exec root) and `config` (an empty `DOCKER_CONFIG` for clients). A
/// modern engine's also holds containerd's `ctrd.sock`, `ctrd.pid`, `ctrd.toml`, `ctrd.log`,
/// `ctrd-root`, `ctrd-state`, and `tmp` (the daemons' `TMPDIR`, so that their temporary mounts
/// are under the directory too).
#[derive(Debug)]
pub struct Engine {
    flavor: Flavor,
    dir: PathBuf,
    owns_dir: bool,
    pid: i32,
    child: Option<Child>,
    containerd: Option<Child>,
    detached: bool,
}

/// The processes of a started engine.
struct Daemons {
    dockerd: Child,
    containerd: Option<Child>,
}

impl Engine {
    /// Starts an engine and waits until `docker version` answers through its socket.
    ///
    /// A [`Flavor::Modern`] engine first makes sure arm64 emulation is registered
    /// ([`install::ensure_arm64_emulation`](crate::install::ensure_arm64_emulation)), then starts
    /// containerd and waits for its socket, then dockerd.
    pub fn start(tools: &Tools, options: EngineOptions) -> Result<Engine> {
        let modern = match options.flavor {
            Flavor::Classic => None,
            Flavor::Modern => Some(tools.modern.as_ref().context(
                "the modern engine is not installed (dockerd 26 in `/opt/xtask-docker/modern`, qemu, the arm64 busybox); install with `cargo xtask engine install`",
            )?),
        };
        let (dir, owns_dir) = match &options.dir {
            Some(dir) => {
                fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create `{}`", dir.display()))?;
                (fs::canonicalize(dir)?, false)
            }
            None => (temp_dir("engine")?, true),
        };
        let result = Self::start_in(tools, modern, &dir);
        if result.is_err() && owns_dir {
            let _ = mounts::unmount_under(&dir);
            let _ = fs::remove_dir_all(&dir);
        }
        let daemons = result?;
        Ok(Engine {
            flavor: options.flavor,
            dir,
            owns_dir,
            pid: daemons.dockerd.id() as i32,
            child: Some(daemons.dockerd),
            containerd: daemons.containerd,
            detached: false,
        })
    }

    fn start_in(tools: &Tools, modern: Option<&ModernTools>, dir: &Path) -> Result<Daemons> {
        let socket = dir.join("sock");
        let mut sockets = vec![socket.clone()];
        if modern.is_some() {
            // containerd also listens on `ADDRESS.ttrpc`.
            sockets.push(dir.join("ctrd.sock.ttrpc"));
        }
        for path in &sockets {
            if path.as_os_str().len() > MAX_SOCKET_PATH {
                bail!(
                    "socket path `{}` is longer than {MAX_SOCKET_PATH} bytes; set TMPDIR to a shorter directory",
                    path.display()
                );
            }
        }
        let pidfile = dir.join("pid");
        if let Some(pid) = running_in(dir) {
            bail!(
                "an engine already runs in `{}` (pid `{pid}`)",
                dir.display()
            );
        }
        // What a killed engine left: its pid files (dockerd refuses to start while it exists),
        // helpers such as containerd and its shims, mounts.
        for stale in [pidfile.clone(), dir.join(CONTAINERD_PID)] {
            if stale.exists() {
                fs::remove_file(&stale).with_context(|| {
                    format!("cannot remove stale pid file `{}`", stale.display())
                })?;
            }
        }
        process::terminate_mentioning(dir)?;
        mounts::unmount_under(dir)?;
        // The exec roots are run-time state only. A killed engine's `containerd.pid` in there
        // makes the next dockerd wait forever for that containerd if its pid is still taken (by a
        // zombie not yet reaped, or by another process); a killed containerd's state names shims
        // that are gone.
        for runtime in ["exec", "ctrd-state", "tmp"] {
            let runtime = dir.join(runtime);
            if runtime.exists() {
                fs::remove_dir_all(&runtime).with_context(|| {
                    format!(
                        "cannot clear the stale run-time state `{}`",
                        runtime.display()
                    )
                })?;
            }
        }
        for sub in ["data", "exec", "config"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let path = |name: &str| dir.join(name).display().to_string();
        let mut args = vec![
            "--config-file".to_string(),
            path("daemon.json"),
            "--data-root".to_string(),
            path("data"),
            "--exec-root".to_string(),
            path("exec"),
            "--pidfile".to_string(),
            path("pid"),
            "-H".to_string(),
            format!("unix://{}", socket.display()),
            "--bridge=none".to_string(),
            "--iptables=false".to_string(),
            "--ip6tables=false".to_string(),
        ];
        let log = dir.join("dockerd.log");
        let (program, cli, mut containerd) = match modern {
            None => {
                fs::write(dir.join("daemon.json"), "{}\n")?;
                (&tools.dockerd, &tools.cli20, None)
            }
            Some(modern) => {
                crate::install::ensure_arm64_emulation().context("cannot start a modern engine")?;
                fs::write(
                    dir.join("daemon.json"),
                    "{\"features\": {\"containerd-snapshotter\": true}}\n",
                )?;
                let containerd = start_containerd(modern, dir)?;
                args.extend(["--containerd".to_string(), path(CONTAINERD_SOCKET)]);
                (&modern.dockerd, &tools.cli28, Some(containerd))
            }
        };
        let tmp = dir.join("tmp");
        let (path_first, env): (&[PathBuf], Vec<(&str, &OsStr)>) = match modern {
            None => (&[], Vec::new()),
            Some(modern) => (&modern.path, vec![("TMPDIR", tmp.as_os_str())]),
        };
        let spawned = process::spawn_daemon_with(program, &args, &log, path_first, &env);
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                abandon(dir, None, containerd.take());
                return Err(e);
            }
        };
        let host = format!("unix://{}", socket.display());
        let sh = Shell::new()?;
        let format = "{{.Server.Version}}";
        let ready = process::wait_for(
            &format!("dockerd in `{}` to answer", dir.display()),
            START_TIMEOUT,
            Duration::from_millis(50),
            || {
                if let Some(status) = child.try_wait()? {
                    bail!("dockerd exited ({status}) before it answered");
                }
                if let Some(status) = containerd
                    .as_mut()
                    .map(Child::try_wait)
                    .transpose()?
                    .flatten()
                {
                    bail!("containerd exited ({status}) before dockerd answered");
                }
                if !socket.exists() {
                    return Ok(None);
                }
                let answer = cmd!(sh, "{cli} version --format {format}")
                    .env("DOCKER_HOST", &host)
                    .quiet()
                    .ignore_stderr()
                    .read();
                Ok(answer.ok().filter(|v| !v.trim().is_empty()).map(|_| ()))
            },
        );
        if let Err(e) = ready {
            abandon(dir, Some(child), containerd.take());
            let mut logs = format!(
                "engine did not start; last lines of `{}`:\n{}",
                log.display(),
                process::tail(&log, 30)
            );
            if modern.is_some() {
                let ctrd_log = dir.join(CONTAINERD_LOG);
                logs.push_str(&format!(
                    "\nlast lines of `{}`:\n{}",
                    ctrd_log.display(),
                    process::tail(&ctrd_log, 15)
                ));
            }
            return Err(e.context(logs));
        }
        Ok(Daemons {
            dockerd: child,
            containerd,
        })
    }

    /// The kind of engine.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// The value for `DOCKER_HOST`: `unix://DIR/sock`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.join("sock").display())
    }

    /// The engine's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data root (`--data-root`): images, build cache, containers.
    pub fn data_root(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// An empty directory for `DOCKER_CONFIG`, so that a client of this engine (`docker login`)
    /// starts without credentials, as on a fresh agent, and writes none into `~/.docker`.
    pub fn docker_config(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// The pid of dockerd.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Bytes the agent holds on disk: the files under the data root, and on the modern engine also
    /// under its containerd's root, where that engine keeps image content and snapshots (symbolic
    /// links not followed, mounts not entered, hard-linked files counted once).
    pub fn disk_usage(&self) -> u64 {
        let mut total = tree_bytes(&self.data_root());
        if self.flavor == Flavor::Modern {
            total += tree_bytes(&self.dir.join("ctrd-root"));
        }
        total
    }

    /// What dockerd logged so far.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.join("dockerd.log"))
    }

    /// What a modern engine's containerd logged so far (empty for a classic engine).
    pub fn containerd_log(&self) -> String {
        read_lossy(&self.dir.join(CONTAINERD_LOG))
    }

    /// The pid of a modern engine's containerd (`None` for a classic engine, whose dockerd runs
    /// its own).
    pub fn containerd_pid(&self) -> Option<u32> {
        containerd_in(&self.dir).map(|p| p as u32)
    }

    /// Stops dockerd (SIGTERM, SIGKILL after 20 s), then a modern engine's containerd (the same),
    /// then whatever else names the directory (containerd's shims), unmounts what is left under
    /// the directory and deletes the directory if it is a temporary one. Problems are printed,
    /// not returned.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Leaves the engine running after this value is gone (for `cargo xtask engine up`), returns
    /// the pid of dockerd. [`Engine::stop_in`] stops it (and its containerd) later.
    pub fn detach(mut self) -> u32 {
        self.detached = true;
        self.child = None;
        self.containerd = None;
        self.pid as u32
    }

    /// The pid of the engine running in `dir`, according to its pid file, if there is one.
    pub fn running_in(dir: &Path) -> Option<u32> {
        running_in(dir).map(|p| p as u32)
    }

    /// Stops an engine (either flavour) that was started in `dir` and detached, unmounts what it
    /// left there and removes its pid files; keeps the data. Returns whether an engine was
    /// running.
    pub fn stop_in(dir: &Path) -> Result<bool> {
        let dir =
            fs::canonicalize(dir).with_context(|| format!("no directory `{}`", dir.display()))?;
        let pid = running_in(&dir);
        let containerd = containerd_in(&dir);
        stop_engine(&dir, pid, None, None)?;
        let _ = fs::remove_file(dir.join("pid"));
        let _ = fs::remove_file(dir.join(CONTAINERD_PID));
        Ok(pid.is_some() || containerd.is_some())
    }

    fn shutdown(&mut self) {
        if self.detached {
            return;
        }
        self.detached = true;
        let (child, containerd) = (self.child.take(), self.containerd.take());
        let result = stop_engine(&self.dir, Some(self.pid), child, containerd).and_then(|()| {
            if self.owns_dir {
                fs::remove_dir_all(&self.dir)
                    .with_context(|| format!("cannot remove `{}`", self.dir.display()))?;
            }
            Ok(())
        });
        if let Err(e) = result {
            eprintln!(
                "warning: stopping the engine in `{}`: {e:#}",
                self.dir.display()
            );
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The live dockerd whose pid file is in `dir` and whose command line names `dir`.
fn running_in(dir: &Path) -> Option<i32> {
    let pid = process::read_pidfile(&dir.join("pid"))?;
    (process::alive(pid) && process::mentions(&process::cmdline(pid), dir)).then_some(pid)
}

/// The live containerd whose pid file (written by the testbed) is in `dir` and whose command line
/// names `dir`.
fn containerd_in(dir: &Path) -> Option<i32> {
    let pid = process::read_pidfile(&dir.join(CONTAINERD_PID))?;
    (process::alive(pid) && process::mentions(&process::cmdline(pid), dir)).then_some(pid)
}

/// Stops dockerd, then the containerd of a modern engine, then everything else naming `dir`
/// (shims), and unmounts everything under `dir`.
fn stop_engine(
    dir: &Path,
    pid: Option<i32>,
    child: Option<Child>,
    containerd: Option<Child>,
) -> Result<()> {
    if let Some(pid) = pid {
        process::terminate(pid, STOP_GRACE)?;
    }
    if let Some(mut child) = child {
        child.wait()?;
    }
    let containerd_pid = containerd
        .as_ref()
        .map(|c| c.id() as i32)
        .or_else(|| containerd_in(dir));
    if let Some(pid) = containerd_pid {
        process::terminate(pid, STOP_GRACE)?;
    }
    if let Some(mut containerd) = containerd {
        containerd.wait()?;
    }
    process::terminate_mentioning(dir)?;
    mounts::unmount_under(dir)
}

/// Ends what a failed start left running and unmounts what it mounted; removes the pid files.
fn abandon(dir: &Path, dockerd: Option<Child>, containerd: Option<Child>) {
    for mut child in dockerd.into_iter().chain(containerd) {
        let _ = process::terminate(child.id() as i32, Duration::from_secs(5));
        let _ = child.wait();
    }
    let _ = process::terminate_mentioning(dir);
    let _ = mounts::unmount_under(dir);
    let _ = fs::remove_file(dir.join("pid"));
    let _ = fs::remove_file(dir.join(CONTAINERD_PID));
}

/// A TOML basic string holding `path`.
fn toml_string(path: &Path) -> String {
    let text = path.display().to_string();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// containerd's configuration: no CRI plugin (no Kubernetes here), and the `opt` plugin's folder
/// inside the engine's directory instead of `/opt/containerd`.
fn containerd_config(dir: &Path) -> String {
    format!(
        "version = 2\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         \n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}\n",
        toml_string(&dir.join("ctrd-root/opt"))
    )
}

/// Starts a modern engine's containerd in `dir` (its own session, the private programs first on
/// `PATH`, `TMPDIR` inside `dir`), writes its pid file and waits until its socket accepts
/// connections.
fn start_containerd(modern: &ModernTools, dir: &Path) -> Result<Child> {
    for sub in ["ctrd-root", "ctrd-state", "tmp"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let config = dir.join("ctrd.toml");
    fs::write(&config, containerd_config(dir))
        .with_context(|| format!("cannot write `{}`", config.display()))?;
    let socket = dir.join(CONTAINERD_SOCKET);
    let path = |name: &str| dir.join(name).display().to_string();
    let args = [
        "--config".to_string(),
        path("ctrd.toml"),
        "--address".to_string(),
        path(CONTAINERD_SOCKET),
        "--root".to_string(),
        path("ctrd-root"),
        "--state".to_string(),
        path("ctrd-state"),
    ];
    let log = dir.join(CONTAINERD_LOG);
    let tmp = dir.join("tmp");
    let mut child = process::spawn_daemon_with(
        &modern.containerd,
        &args,
        &log,
        &modern.path,
        &[("TMPDIR", tmp.as_os_str())],
    )?;
    let pidfile = dir.join(CONTAINERD_PID);
    let ready = fs::write(&pidfile, format!("{}\n", child.id()))
        .with_context(|| format!("cannot write `{}`", pidfile.display()))
        .and_then(|()| {
            process::wait_for(
                &format!("containerd in `{}` to listen", dir.display()),
                START_TIMEOUT,
                Duration::from_millis(20),
                || {
                    if let Some(status) = child.try_wait()? {
                        bail!("containerd exited ({status}) before it listened");
                    }
                    Ok(UnixStream::connect(&socket).ok().map(|_| ()))
                },
            )
        });
    if let Err(e) = ready {
        abandon(dir, None, Some(child));
        return Err(e.context(format!(
            "containerd did not start; last lines of `{}`:\n{}",
            log.display(),
            process::tail(&log, 30)
        )));
    }
    Ok(child)
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_config_keeps_everything_in_the_engine_dir() {
        let config = containerd_config(Path::new("/tmp/xtd-engine-1-2"));
        assert_eq!(
            config,
            "version = 2\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             \n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"/tmp/xtd-engine-1-2/ctrd-root/opt\"\n"
        );
        assert_eq!(toml_string(Path::new("/a\"b\\c")), r#""/a\"b\\c""#);
    }
}

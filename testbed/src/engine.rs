//! Docker engines: each one a separate dockerd with its own data, sockets and pid file, as a
//! fresh CI agent would have.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::{mounts, process, temp_dir, tree_bytes, Tools};

/// Longest path a unix socket may have (`sun_path` is 108 bytes with the closing NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How long an engine may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long dockerd may take to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// Which kind of engine to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flavor {
    /// Debian 12's dockerd 20.10 with its classic image store and BuildKit v0.8 built in (the
    /// `docker` build driver: no cache export).
    #[default]
    Classic,
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

/// A running dockerd, stopped (and, if its directory is temporary, deleted) when dropped.
///
/// Its directory holds `sock` (the API socket), `pid`, `dockerd.log`, `daemon.json`, `data` (the
/// data root), `exec` (the exec root) and `config` (an empty `DOCKER_CONFIG` for clients).
#[derive(Debug)]
pub struct Engine {
    flavor: Flavor,
    dir: PathBuf,
    owns_dir: bool,
    pid: i32,
    child: Option<Child>,
    detached: bool,
}

impl Engine {
    /// Starts an engine and waits until `docker version` answers through its socket.
    pub fn start(tools: &Tools, options: EngineOptions) -> Result<Engine> {
        let (dir, owns_dir) = match &options.dir {
            Some(dir) => {
                fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create `{}`", dir.display()))?;
                (fs::canonicalize(dir)?, false)
            }
            None => (temp_dir("engine")?, true),
        };
        let result = Self::start_in(tools, options.flavor, &dir);
        if result.is_err() && owns_dir {
            let _ = mounts::unmount_under(&dir);
            let _ = fs::remove_dir_all(&dir);
        }
        let (pid, child) = result?;
        Ok(Engine {
            flavor: options.flavor,
            dir,
            owns_dir,
            pid,
            child: Some(child),
            detached: false,
        })
    }

    fn start_in(tools: &Tools, flavor: Flavor, dir: &Path) -> Result<(i32, Child)> {
        let Flavor::Classic = flavor;
        let socket = dir.join("sock");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "socket path `{}` is longer than {MAX_SOCKET_PATH} bytes; set TMPDIR to a shorter directory",
                socket.display()
            );
        }
        let pidfile = dir.join("pid");
        if let Some(pid) = running_in(dir) {
            bail!(
                "an engine already runs in `{}` (pid `{pid}`)",
                dir.display()
            );
        }
        // What a killed engine left: its pid file (dockerd refuses to start while it exists),
        // helpers such as containerd, mounts.
        if pidfile.exists() {
            fs::remove_file(&pidfile)
                .with_context(|| format!("cannot remove stale pid file `{}`", pidfile.display()))?;
        }
        process::terminate_mentioning(dir)?;
        mounts::unmount_under(dir)?;
        // The exec root is run-time state only. A killed engine's `containerd.pid` in there makes
        // the next dockerd wait forever for that containerd if its pid is still taken (by a
        // zombie not yet reaped, or by another process).
        let exec = dir.join("exec");
        if exec.exists() {
            fs::remove_dir_all(&exec).with_context(|| {
                format!("cannot clear the stale exec root `{}`", exec.display())
            })?;
        }
        for sub in ["data", "exec", "config"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        fs::write(dir.join("daemon.json"), "{}\n")?;
        let log = dir.join("dockerd.log");
        let path = |name: &str| dir.join(name).display().to_string();
        let args = [
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
        let mut child = process::spawn_daemon(&tools.dockerd, &args, &log)?;
        let pid = child.id() as i32;
        let host = format!("unix://{}", socket.display());
        let sh = Shell::new()?;
        let cli = &tools.cli20;
        let format = "{{.Server.Version}}";
        let ready = process::wait_for(
            &format!("dockerd in `{}` to answer", dir.display()),
            START_TIMEOUT,
            Duration::from_millis(100),
            || {
                if let Some(status) = child.try_wait()? {
                    bail!("dockerd exited ({status}) before it answered");
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
            let _ = process::terminate(pid, Duration::from_secs(5));
            let _ = child.wait();
            let _ = process::terminate_mentioning(dir);
            let _ = mounts::unmount_under(dir);
            let _ = fs::remove_file(&pidfile);
            return Err(e.context(format!(
                "engine did not start; last lines of `{}`:\n{}",
                log.display(),
                process::tail(&log, 30)
            )));
        }
        Ok((pid, child))
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

    /// Bytes in the files under the data root (symbolic links not followed, mounts not entered,
    /// hard-linked files counted once).
    pub fn disk_usage(&self) -> u64 {
        tree_bytes(&self.data_root())
    }

    /// What dockerd logged so far.
    pub fn log(&self) -> String {
        fs::read(self.dir.join("dockerd.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Stops dockerd (SIGTERM, SIGKILL after 20 s), unmounts what is left under the directory and
    /// deletes the directory if it is a temporary one. Problems are printed, not returned.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Leaves the engine running after this value is gone (for `cargo xtask engine up`), returns
    /// its pid. [`Engine::stop_in`] stops it later.
    pub fn detach(mut self) -> u32 {
        self.detached = true;
        self.child = None;
        self.pid as u32
    }

    /// The pid of the engine running in `dir`, according to its pid file, if there is one.
    pub fn running_in(dir: &Path) -> Option<u32> {
        running_in(dir).map(|p| p as u32)
    }

    /// Stops an engine that was started in `dir` and detached, unmounts what it left there and
    /// removes its pid file; keeps the data. Returns whether an engine was running.
    pub fn stop_in(dir: &Path) -> Result<bool> {
        let dir =
            fs::canonicalize(dir).with_context(|| format!("no directory `{}`", dir.display()))?;
        let pid = running_in(&dir);
        stop_engine(&dir, pid, None)?;
        let _ = fs::remove_file(dir.join("pid"));
        Ok(pid.is_some())
    }

    fn shutdown(&mut self) {
        if self.detached {
            return;
        }
        self.detached = true;
        let result = stop_engine(&self.dir, Some(self.pid), self.child.take()).and_then(|()| {
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

fn stop_engine(dir: &Path, pid: Option<i32>, child: Option<Child>) -> Result<()> {
    if let Some(pid) = pid {
        process::terminate(pid, STOP_GRACE)?;
    }
    if let Some(mut child) = child {
        child.wait()?;
    }
    process::terminate_mentioning(dir)?;
    mounts::unmount_under(dir)
}

//! How the tool runs the docker CLI: each command as an argv (no shell ever parses a command
//! line), in a process group of its own that is known while it runs, so that a failure or a
//! signal ends every command of the run: the preflight's probes, the registry questions asked
//! while it goes on, and the steps (the group also reaches the buildx plugin that the Docker
//! 28 CLI starts).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// How long a command gets to end after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(10);

/// The commands of one run, by process group; cloning shares them.
#[derive(Clone, Default)]
pub struct Processes {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Running commands: a number of ours -> their process group id.
    groups: Mutex<BTreeMap<u64, u32>>,
    next: AtomicU64,
    cancelled: AtomicBool,
}

/// What a streamed command printed, stdout and stderr alike, and how it ended.
#[derive(Debug, Clone)]
pub struct Streamed {
    /// `Err` with the exit status (or why it could not run) when it did not succeed.
    pub result: Result<(), String>,
    /// Everything it printed, line by line.
    pub text: String,
}

impl Default for Streamed {
    /// A command that succeeded and printed nothing.
    fn default() -> Streamed {
        Streamed {
            result: Ok(()),
            text: String::new(),
        }
    }
}

impl Processes {
    /// No command yet.
    pub fn new() -> Processes {
        Processes::default()
    }

    /// Whether the run was cancelled: commands that start now are ended at once.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Ends every running command, and every one that starts from now on: SIGTERM to its
    /// process group, SIGKILL to those still there after a grace period.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        let groups = self.groups();
        for &group in &groups {
            signal_group(group, libc::SIGTERM);
        }
        let inner = self.inner.clone();
        std::thread::spawn(move || {
            std::thread::sleep(GRACE);
            let left: Vec<u32> = inner
                .groups
                .lock()
                .map(|g| g.values().copied().collect())
                .unwrap_or_default();
            for group in left.into_iter().filter(|g| groups.contains(g)) {
                signal_group(group, libc::SIGKILL);
            }
        });
    }

    /// Kills every running command at once (a second signal does not wait for the grace).
    pub fn kill(&self) {
        for group in self.groups() {
            signal_group(group, libc::SIGKILL);
        }
    }

    fn groups(&self) -> Vec<u32> {
        self.inner
            .groups
            .lock()
            .map(|g| g.values().copied().collect())
            .unwrap_or_default()
    }

    /// Starts `program ARGS` with `env` in a process group of its own, its output piped.
    fn spawn<S: AsRef<OsStr>>(
        &self,
        program: &str,
        args: &[S],
        env: &[(String, String)],
        stdin: bool,
    ) -> std::io::Result<(Child, Registered)> {
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let child = command.spawn()?;
        let key = self.inner.next.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut groups) = self.inner.groups.lock() {
            groups.insert(key, child.id());
        }
        // A cancellation that came while this command was starting missed it: end it now.
        if self.is_cancelled() {
            signal_group(child.id(), libc::SIGTERM);
        }
        let registered = Registered {
            key,
            processes: self.clone(),
        };
        Ok((child, registered))
    }

    /// Runs `program ARGS` to completion with a time limit, capturing its output.
    pub fn capture<S: AsRef<OsStr>>(
        &self,
        program: &str,
        args: &[S],
        limit: Duration,
    ) -> std::io::Result<Output> {
        let (child, registered) = self.spawn(program, args, &[], false)?;
        let group = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let output = child.wait_with_output();
            drop(registered);
            let _ = tx.send(output);
        });
        match rx.recv_timeout(limit) {
            Ok(result) => result,
            Err(_) => {
                signal_group(group, libc::SIGKILL);
                let words: Vec<String> = args
                    .iter()
                    .map(|a| a.as_ref().to_string_lossy().into_owned())
                    .collect();
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "`{program} {}` did not answer within {}s",
                        words.join(" "),
                        limit.as_secs()
                    ),
                ))
            }
        }
    }

    /// Runs `program ARGS` with `env` and `stdin` on its standard input, handing each line it
    /// prints (stdout and stderr alike) to `on_line` as it comes, and keeping them all.
    pub fn stream(
        &self,
        program: &str,
        args: &[String],
        env: &[(String, String)],
        stdin: Option<&str>,
        on_line: &mut dyn FnMut(&str),
    ) -> Streamed {
        let (mut child, _registered) = match self.spawn(program, args, env, stdin.is_some()) {
            Ok(spawned) => spawned,
            Err(e) => {
                return Streamed {
                    result: Err(format!("cannot run `{program}`: {e}")),
                    text: String::new(),
                }
            }
        };
        // Written on a thread of its own: a program may print before it reads all of it.
        let writer = stdin.zip(child.stdin.take()).map(|(text, mut pipe)| {
            let text = text.to_string();
            std::thread::spawn(move || {
                use std::io::Write;
                let _ = pipe.write_all(text.as_bytes());
            })
        });
        let (line_tx, line_rx) = mpsc::channel::<String>();
        let readers: Vec<Box<dyn Read + Send>> = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .collect();
        let threads: Vec<_> = readers
            .into_iter()
            .map(|reader| {
                let line_tx = line_tx.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(reader).lines() {
                        let Ok(line) = line else { break };
                        if line_tx.send(line).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        drop(line_tx);
        let mut text = String::new();
        for line in line_rx {
            on_line(&line);
            text.push_str(&line);
            text.push('\n');
        }
        for thread in threads {
            let _ = thread.join();
        }
        if let Some(writer) = writer {
            let _ = writer.join();
        }
        let result = match child.wait() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(status.to_string()),
            Err(e) => Err(e.to_string()),
        };
        Streamed { result, text }
    }
}

/// A command's place among the run's groups while it runs; it leaves them when dropped.
struct Registered {
    key: u64,
    processes: Processes,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut groups) = self.processes.inner.groups.lock() {
            groups.remove(&self.key);
        }
    }
}

fn signal_group(group: u32, signal: i32) {
    if let Ok(group) = libc::pid_t::try_from(group) {
        // SAFETY: kill(2) on a process group we created; a group that is gone gives ESRCH.
        unsafe { libc::kill(-group, signal) };
    }
}

//! Runs one step's command: the side of a step that the scheduler does not see.

use std::io;
use std::process::Output;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::engine::process::Processes;
use crate::engine::PROBE_TIMEOUT;
use crate::plan::{Action, MountKind, Step, WHOLE};

use super::outcome;
use super::schedule::{Finished, Ran};
use super::Msg;

/// How many times a push is tried when the registry is unreachable, rate-limiting or failing.
const PUSH_TRIES: u32 = 3;

/// Runs `step`'s command, its output lines sent to `tx` as they come. A question takes its
/// answer from `asked`, the same command started earlier, where there is one.
pub(crate) fn run(
    step: &Step,
    processes: &Processes,
    asked: Option<JoinHandle<io::Result<Output>>>,
    tx: &Sender<Msg>,
) -> Finished {
    let started = SystemTime::now();
    let ran = match &step.action {
        Action::Inspect(inspect) => {
            let output = match asked {
                Some(handle) => handle
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("the question panicked"))),
                None => processes.capture(&step.program, &step.args, PROBE_TIMEOUT),
            };
            Ran::Answered(
                crate::engine::read_inspect(&inspect.image, &output),
                crate::engine::read_layers(&output),
            )
        }
        Action::Push(push) => {
            let mut wait = Duration::from_millis(500);
            let mut tries = 1;
            loop {
                let streamed = stream(step, processes, tx);
                match outcome::retry(&streamed) {
                    Some(problem) if tries < PUSH_TRIES && !processes.is_cancelled() => {
                        let _ = tx.send(Msg::Line(
                            step.id,
                            format!(
                                "retrying the push of `{}` in {:.1}s ({problem:?})",
                                push.image,
                                wait.as_secs_f64()
                            ),
                        ));
                        // A backoff before another try, not a wait for an event.
                        std::thread::sleep(wait);
                        wait *= 3;
                        tries += 1;
                    }
                    _ => break Ran::Streamed(streamed),
                }
            }
        }
        Action::Mount(mount) if mount.kind == MountKind::Export => {
            let streamed = stream(step, processes, tx);
            let on_base = crate::plan::on_scratch(&step.args) != step.args;
            if !on_base || streamed.result.is_ok() || processes.is_cancelled() {
                return finished(step, started, Ran::Streamed(streamed));
            }
            // An export on top of a restored copy that cannot be (it says why), or that failed
            // (the copy gone from the registry since the restore, say): the whole mount instead.
            // A failure of the whole export is then the step's.
            let text = crate::progress::readable(&streamed.text);
            let why = text
                .lines()
                .find_map(|line| Some(line[line.find(WHOLE)? + WHOLE.len()..].trim()))
                .unwrap_or("the export on the restored copy failed");
            let _ = tx.send(Msg::Line(
                step.id,
                crate::plan::exporting_whole(&mount.id, why),
            ));
            let mut step = step.clone();
            step.args = crate::plan::on_scratch(&step.args);
            Ran::Streamed(stream(&step, processes, tx))
        }
        Action::Build(_) | Action::Pull(_) | Action::Mark { .. } | Action::Mount(_) => {
            Ran::Streamed(stream(step, processes, tx))
        }
    };
    finished(step, started, ran)
}

fn finished(step: &Step, started: SystemTime, ran: Ran) -> Finished {
    Finished {
        id: step.id,
        started,
        ended: SystemTime::now(),
        ran,
    }
}

fn stream(
    step: &Step,
    processes: &Processes,
    tx: &Sender<Msg>,
) -> crate::engine::process::Streamed {
    processes.stream(
        &step.program,
        &step.args,
        &step.env,
        step.stdin.as_deref(),
        &mut |line| {
            let _ = tx.send(Msg::Line(step.id, line.to_string()));
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::process::Streamed;

    /// An export that runs `sh -c SCRIPT sh XTD_BASE=...`: the script sees the base as `$1`.
    fn export(script: &str, base: &str) -> Step {
        let mut step = crate::exec::decide::tests::mount_step(MountKind::Export);
        step.program = "sh".into();
        step.args = vec![
            "-c".into(),
            script.into(),
            "sh".into(),
            format!("XTD_BASE={base}"),
        ];
        step
    }

    fn run_export(step: &Step) -> (Streamed, Vec<String>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let finished = run(step, &Processes::new(), None, &tx);
        drop(tx);
        let lines = rx
            .into_iter()
            .filter_map(|m| match m {
                Msg::Line(_, line) => Some(line),
                _ => None,
            })
            .collect();
        match finished.ran {
            Ran::Streamed(streamed) => (streamed, lines),
            Ran::Answered(..) => panic!("an answer"),
        }
    }

    #[test]
    fn an_export_on_a_restored_copy_that_cannot_be_or_failed_exports_the_whole_mount() {
        let script = format!(
            "case \"$1\" in XTD_BASE=scratch) echo whole;; *) [ -n \"$WHY\" ] && echo \"{WHOLE}$WHY\"; exit 3;; esac"
        );
        let mut step = export(&script, "r/x:mount-target-main@sha256:d");
        for (why, told) in [
            (
                "a file was deleted since the restore",
                "a file was deleted since the restore",
            ),
            ("", "the export on the restored copy failed"),
        ] {
            step.env = vec![("WHY".into(), why.into())];
            let (streamed, lines) = run_export(&step);
            assert_eq!(streamed.result, Ok(()), "{}", streamed.text);
            assert_eq!(streamed.text.trim(), "whole");
            assert!(
                lines
                    .iter()
                    .any(|l| l == &format!("exporting the whole cache mount `target`: {told}")),
                "{lines:?}"
            );
        }
        // On scratch already, a failure is the step's own, and nothing is tried again.
        let (streamed, lines) = run_export(&export("echo once; exit 3", "scratch"));
        assert!(streamed.result.is_err());
        assert_eq!(lines, vec!["once".to_string()]);
        // On a base, a success is the step's.
        let (streamed, _) = run_export(&export("echo added", "r/x:t@sha256:d"));
        assert_eq!((streamed.result, streamed.text.trim()), (Ok(()), "added"));
    }
}

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
            // An export on top of a restored copy that cannot be: the whole mount instead.
            let text = crate::progress::readable(&streamed.text);
            let whole = text
                .lines()
                .find_map(|line| Some(line[line.find(WHOLE)? + WHOLE.len()..].trim()));
            match whole {
                Some(why) if streamed.result.is_err() && !processes.is_cancelled() => {
                    let _ = tx.send(Msg::Line(
                        step.id,
                        format!("exporting the whole cache mount `{}`: {why}", mount.id),
                    ));
                    let mut step = step.clone();
                    step.args = crate::plan::on_scratch(&step.args);
                    Ran::Streamed(stream(&step, processes, tx))
                }
                _ => Ran::Streamed(streamed),
            }
        }
        Action::Build(_) | Action::Pull(_) | Action::Mark { .. } | Action::Mount(_) => {
            Ran::Streamed(stream(step, processes, tx))
        }
    };
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

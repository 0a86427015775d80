//! Runs a plan's steps against the engine: independent steps at once (`--jobs`), each command in
//! a process group of its own so that a failure or a signal ends all of it, output streamed and
//! read once, as it comes.
//!
//! The rooms: [`schedule`] (the loop's state, pure: what starts, what is skipped), [`decide`]
//! (the rules it applies), [`outcome`] (how a finished command becomes a step's outcome),
//! [`steps`] (runs one step's command), [`result`] (what the run did). What happens is told to
//! a [`Listener`], which the report implements and tests replace.

use std::collections::BTreeMap;
use std::io;
use std::process::Output;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use crate::engine::process::Processes;
use crate::engine::PROBE_TIMEOUT;
use crate::plan::{Action, Plan, Step};

mod decide;
mod outcome;
mod result;
mod schedule;
mod steps;

pub(crate) use outcome::human_bytes;
pub use result::{Outcome, RunResult, StepResult, Verdict};

use schedule::{Finished, Launch, Scheduler};

/// What is told of a run as it goes: the report implements it, tests replace it.
pub trait Listener: Sync {
    /// `step` starts; `runs` is false for a step that is skipped, which is
    /// [`finished`](Listener::finished) at once.
    fn started(&self, plan: &Plan, step: &Step, runs: bool);
    /// One line of a running step's output.
    fn output(&self, plan: &Plan, step: &Step, line: &str);
    /// `step` ended.
    fn finished(&self, plan: &Plan, step: &Step, result: &StepResult);
    /// The registry check of `package` concluded.
    fn checked(&self, package: &str, verdict: &Verdict);
    /// A signal came: every running command is being ended.
    fn interrupted(&self, signal: i32);
}

/// How to run.
#[derive(Debug, Clone, Copy)]
pub struct ExecOptions {
    /// How many steps may run at once (questions to the registry are not counted).
    pub jobs: usize,
}

/// What the run loop hears.
pub(crate) enum Msg {
    Line(usize, String),
    Done(Finished),
    Signal(i32),
}

/// One run's commands, from the preflight on: SIGINT and SIGTERM end every one of them, the
/// registry questions asked during the preflight included.
pub struct Session {
    processes: Processes,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    signals: Option<signal_hook::iterator::Handle>,
    /// The first signal, once one came.
    interrupted: Arc<AtomicI32>,
    /// Questions to the registry started early, by step, with their argv.
    asked: BTreeMap<usize, (Vec<String>, JoinHandle<io::Result<Output>>)>,
}

impl Session {
    /// Starts listening for SIGINT and SIGTERM: the first ends every command of the run gently
    /// (SIGTERM, then SIGKILL after a grace period), a second at once.
    pub fn new() -> Session {
        let processes = Processes::new();
        let (tx, rx) = mpsc::channel();
        let interrupted = Arc::new(AtomicI32::new(0));
        let signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ]);
        let signals = signals.ok().map(|mut signals| {
            let handle = signals.handle();
            let (tx, processes, interrupted) = (tx.clone(), processes.clone(), interrupted.clone());
            std::thread::spawn(move || {
                for signal in signals.forever() {
                    if interrupted
                        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        processes.cancel();
                    } else {
                        processes.kill();
                    }
                    if tx.send(Msg::Signal(signal)).is_err() {
                        break;
                    }
                }
            });
            handle
        });
        Session {
            processes,
            tx,
            rx,
            signals,
            interrupted,
            asked: BTreeMap::new(),
        }
    }

    /// The run's commands, for the preflight's probes.
    pub fn processes(&self) -> &Processes {
        &self.processes
    }

    /// The signal that ended the run, if one came.
    pub fn interrupted(&self) -> Option<i32> {
        match self.interrupted.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }

    /// Starts asking the registry every question of the plan, while the preflight probes the
    /// engine (both are round trips of a few CLI processes, and neither needs the other's
    /// answer). Each step then takes its answer instead of asking again.
    pub fn prefetch(&mut self, plan: &Plan) {
        let mut seen = Vec::new();
        let first = |s: &&Step| matches!(&s.action, Action::Inspect(i) if i.role.is_asked_first());
        for step in plan.steps.iter().filter(first) {
            // A question two packages ask is asked once early; the second asks again.
            if seen.contains(&&step.args) {
                continue;
            }
            seen.push(&step.args);
            let (processes, program, args) = (
                self.processes.clone(),
                step.program.clone(),
                step.args.clone(),
            );
            let handle =
                std::thread::spawn(move || processes.capture(&program, &args, PROBE_TIMEOUT));
            self.asked.insert(step.id, (step.args.clone(), handle));
        }
    }

    /// Runs `plan` on `engine` (what it held before the run): each step once the steps
    /// it waits for are done (or may be passed), up to `jobs` at once. The first failure, or
    /// SIGINT or SIGTERM, ends every running command and starts no more.
    pub fn run(
        mut self,
        plan: &Plan,
        options: ExecOptions,
        engine: &crate::engine::Engine,
        listener: &dyn Listener,
    ) -> RunResult {
        let mut scheduler = Scheduler::new(plan, options.jobs, engine.local_tags.clone());
        scheduler.engine_holds_mounts(engine.cache_mounts.clone());
        if let Some(signal) = self.interrupted() {
            scheduler.on_signal(signal);
        }
        loop {
            for launch in scheduler.start_ready(SystemTime::now()) {
                match launch {
                    Launch::Run(step, note) => {
                        listener.started(plan, &step, true);
                        if let Some(line) = note {
                            listener.output(plan, &plan.steps[step.id], &line);
                        }
                        let (step, processes, tx) = (
                            (*step).into_owned(),
                            self.processes.clone(),
                            self.tx.clone(),
                        );
                        // An answer to the very question the step asks, if it was asked early.
                        let asked = self
                            .asked
                            .remove(&step.id)
                            .filter(|(args, _)| *args == step.args)
                            .map(|(_, handle)| handle);
                        std::thread::spawn(move || {
                            let finished = steps::run(&step, &processes, asked, &tx);
                            let _ = tx.send(Msg::Done(finished));
                        });
                    }
                    Launch::Skipped(step, result) => {
                        listener.started(plan, step, false);
                        listener.finished(plan, step, &result);
                    }
                }
            }
            if !scheduler.is_busy() {
                break;
            }
            let Ok(msg) = self.rx.recv() else { break };
            match msg {
                Msg::Line(id, line) => {
                    for text in scheduler.on_line(id, &line) {
                        listener.output(plan, &plan.steps[id], &text);
                    }
                }
                Msg::Signal(signal) => {
                    // The signal thread has already ended the commands.
                    if scheduler.on_signal(signal) {
                        listener.interrupted(signal);
                    }
                }
                Msg::Done(finished) => {
                    let was_stopped = scheduler.is_stopped();
                    let ended = scheduler.on_done(finished);
                    if let Some(verdict) = &ended.verdict {
                        listener.checked(&ended.step.package, verdict);
                    }
                    listener.finished(plan, ended.step, &ended.result);
                    if scheduler.is_stopped() && !was_stopped {
                        self.processes.cancel();
                    }
                }
            }
        }
        if let Some(handle) = self.signals.take() {
            handle.close();
        }
        // A question asked early that no step took (a run stopped before it) ends with the run.
        self.processes.cancel();
        scheduler.finish()
    }
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

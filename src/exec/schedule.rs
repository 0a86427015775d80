//! The scheduler: which steps start, which are skipped, and what each ending teaches the run.
//!
//! Pure: it is told what happened (a line of output, a command that ended, a signal) and says
//! what to start; the run loop in `exec` does the starting. So every scheduling rule is tested
//! here with made-up events, without an engine.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use crate::engine::process::Streamed;
use crate::engine::Answer;
use crate::plan::{Action, Plan, Step};
use crate::progress::{push_digest, BuildProgress};

use super::decide::{self, Knowledge, Start};
use super::outcome;
use super::result::{Outcome, RunResult, StepResult, Verdict};

/// A step's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Waiting,
    Running,
    Ended { ok: bool },
}

/// What the run loop is to do with a step that can start now.
#[derive(Debug)]
pub(crate) enum Launch<'p> {
    /// Run its command.
    Run(&'p Step),
    /// Nothing to run: it was skipped, with this result.
    Skipped(&'p Step, Box<StepResult>),
}

/// What a step's command did, as the run loop saw it.
#[derive(Debug)]
pub(crate) enum Ran {
    /// A command whose output was streamed (a build, a push after its tries, a pull, a mark).
    Streamed(Streamed),
    /// A question to the registry, and its answer.
    Answered(Answer),
}

/// A step whose command ended.
#[derive(Debug)]
pub(crate) struct Finished {
    /// The step.
    pub id: usize,
    /// When its command started and ended.
    pub started: SystemTime,
    /// When it ended.
    pub ended: SystemTime,
    /// What it did.
    pub ran: Ran,
}

/// What one ending changed.
#[derive(Debug)]
pub(crate) struct Ended<'p> {
    /// The step.
    pub step: &'p Step,
    /// Its result, as recorded.
    pub result: StepResult,
    /// The registry check's verdict for the step's package, when this answer completed it.
    pub verdict: Option<Verdict>,
}

/// The run's state between events.
pub(crate) struct Scheduler<'p> {
    plan: &'p Plan,
    jobs: usize,
    status: Vec<Status>,
    /// Running steps that `--jobs` counts (questions to the registry do not).
    busy: usize,
    running: usize,
    known: Knowledge,
    /// The progress of each running build, fed line by line: its output is parsed once.
    live: BTreeMap<usize, BuildProgress>,
    /// No step starts any more: one failed, or a signal came.
    stopped: bool,
    interrupted: Option<i32>,
    /// The steps in the order they are considered when `--jobs` leaves a choice.
    priority: Vec<usize>,
    results: Vec<StepResult>,
    /// The packages whose verdict was given.
    judged: BTreeSet<String>,
}

impl<'p> Scheduler<'p> {
    /// A scheduler for `plan`, running up to `jobs` steps at once, on an engine that held
    /// `local_tags` before the run (`None`: unknown).
    pub fn new(plan: &'p Plan, jobs: usize, local_tags: Option<BTreeSet<String>>) -> Self {
        // Questions first (they are cheap and decide the rest), then the final builds that
        // every package's result waits for, then the rest, each in plan order. (A stage build
        // that starts early must not keep another package's final build waiting.)
        let mut priority: Vec<usize> = (0..plan.steps.len()).collect();
        priority.sort_by_key(|&i| match &plan.steps[i].action {
            Action::Inspect(_) => 0,
            Action::Build(b) if b.is_final => 1,
            _ => 2,
        });
        Scheduler {
            plan,
            jobs: jobs.max(1),
            status: vec![Status::Waiting; plan.steps.len()],
            busy: 0,
            running: 0,
            known: Knowledge {
                local_tags,
                ..Knowledge::default()
            },
            live: BTreeMap::new(),
            stopped: false,
            interrupted: None,
            priority,
            results: Vec::new(),
            judged: BTreeSet::new(),
        }
    }

    /// Whether a step is still running.
    pub fn is_busy(&self) -> bool {
        self.running > 0
    }

    /// Whether the run is being stopped (a step failed, or a signal came).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Every step that can start now, in priority order: those to run, now marked running,
    /// and those decided skipped, now ended (which may let others start in the same call).
    pub fn start_ready(&mut self, now: SystemTime) -> Vec<Launch<'p>> {
        let mut launches = Vec::new();
        loop {
            let mut skipped = false;
            for index in 0..self.priority.len() {
                let id = self.priority[index];
                let step = &self.plan.steps[id];
                if self.stopped || self.status[id] != Status::Waiting {
                    continue;
                }
                let counts = !step.is_question();
                if (counts && !self.has_slot(step)) || !self.ready(step) {
                    continue;
                }
                match decide::start(step, &self.known) {
                    Start::Run => {
                        self.status[id] = Status::Running;
                        self.running += 1;
                        self.busy += usize::from(counts);
                        launches.push(Launch::Run(step));
                    }
                    Start::Skip(why) => {
                        self.status[id] = Status::Ended { ok: true };
                        let mut result = StepResult::new(id, now);
                        result.outcome = Outcome::Skipped(why);
                        self.results.push(result.clone());
                        launches.push(Launch::Skipped(step, Box::new(result)));
                        skipped = true;
                    }
                }
            }
            if !skipped {
                return launches;
            }
        }
    }

    /// Whether `--jobs` leaves a slot for `step`. A final build that has not started yet keeps
    /// a claim on a free slot: every package's result waits for its final build, so a stage
    /// build (started early, or not) does not take the last slot while one is waiting for its
    /// registry check.
    fn has_slot(&self, step: &Step) -> bool {
        let free = self.jobs.saturating_sub(self.busy);
        if matches!(&step.action, Action::Build(b) if b.is_final) {
            return free > 0;
        }
        let waiting_finals = self
            .plan
            .steps
            .iter()
            .filter(|s| matches!(&s.action, Action::Build(b) if b.is_final))
            .filter(|s| {
                self.status[s.id] == Status::Waiting && !self.known.fresh.contains_key(&s.package)
            })
            .count();
        free > waiting_finals.min(self.jobs - 1)
    }

    /// Whether every step `step` waits for has ended well, or may be passed.
    fn ready(&self, step: &Step) -> bool {
        step.after.iter().all(|&a| {
            self.status[a] == Status::Ended { ok: true }
                || decide::may_start_before(self.plan, step, a, &self.known)
        })
    }

    /// One line of a running step's output. A build's progress learns from it which stages
    /// ran a step, which may let a step start early.
    pub fn on_line(&mut self, id: usize, line: &str) {
        let step = &self.plan.steps[id];
        let Action::Build(build) = &step.action else {
            return;
        };
        let progress = self.live.entry(id).or_default();
        progress.feed(line);
        // Only a step's end can tell that it ran (one just started may yet be a cache hit).
        if line.contains(" DONE ") {
            let ran = progress.stages_that_ran_so_far(&build.stage);
            self.known
                .ran
                .entry(step.package.clone())
                .or_default()
                .extend(ran);
        }
    }

    /// A step's command ended: its result, and what it teaches the run. A failure stops the
    /// run: no step starts any more, and the run loop ends the running ones.
    pub fn on_done(&mut self, finished: Finished) -> Ended<'p> {
        let id = finished.id;
        let step = &self.plan.steps[id];
        self.running -= 1;
        self.busy -= usize::from(!step.is_question());
        let mut result = StepResult::new(id, finished.started);
        result.ended = finished.ended;
        result.seconds = finished
            .ended
            .duration_since(finished.started)
            .unwrap_or_default()
            .as_secs_f64();
        let mut verdict = None;
        match (&step.action, finished.ran) {
            (Action::Inspect(inspect), Ran::Answered(answer)) => {
                result.outcome = outcome::inspect(inspect, &answer);
                self.known
                    .registry
                    .insert(inspect.image.clone(), answer.clone());
                result.answer = Some(answer);
                if inspect.role.is_lookup() {
                    verdict = self.verdict(&step.package);
                }
            }
            (action, Ran::Streamed(streamed)) => {
                result.outcome = match action {
                    Action::Build(build) => {
                        let progress = self.live.remove(&id).unwrap_or_default();
                        let ran = progress.stages_that_ran(&build.stage);
                        self.known
                            .ran
                            .entry(step.package.clone())
                            .or_default()
                            .extend(ran);
                        let outcome =
                            outcome::build(step, build, &progress, &streamed, self.stopped);
                        result.progress = Some(progress);
                        outcome
                    }
                    Action::Push(push) => outcome::push(step, push, &streamed),
                    Action::Pull(pull) => outcome::pull(pull, &streamed),
                    Action::Mark { marker } => outcome::mark(marker, &streamed),
                    Action::Inspect(_) => Outcome::Failed("a question that printed".into()),
                };
                if matches!(action, Action::Push(_) | Action::Mark { .. })
                    && result.outcome == Outcome::Done
                {
                    result.digest = push_digest(&streamed.text);
                }
                result.output = streamed.text;
            }
            (_, Ran::Answered(_)) => {
                result.outcome = Outcome::Failed("an answer to a step that asks nothing".into())
            }
        }
        let ok = !matches!(result.outcome, Outcome::Failed(_));
        self.status[id] = Status::Ended { ok };
        if !ok {
            self.stopped = true;
        }
        self.results.push(result.clone());
        Ended {
            step,
            result,
            verdict,
        }
    }

    /// The registry check's verdict for `package`, once the last of its questions is answered.
    fn verdict(&mut self, package: &str) -> Option<Verdict> {
        if self.judged.contains(package) {
            return None;
        }
        let mut questions = Vec::new();
        for step in &self.plan.steps {
            let Action::Inspect(inspect) = &step.action else {
                continue;
            };
            if step.package != package || !inspect.role.is_lookup() {
                continue;
            }
            match self.known.registry.get(&inspect.image) {
                Some(answer) if self.status[step.id] != Status::Waiting => {
                    questions.push((inspect, answer))
                }
                _ => return None,
            }
        }
        let verdict = decide::verdict(&questions);
        self.judged.insert(package.to_string());
        if let Verdict::Fresh { marker } = &verdict {
            self.known.fresh.insert(package.to_string(), marker.clone());
        }
        Some(verdict)
    }

    /// A signal came: no step starts any more. True for the first one, which ends the running
    /// commands gently; a later one kills them.
    pub fn on_signal(&mut self, signal: i32) -> bool {
        self.stopped = true;
        if self.interrupted.is_some() {
            return false;
        }
        self.interrupted = Some(signal);
        true
    }

    /// What the run did, once nothing runs any more.
    pub fn finish(self, seconds: f64) -> RunResult {
        RunResult {
            steps: self.results,
            seconds,
            interrupted: self.interrupted,
            fresh: self.known.fresh,
        }
    }
}

//! The scheduler: which steps start, which are skipped, and what each ending teaches the run.
//!
//! Pure: it is told what happened (a line of output, a command that ended, a signal) and says
//! what to start; the run loop in `exec` does the starting. So every scheduling rule is tested
//! here with made-up events, without an engine.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use crate::engine::process::Streamed;
use crate::engine::Answer;
use crate::plan::{Action, MountKind, MountStep, Plan, Step};
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
    /// Run its command: the plan's, or (an export on top of a restored copy) the plan's with
    /// what the run learned; with a line for the run to tell first, if any (why an export takes
    /// the whole mount).
    Run(Box<Cow<'p, Step>>, Option<String>),
    /// Nothing to run: it was skipped, with this result.
    Skipped(&'p Step, Box<StepResult>),
}

/// What a step's command did, as the run loop saw it.
#[derive(Debug)]
pub(crate) enum Ran {
    /// A command whose output was streamed (a build, a push after its tries, a pull, a mark).
    Streamed(Streamed),
    /// A question to the registry, its answer, and the layers of what it holds.
    Answered(Answer, BTreeSet<String>),
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

    /// What the engine's list of cache mounts said before the run (`None`: not known).
    pub fn engine_holds_mounts(&mut self, descriptions: Option<Vec<String>>) {
        self.known.mounts_held = descriptions;
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
                        let (step, note) = self.as_run(step);
                        launches.push(Launch::Run(Box::new(step), note));
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

    /// `step` as it runs: an export of a mount that a restore of this run copied in exports
    /// what changed on top of the copy it read (see `plan::mounts`); an export that takes the
    /// whole mount comes with the line that says why.
    fn as_run(&self, step: &'p Step) -> (Cow<'p, Step>, Option<String>) {
        let Action::Mount(mount) = &step.action else {
            return (Cow::Borrowed(step), None);
        };
        if mount.kind != MountKind::Export {
            return (Cow::Borrowed(step), None);
        }
        match decide::export_base(&self.known, mount) {
            Ok(base) => {
                let mut step = step.clone();
                step.args = crate::plan::on_base(&step.args, &base);
                (Cow::Owned(step), None)
            }
            Err(why) => (
                Cow::Borrowed(step),
                Some(crate::plan::exporting_whole(&mount.id, &why)),
            ),
        }
    }

    /// Whether `--jobs` leaves a slot for `step`. A final build that has not started yet keeps
    /// a claim on a free slot: every package's result waits for its final build, so a stage
    /// build (started early, or not) does not take the last slot while one is waiting for its
    /// registry check. A cache mount's restore is on the same path (every build of its package
    /// waits for it), so the claim does not hold it back either: a package's restores run at
    /// once.
    fn has_slot(&self, step: &Step) -> bool {
        let free = self.jobs.saturating_sub(self.busy);
        let on_the_final_s_path = match &step.action {
            Action::Build(b) => b.is_final,
            Action::Mount(m) => m.kind == MountKind::Restore,
            _ => false,
        };
        if on_the_final_s_path {
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

    /// One line of a running step's output; returns what to show of it. A build's progress
    /// learns from it which stages ran a step, which may let a step start early, and a line of
    /// BuildKit's JSON is shown in the plain form's words (or not at all, while a JSON object is
    /// still being read).
    pub fn on_line(&mut self, id: usize, line: &str) -> Vec<String> {
        let step = &self.plan.steps[id];
        let build = match &step.action {
            Action::Build(build) => Some(build),
            // The builds that restore and export cache mounts print BuildKit's progress too.
            Action::Mount(m) if m.kind != MountKind::Push => None,
            _ => return vec![line.to_string()],
        };
        let progress = self.live.entry(id).or_default();
        let reading = progress.read(line);
        if let (true, Some(build)) = (reading.ran, build) {
            let ran = progress.stages_that_ran_so_far(&build.stage);
            self.known
                .ran
                .entry(step.package.clone())
                .or_default()
                .extend(ran);
        }
        reading.text
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
            (Action::Inspect(inspect), Ran::Answered(answer, layers)) => {
                result.outcome = outcome::inspect(inspect, &answer);
                self.known.layers.insert(inspect.image.clone(), layers);
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
                        let steps = progress.steps().into_iter().filter(|s| !s.cached);
                        let steps: Vec<(String, String)> = steps
                            .map(|s| (s.stage_or(&build.stage).to_string(), s.name.clone()))
                            .collect();
                        self.known
                            .ran_steps
                            .entry(step.package.clone())
                            .or_default()
                            .extend(steps);
                        let outcome =
                            outcome::build(step, build, &progress, &streamed, self.stopped);
                        result.progress = Some(progress);
                        outcome
                    }
                    Action::Push(push) => outcome::push(step, push, &streamed),
                    Action::Pull(pull) => outcome::pull(pull, &streamed),
                    Action::Mark { marker } => outcome::mark(marker, &streamed),
                    Action::Mount(mount) => {
                        let text = crate::progress::readable(&streamed.text);
                        result.bytes = crate::plan::printed_size(&text);
                        result.added = crate::plan::printed_added(&text);
                        let outcome =
                            outcome::mount(step, mount, &streamed, result.bytes, self.stopped);
                        match (mount.kind, &outcome) {
                            (MountKind::Restore, Outcome::Done) => {
                                self.known.restored.insert(mount.id.clone());
                                let asked = self.known.registry.get(&mount.image);
                                let digest = decide::restored_digest(&text, &mount.image, asked);
                                if let Some(digest) = digest.filter(|_| copied(&text)) {
                                    self.known
                                        .restored_from
                                        .insert(mount.id.clone(), (mount.image.clone(), digest));
                                }
                            }
                            (MountKind::Export, Outcome::Done | Outcome::Warning(_)) => {
                                self.known.exported.insert(mount.image.clone());
                            }
                            _ => {}
                        }
                        outcome
                    }
                    Action::Inspect(_) => Outcome::Failed("a question that printed".into()),
                };
                let pushed = matches!(
                    action,
                    Action::Mount(MountStep {
                        kind: MountKind::Push,
                        ..
                    })
                );
                if (pushed || matches!(action, Action::Push(_) | Action::Mark { .. }))
                    && result.outcome == Outcome::Done
                {
                    result.digest = push_digest(&streamed.text);
                }
                // An export that pushes: what it printed tells whether the copy was pushed.
                if let Action::Mount(
                    m @ MountStep {
                        kind: MountKind::Export,
                        pushes: true,
                        ..
                    },
                ) = action
                {
                    result.digest = crate::progress::pushed_manifest(
                        &crate::progress::readable(&streamed.text),
                        &m.image,
                    );
                }
                result.output = streamed.text;
            }
            (_, Ran::Answered(..)) => {
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
    pub fn finish(self) -> RunResult {
        RunResult {
            steps: self.results,
            interrupted: self.interrupted,
            fresh: self.known.fresh,
        }
    }
}

/// Whether a restore's output ([`readable`](crate::progress::readable)) tells that it copied
/// the image into the mount and left the record an export needs.
fn copied(text: &str) -> bool {
    text.lines()
        .any(|line| line.trim_end().ends_with(crate::plan::COPIED))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::config;
    use crate::plan::tests::input;
    use crate::plan::{Options, Push, Role};

    const SERVICE: &str = "\
FROM scratch AS toolchain
COPY busybox /bin/busybox
FROM toolchain AS compile
COPY src ./src
RUN make
FROM toolchain AS runtime
COPY --from=compile /out /out
";

    /// The example service's plan with `--push`, marked (sources known).
    fn service_plan(options: &Options) -> Plan {
        let mut input = input(
            config(&[("compile", "compile"), ("runtime", "dev")], &["latest"]),
            SERVICE,
        );
        input.sources = Some("f00d".into());
        crate::plan::plan(&[input], options).unwrap()
    }

    fn push_all() -> Options {
        Options {
            push: Push::All,
            ..Options::new("docker")
        }
    }

    /// The id of the step that `find` picks.
    fn id(plan: &Plan, find: impl Fn(&Step) -> bool) -> usize {
        plan.steps.iter().find(|s| find(s)).expect("a step").id
    }

    fn build_of(plan: &Plan, stage: &str) -> usize {
        id(
            plan,
            |s| matches!(&s.action, Action::Build(b) if b.stage == stage),
        )
    }

    fn pull_of(plan: &Plan) -> usize {
        id(plan, |s| matches!(s.action, Action::Pull(_)))
    }

    fn names(launches: &[Launch]) -> Vec<String> {
        launches
            .iter()
            .map(|l| match l {
                Launch::Run(s, _) => format!("run {}", s.id),
                Launch::Skipped(s, r) => format!("skip {} ({:?})", s.id, r.outcome),
            })
            .collect()
    }

    fn ran(launches: &[Launch]) -> Vec<usize> {
        launches
            .iter()
            .filter_map(|l| match l {
                Launch::Run(s, _) => Some(s.id),
                Launch::Skipped(..) => None,
            })
            .collect()
    }

    fn answer(scheduler: &mut Scheduler, id: usize, held: Option<&str>) -> Option<Verdict> {
        let answer = Ok(held.map(|d| [d.to_string()].into()));
        let now = SystemTime::now();
        scheduler
            .on_done(Finished {
                id,
                started: now,
                ended: now,
                ran: Ran::Answered(answer, BTreeSet::new()),
            })
            .verdict
    }

    fn end(scheduler: &mut Scheduler, id: usize, lines: &str, ok: bool) -> Outcome {
        for line in lines.lines() {
            scheduler.on_line(id, line);
        }
        let now = SystemTime::now();
        let streamed = Streamed {
            result: if ok {
                Ok(())
            } else {
                Err("exit status: 1".into())
            },
            text: lines.to_string(),
        };
        scheduler
            .on_done(Finished {
                id,
                started: now,
                ended: now,
                ran: Ran::Streamed(streamed),
            })
            .result
            .outcome
    }

    /// Answers every question that `launches` started: the marker and final tags with
    /// `marker`, the cache images with `caches`.
    fn answer_all(
        scheduler: &mut Scheduler,
        plan: &Plan,
        launches: &[Launch],
        marker: Option<&str>,
        caches: Option<&str>,
    ) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        for id in ran(launches) {
            let Action::Inspect(inspect) = &plan.steps[id].action else {
                continue;
            };
            let held = if inspect.role == Role::Cache {
                caches
            } else {
                marker
            };
            verdicts.extend(answer(scheduler, id, held));
        }
        verdicts
    }

    #[test]
    fn a_package_the_registry_holds_runs_nothing_but_its_questions() {
        let plan = service_plan(&push_all());
        let mut scheduler = Scheduler::new(&plan, 2, Some(BTreeSet::new()));
        let first = scheduler.start_ready(SystemTime::now());
        assert!(
            ran(&first).iter().all(|&i| plan.steps[i].is_question()),
            "only questions start before the answers: {:?}",
            names(&first)
        );
        let verdicts = answer_all(
            &mut scheduler,
            &plan,
            &first,
            Some("sha256:a"),
            Some("sha256:c"),
        );
        assert!(
            matches!(&verdicts[..], [Verdict::Fresh { marker }] if marker.contains(":inputs-"))
        );
        let rest = scheduler.start_ready(SystemTime::now());
        assert!(ran(&rest).is_empty(), "{:?}", names(&rest));
        assert_eq!(
            rest.len(),
            plan.steps.len() - first.len(),
            "every other step is skipped"
        );
        for launch in &rest {
            let Launch::Skipped(_, result) = launch else {
                unreachable!()
            };
            assert!(
                matches!(&result.outcome, Outcome::Skipped(why) if why.starts_with("the registry holds this build")),
                "{:?}",
                result.outcome
            );
        }
        assert!(!scheduler.is_busy());
        assert_eq!(scheduler.finish().fresh.len(), 1);
    }

    #[test]
    fn on_a_cold_registry_the_stage_build_starts_beside_the_final_build() {
        let plan = service_plan(&push_all());
        let mut scheduler = Scheduler::new(&plan, 2, Some(BTreeSet::new()));
        let first = scheduler.start_ready(SystemTime::now());
        let verdicts = answer_all(&mut scheduler, &plan, &first, None, None);
        assert!(
            matches!(&verdicts[..], [Verdict::Build(why)] if why.contains("no build of these inputs"))
        );
        let next = scheduler.start_ready(SystemTime::now());
        let (runtime, compile, pull) = (
            build_of(&plan, "runtime"),
            build_of(&plan, "compile"),
            pull_of(&plan),
        );
        assert_eq!(ran(&next), [runtime, compile], "{:?}", names(&next));
        assert!(
            next.iter()
                .any(|l| matches!(l, Launch::Skipped(s, r) if s.id == pull
                && matches!(&r.outcome, Outcome::Skipped(w) if w.contains("no old image")))),
            "no old image to pull: {:?}",
            names(&next)
        );
    }

    #[test]
    fn a_step_seen_to_run_starts_the_pull_while_the_final_build_goes_on() {
        let plan = service_plan(&push_all());
        let mut scheduler = Scheduler::new(&plan, 2, Some(BTreeSet::new()));
        let first = scheduler.start_ready(SystemTime::now());
        answer_all(&mut scheduler, &plan, &first, None, Some("sha256:c"));
        let (runtime, compile, pull) = (
            build_of(&plan, "runtime"),
            build_of(&plan, "compile"),
            pull_of(&plan),
        );
        assert_eq!(ran(&scheduler.start_ready(SystemTime::now())), [runtime]);
        // A step that started may yet be a cache hit: nothing starts.
        scheduler.on_line(runtime, "#9 [compile 2/3] COPY src ./src");
        assert!(scheduler.start_ready(SystemTime::now()).is_empty());
        scheduler.on_line(runtime, "#9 DONE 0.1s");
        assert_eq!(ran(&scheduler.start_ready(SystemTime::now())), [pull]);
        assert_eq!(end(&mut scheduler, pull, "pulled\n", true), Outcome::Done);
        assert!(
            scheduler.start_ready(SystemTime::now()).is_empty(),
            "the stage build waits for the final build"
        );
        let output = "#9 [compile 2/3] COPY src ./src\n#9 DONE 0.1s\n#10 [compile 3/3] RUN make\n#10 DONE 1.0s\n#11 [runtime 2/2] COPY --from=compile /out /out\n#11 DONE 0.0s\n";
        assert_eq!(end(&mut scheduler, runtime, output, true), Outcome::Done);
        let next = scheduler.start_ready(SystemTime::now());
        assert!(ran(&next).contains(&compile), "{:?}", names(&next));
    }

    #[test]
    fn nothing_ran_and_the_registry_holds_it_so_the_stage_and_its_pushes_are_left_alone() {
        let plan = service_plan(&push_all());
        let run = |local: BTreeSet<String>| {
            let mut scheduler = Scheduler::new(&plan, 2, Some(local));
            let first = scheduler.start_ready(SystemTime::now());
            answer_all(&mut scheduler, &plan, &first, None, Some("sha256:c"));
            let runtime = build_of(&plan, "runtime");
            assert_eq!(ran(&scheduler.start_ready(SystemTime::now())), [runtime]);
            let cached = "#9 [compile 2/3] COPY src ./src\n#9 CACHED\n#10 [compile 3/3] RUN make\n#10 CACHED\n#11 [runtime 2/2] COPY --from=compile /out /out\n#11 CACHED\n";
            end(&mut scheduler, runtime, cached, true);
            names(&scheduler.start_ready(SystemTime::now()))
        };
        let fresh_agent = run(BTreeSet::new());
        let skipped = |what: &str| {
            fresh_agent
                .iter()
                .filter(|n| n.starts_with("skip") && n.contains(what))
                .count()
        };
        assert_eq!(
            skipped("nothing in its stages ran"),
            1,
            "the pull: {fresh_agent:?}"
        );
        assert_eq!(
            skipped("registry holds its cache"),
            1,
            "the stage build: {fresh_agent:?}"
        );
        assert_eq!(
            skipped("registry holds it\""),
            2,
            "both cache pushes: {fresh_agent:?}"
        );
        // An engine that held the tags before the run may have served the hits itself.
        let warm_agent = run(["registry.example/acme/service:compile".to_string()].into());
        assert!(
            warm_agent
                .iter()
                .any(|n| n == &format!("run {}", build_of(&plan, "compile"))),
            "{warm_agent:?}"
        );
    }

    #[test]
    fn a_failure_or_a_signal_starts_nothing_more() {
        let plan = service_plan(&push_all());
        let mut scheduler = Scheduler::new(&plan, 2, Some(BTreeSet::new()));
        let first = scheduler.start_ready(SystemTime::now());
        answer_all(&mut scheduler, &plan, &first, None, None);
        let (runtime, compile) = (build_of(&plan, "runtime"), build_of(&plan, "compile"));
        assert_eq!(
            ran(&scheduler.start_ready(SystemTime::now())),
            [runtime, compile]
        );
        let failed = "#10 [compile 3/3] RUN make\n#10 ERROR: process \"/bin/sh -c make\" did not complete successfully: exit code: 2\n";
        match end(&mut scheduler, compile, failed, false) {
            Outcome::Failed(why) => assert!(
                why.starts_with("the build of stage `compile` of package `service` failed"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(scheduler.is_stopped());
        // The final build, ended by the run, is said to have been stopped.
        match end(&mut scheduler, runtime, "", false) {
            Outcome::Failed(why) => assert!(why.ends_with("was stopped"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(scheduler.start_ready(SystemTime::now()).is_empty());
        assert!(!scheduler.is_busy());

        let mut scheduler = Scheduler::new(&plan, 2, None);
        let first = scheduler.start_ready(SystemTime::now());
        assert!(scheduler.on_signal(15));
        assert!(!scheduler.on_signal(15), "a second signal is not the first");
        answer_all(&mut scheduler, &plan, &first, None, None);
        assert!(scheduler.start_ready(SystemTime::now()).is_empty());
        assert_eq!(scheduler.finish().interrupted, Some(15));
    }

    #[test]
    fn jobs_limit_builds_and_pushes_but_not_questions_and_final_builds_come_first() {
        let two = |name: &str| {
            let mut config = config(&[("compile", "compile")], &["latest"]);
            config.package = name.into();
            let mut input = input(config, SERVICE);
            input.sources = Some(name.into());
            input
        };
        let plan = crate::plan::plan(&[two("api"), two("worker")], &push_all()).unwrap();
        let mut scheduler = Scheduler::new(&plan, 2, Some(BTreeSet::new()));
        let first = scheduler.start_ready(SystemTime::now());
        let questions = plan.steps.iter().filter(|s| s.is_question()).count();
        assert_eq!(
            ran(&first).len(),
            questions,
            "every question at once, whatever `--jobs`"
        );
        // `api`'s answers come first, on a cold registry: its stage build could start beside
        // its final build, but `worker`'s final build keeps its claim on the second slot.
        let of = |package: &str| -> Vec<usize> {
            plan.steps
                .iter()
                .filter(|s| s.package == package && s.is_question())
                .map(|s| s.id)
                .collect()
        };
        for id in of("api") {
            answer(&mut scheduler, id, None);
        }
        let api_final = id(&plan, |s| {
            s.package == "api" && matches!(&s.action, Action::Build(b) if b.is_final)
        });
        assert_eq!(ran(&scheduler.start_ready(SystemTime::now())), [api_final]);
        for id in of("worker") {
            answer(&mut scheduler, id, None);
        }
        let worker_final = id(&plan, |s| {
            s.package == "worker" && matches!(&s.action, Action::Build(b) if b.is_final)
        });
        assert_eq!(
            ran(&scheduler.start_ready(SystemTime::now())),
            [worker_final]
        );
        assert!(
            scheduler.start_ready(SystemTime::now()).is_empty(),
            "both slots taken"
        );
    }

    #[test]
    fn a_package_s_cache_mount_restores_run_at_once_beside_the_final_build_s_claim() {
        let dockerfile = "\
FROM busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000 AS build
RUN --mount=type=cache,id=target,target=/app/target --mount=type=cache,id=registry,target=/cargo cargo build
";
        let mut config = config(&[], &["latest"]);
        config.cache_mounts = crate::config::CacheMounts::All;
        let mut input = input(config, dockerfile);
        input.sources = Some("f00d".into());
        let plan = crate::plan::plan(&[input], &push_all()).unwrap();
        let restores: Vec<usize> = plan
            .steps
            .iter()
            .filter(|s| matches!(&s.action, Action::Mount(m) if m.kind == MountKind::Restore))
            .map(|s| s.id)
            .collect();
        assert_eq!(restores.len(), 2, "{}", plan.to_shell());
        let mut scheduler = Scheduler::new(&plan, 2, Some(BTreeSet::new()));
        let first = scheduler.start_ready(SystemTime::now());
        // The registry holds no build of these inputs, and both mounts' copies.
        let held = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        let mut started = Vec::new();
        for id in ran(&first) {
            let Action::Inspect(inspect) = &plan.steps[id].action else {
                continue;
            };
            let copy = inspect.image.contains(":mount-");
            answer(&mut scheduler, id, copy.then_some(held));
            started.extend(ran(&scheduler.start_ready(SystemTime::now())));
        }
        started.sort();
        assert_eq!(started, restores, "both restores at once, with `--jobs 2`");
    }
}

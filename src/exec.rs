//! Runs a plan's steps against the engine: independent steps at once (`--jobs`), each command in
//! a process group of its own so that a failure or a signal ends all of it, output streamed and
//! read as it comes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use crate::diagnose::RegistryProblem;
use crate::engine::Engine;
use crate::plan::{Action, Check, Plan, Step};
use crate::progress::{push_digest, BuildProgress};
use crate::report::{self, Reporter};

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and succeeded.
    Done,
    /// It was not run, for the reason given.
    Skipped(String),
    /// It failed in a way the run goes on from (a best-effort cache push).
    Warning(String),
    /// It failed, and the run stopped.
    Failed(String),
}

/// What one step did.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// The step's id in the plan.
    pub step: usize,
    /// How it ended.
    pub outcome: Outcome,
    /// When it started and ended.
    pub started: SystemTime,
    /// When it ended.
    pub ended: SystemTime,
    /// Its wall time.
    pub seconds: f64,
    /// For builds: what BuildKit's progress output told.
    pub progress: Option<BuildProgress>,
    /// For pushes: the pushed digest.
    pub digest: Option<String>,
    /// Everything the command printed.
    pub output: String,
}

/// What a run did, step by step.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    /// One result per step that was started or skipped, in the order they ended.
    pub steps: Vec<StepResult>,
    /// The run's wall time.
    pub seconds: f64,
    /// The signal that interrupted the run, if one did.
    pub interrupted: Option<i32>,
}

impl RunResult {
    /// The first failure, if any.
    pub fn failure(&self) -> Option<&str> {
        self.steps.iter().find_map(|s| match &s.outcome {
            Outcome::Failed(why) => Some(why.as_str()),
            _ => None,
        })
    }

    /// The result of step `id`.
    pub fn get(&self, id: usize) -> Option<&StepResult> {
        self.steps.iter().find(|s| s.step == id)
    }
}

/// How to run.
#[derive(Debug, Clone, Copy)]
pub struct ExecOptions {
    /// How many steps may run at once.
    pub jobs: usize,
}

/// The registry checks' questions, asked before the run while the preflight probes the engine
/// (both are round trips of a few CLI processes, and neither needs the other's answer).
#[derive(Default)]
pub struct Prefetch(BTreeMap<String, std::thread::JoinHandle<Answer>>);

/// What the registry said of an image: the image manifests it stands for, if it holds it.
type Answer = Result<Option<BTreeSet<String>>, String>;

/// Starts asking the registry every image the plan's checks ask about. A run that ends before
/// its checks (a failed preflight) leaves the questions to end on their own.
pub fn prefetch(plan: &Plan, docker: &str) -> Prefetch {
    let mut asked = BTreeMap::new();
    for step in &plan.steps {
        if let Action::Check(check) = &step.action {
            for image in check.questions() {
                let (docker, question) = (docker.to_string(), image.clone());
                asked.entry(image.clone()).or_insert_with(|| {
                    std::thread::spawn(move || crate::engine::image_manifests(&docker, &question))
                });
            }
        }
    }
    Prefetch(asked)
}

/// How long a command gets to end after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(10);

/// Running commands by step: their process group ids.
type Running = Arc<Mutex<BTreeMap<usize, u32>>>;

enum Msg {
    Line(usize, String),
    Done(Box<StepResult>),
    Signal(i32),
}

/// What the scheduler knows when it starts a step, for the decision to skip it.
#[derive(Clone)]
struct Context {
    /// A stage of the step's chain ran a step earlier in this run.
    chain_ran: bool,
    /// The engine held the step's image before the run.
    local_before: bool,
    /// What the registry answered so far: image -> whether it holds it. A stage build that is
    /// current and then its push ask about the same image.
    in_registry: Arc<Mutex<BTreeMap<String, bool>>>,
    /// The registry holds a build of the package's very plan under this marker tag: the step
    /// has nothing to do.
    package_current: Option<String>,
    /// Registry answers asked before the run.
    prefetch: Arc<Mutex<Prefetch>>,
    /// The ends of the steps that this one, started early, waits for before its command.
    after: Vec<Arc<Gate>>,
}

/// Opens when a step ends (or the run stops), for a step that started before it and waits for
/// it midway.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn open(&self) {
        if let Ok(mut open) = self.open.lock() {
            *open = true;
        }
        self.opened.notify_all();
    }

    fn wait(&self) {
        let Ok(mut open) = self.open.lock() else {
            return;
        };
        while !*open {
            match self.opened.wait(open) {
                Ok(guard) => open = guard,
                Err(_) => return,
            }
        }
    }
}

/// Why a step may start before a step it waits for in the plan is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Early {
    /// The stage build cannot be skipped and has no old image to keep: it starts, and BuildKit
    /// shares the steps both builds have.
    Share,
    /// The stage build cannot be skipped: it pulls its old image now, and builds once the
    /// awaited build ended.
    PullThenWait,
}

/// Runs `plan`: each step once the steps it waits for are done, up to `jobs` at once. The first
/// failure, or SIGINT or SIGTERM, ends every running command and starts no more. The checks take
/// their answers from `prefetch` where it asked.
pub fn run(
    plan: &Plan,
    engine: &Engine,
    options: ExecOptions,
    reporter: &Reporter,
    prefetch: Prefetch,
) -> RunResult {
    let prefetch = Arc::new(Mutex::new(prefetch));
    let started = Instant::now();
    let mut result = RunResult::default();
    // Which tags the engine held before this run: a build that ran no step on an engine that
    // did not hold its tag got everything from the registry's caches. Asked, while the first
    // steps run, only where a step may turn out current (not with a registry cache).
    let may_skip = plan.steps.iter().any(|s| match &s.action {
        Action::Build(b) => b.skip_if_current,
        Action::Push {
            skip_if_current, ..
        } => *skip_if_current,
        _ => false,
    });
    let mut asking = may_skip.then(|| {
        let engine = engine.clone();
        std::thread::spawn(move || engine.local_tags().unwrap_or_default())
    });
    let mut local_before: Option<BTreeSet<String>> = None;
    let in_registry: Arc<Mutex<BTreeMap<String, bool>>> = Arc::default();
    let (tx, rx) = mpsc::channel::<Msg>();
    let running: Running = Arc::default();
    let cancelled = Arc::new(AtomicBool::new(false));

    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]);
    let signal_handle = signals.ok().map(|mut signals| {
        let handle = signals.handle();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for signal in signals.forever() {
                if tx.send(Msg::Signal(signal)).is_err() {
                    break;
                }
            }
        });
        handle
    });

    let mut state: Vec<Option<bool>> = vec![None; plan.steps.len()]; // None: not done; Some(ok)
    let mut started_steps = vec![false; plan.steps.len()];
    // Steps started after their package's check found it in the registry: they report nothing.
    let mut quiet = vec![false; plan.steps.len()];
    let mut in_flight = 0usize;
    // Per package, the stages in which a step ran: known from a build's output as it goes.
    let mut ran_stages: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut live: BTreeMap<usize, BuildProgress> = BTreeMap::new();
    // The ends that early steps wait for, by the awaited step.
    let mut gates: BTreeMap<usize, Arc<Gate>> = BTreeMap::new();
    let mut reported_imports: BTreeSet<String> = BTreeSet::new();
    // Packages whose check found the registry holding their build: package -> marker tag.
    let mut current_packages: BTreeMap<&str, String> = BTreeMap::new();
    let mut stop = false;
    let labels: Vec<String> = plan.steps.iter().map(|s| label(plan, s)).collect();
    // When `--jobs` leaves a choice, the steps every package's result waits for come first:
    // registry checks, then final builds, then the rest, each in plan order. (A stage build
    // that starts early must not keep another package's final build waiting.)
    let mut priority: Vec<usize> = (0..plan.steps.len()).collect();
    priority.sort_by_key(|&i| match &plan.steps[i].action {
        Action::Check(_) => 0,
        Action::Build(b) if b.is_final => 1,
        _ => 2,
    });

    loop {
        if !stop {
            for step in priority.iter().map(|&i| &plan.steps[i]) {
                if in_flight >= options.jobs.max(1) {
                    break;
                }
                let ran = ran_stages.get(step.package.as_str());
                let mut awaited = Vec::new();
                if started_steps[step.id]
                    || !step.after.iter().all(|&a| {
                        state[a] == Some(true)
                            || match early_start(plan, step, a, &in_registry, ran) {
                                Some(Early::Share) => true,
                                Some(Early::PullThenWait) => {
                                    awaited.push(a);
                                    true
                                }
                                None => false,
                            }
                    })
                {
                    continue;
                }
                started_steps[step.id] = true;
                in_flight += 1;
                let (image, chain): (Option<&String>, &[String]) = match &step.action {
                    Action::Build(b) if b.skip_if_current => (b.writes.as_ref(), &b.chain),
                    Action::Push {
                        image,
                        chain,
                        skip_if_current: true,
                        ..
                    } => (Some(image), chain),
                    _ => (None, &[]),
                };
                let package_current = current_packages.get(step.package.as_str()).cloned();
                // Known before the first build starts, since a build tags images.
                if matches!(step.action, Action::Build(_)) || image.is_some() {
                    if let Some(handle) = asking.take() {
                        local_before =
                            Some(handle.join().unwrap_or_default().into_iter().collect());
                    }
                }
                let local = match (image, &local_before) {
                    (Some(image), Some(before)) if package_current.is_none() => {
                        before.contains(image)
                    }
                    _ => false,
                };
                let ran = ran_stages.get(step.package.as_str());
                let context = Context {
                    chain_ran: chain.iter().any(|c| ran.is_some_and(|r| r.contains(c))),
                    local_before: local,
                    in_registry: in_registry.clone(),
                    package_current,
                    prefetch: prefetch.clone(),
                    after: awaited
                        .iter()
                        .map(|a| gates.entry(*a).or_default().clone())
                        .collect(),
                };
                reporter.event(json!({
                    "reason": "step-started",
                    "id": step.id,
                    "kind": report::kind(&step.action),
                    "package": step.package,
                    "stage": report::stage_of(plan, step.id),
                    "time": report::rfc3339(SystemTime::now()),
                }));
                // A step of a package the registry holds has nothing to say: the check said it.
                quiet[step.id] = context.package_current.is_some();
                if !quiet[step.id] {
                    announce(reporter, step);
                    reporter.started(step.id, &labels[step.id]);
                }
                let (step, engine, tx, running, cancelled) = (
                    step.clone(),
                    engine.clone(),
                    tx.clone(),
                    running.clone(),
                    cancelled.clone(),
                );
                std::thread::spawn(move || {
                    let result = run_step(&step, &engine, &context, &tx, &running, &cancelled);
                    let _ = tx.send(Msg::Done(Box::new(result)));
                });
            }
        }
        if in_flight == 0 {
            break;
        }
        let Ok(msg) = rx.recv() else { break };
        match msg {
            Msg::Line(id, line) => {
                reporter.output(id, &labels[id], &line);
                // A step that ran decides, before its build ends, that the stage builds whose
                // chain it is in cannot be skipped: they may start at once.
                let step = &plan.steps[id];
                if let Action::Build(build) = &step.action {
                    let progress = live.entry(id).or_default();
                    progress.feed(&line);
                    // Only a `DONE` can tell that a step ran.
                    if line.contains(" DONE ") {
                        ran_stages
                            .entry(step.package.as_str())
                            .or_default()
                            .extend(progress.stages_that_ran_so_far(&build.stage));
                    }
                }
            }
            Msg::Signal(signal) => {
                if result.interrupted.is_none() {
                    result.interrupted = Some(signal);
                    reporter.error(&format!(
                        "interrupted by signal {signal}: ending every running command"
                    ));
                    stop = true;
                    cancelled.store(true, Ordering::SeqCst);
                    terminate(&running);
                    gates.values().for_each(|g| g.open());
                } else {
                    // A second signal does not wait for the grace period.
                    for group in running
                        .lock()
                        .map(|r| r.values().copied().collect::<Vec<_>>())
                        .unwrap_or_default()
                    {
                        signal_group(group, libc::SIGKILL);
                    }
                }
            }
            Msg::Done(step_result) => {
                in_flight -= 1;
                let step = &plan.steps[step_result.step];
                let ok = !matches!(step_result.outcome, Outcome::Failed(_));
                state[step.id] = Some(ok);
                live.remove(&step.id);
                if let (Action::Check(check), Outcome::Done) = (&step.action, &step_result.outcome)
                {
                    current_packages.insert(step.package.as_str(), check.marker.clone());
                }
                if let (Action::Build(build), Some(progress)) =
                    (&step.action, &step_result.progress)
                {
                    ran_stages
                        .entry(step.package.as_str())
                        .or_default()
                        .extend(progress.stages_that_ran(&build.stage));
                    report_imports(reporter, progress, &mut reported_imports);
                }
                if !quiet[step.id] {
                    reporter.ended(step.id);
                }
                finish(
                    reporter,
                    plan,
                    step,
                    &step_result,
                    &labels[step.id],
                    quiet[step.id],
                );
                result.steps.push(*step_result);
                if !ok && !stop {
                    stop = true;
                    cancelled.store(true, Ordering::SeqCst);
                    terminate(&running);
                    gates.values().for_each(|g| g.open());
                }
                // After `cancelled` is set: a step that waited for this one reads it on waking.
                if let Some(gate) = gates.get(&step.id) {
                    gate.open();
                }
            }
        }
    }
    if let Some(handle) = signal_handle {
        handle.close();
    }
    // No `docker` process outlives the run.
    if let Some(handle) = asking.take() {
        let _ = handle.join();
    }
    result.seconds = started.elapsed().as_secs_f64();
    result
}

/// Whether `step` may start before step `after` is done, though it waits for it in the plan: a
/// stage build waits for the final build only to learn whether it can be skipped. It cannot be
/// when the registry lacks its cache image: it starts at once, and BuildKit shares the steps both
/// builds have. Nor once a step of its chain ran (`ran`: the package's stages in which one did
/// so far): it starts, to pull its old image (moby/buildkit#1981) while the final build goes on.
fn early_start(
    plan: &Plan,
    step: &Step,
    after: usize,
    in_registry: &Mutex<BTreeMap<String, bool>>,
    ran: Option<&BTreeSet<String>>,
) -> Option<Early> {
    let (
        Action::Build(build),
        Some(Step {
            action: Action::Build(waited),
            package,
            ..
        }),
    ) = (&step.action, plan.steps.get(after))
    else {
        return None;
    };
    let missing = |image: &String| {
        in_registry
            .lock()
            .is_ok_and(|known| known.get(image) == Some(&false))
    };
    let chain_ran = build
        .chain
        .iter()
        .any(|c| ran.is_some_and(|r| r.contains(c)));
    if !(build.skip_if_current && waited.is_final && *package == step.package) {
        None
    } else if build.writes.as_ref().is_some_and(missing) {
        Some(Early::Share)
    } else if chain_ran {
        Some(Early::PullThenWait)
    } else {
        None
    }
}

/// `service/compile` for a build or push of a stage, `service` otherwise.
fn label(plan: &Plan, step: &Step) -> String {
    match report::stage_of(plan, step.id) {
        Some(stage) => format!("{}/{stage}", step.package),
        None => step.package.clone(),
    }
}

fn announce(reporter: &Reporter, step: &Step) {
    match &step.action {
        // Says what it found when it is done.
        Action::Check(_) | Action::Mark { .. } => {}
        Action::Pull { image } => reporter.status("Pulling", image),
        Action::Build(b) => {
            reporter.status("Building", &format!("{} stage `{}`", step.package, b.stage))
        }
        // A push that may turn out current says what it did when it is done.
        Action::Push {
            skip_if_current: true,
            ..
        } => {}
        Action::Push { image, .. } => reporter.status("Pushing", image),
    }
}

/// Says what a finished step did (unless `quiet`), and sends its `step-finished` event.
fn finish(
    reporter: &Reporter,
    plan: &Plan,
    step: &Step,
    result: &StepResult,
    label: &str,
    quiet: bool,
) {
    match &result.outcome {
        _ if quiet => {}
        Outcome::Done => match (&step.action, &result.progress) {
            (Action::Build(b), Some(p)) => reporter.status(
                "Built",
                &format!(
                    "{} stage `{}` in {:.1}s ({}/{} steps cached)",
                    step.package,
                    b.stage,
                    result.seconds,
                    p.cached(),
                    p.step_count()
                ),
            ),
            (
                Action::Push {
                    image,
                    skip_if_current: true,
                    ..
                },
                _,
            ) => reporter.status("Pushed", &format!("{image} in {:.1}s", result.seconds)),
            (Action::Check(Check { marker, .. }), _) => reporter.status(
                "Fresh",
                &format!(
                    "{}: the registry holds this build (`{marker}`), and every final tag holds it: nothing to build or push",
                    step.package
                ),
            ),
            (Action::Mark { marker }, _) => reporter.info(&format!("recorded this build as `{marker}`")),
            _ => {}
        },
        Outcome::Skipped(why) => match &step.action {
            Action::Pull { .. } => reporter.info(why),
            Action::Check(_) => reporter.info(&format!("{}: building: {why}", step.package)),
            Action::Mark { .. } => {}
            Action::Build(b) => reporter.status(
                "Fresh",
                &format!("{} stage `{}` ({why})", step.package, b.stage),
            ),
            Action::Push { image, .. } => reporter.status("Fresh", &format!("{image} ({why})")),
        },
        Outcome::Warning(why) => reporter.warning(why),
        Outcome::Failed(_) => reporter.failed_output(label, &result.output),
    }
    let progress = result.progress.as_ref();
    reporter.event(json!({
        "reason": "step-finished",
        "id": step.id,
        "kind": report::kind(&step.action),
        "package": step.package,
        "stage": report::stage_of(plan, step.id),
        "success": !matches!(result.outcome, Outcome::Failed(_)),
        "outcome": match &result.outcome {
            Outcome::Done => "done",
            Outcome::Skipped(_) => "skipped",
            Outcome::Warning(_) => "warning",
            Outcome::Failed(_) => "failed",
        },
        "message": match &result.outcome {
            Outcome::Done => None,
            Outcome::Skipped(m) | Outcome::Warning(m) | Outcome::Failed(m) => Some(m.clone()),
        },
        "seconds": report::round(result.seconds),
        "start": report::rfc3339(result.started),
        "end": report::rfc3339(result.ended),
        "steps": progress.map(BuildProgress::step_count),
        "cached": progress.map(BuildProgress::cached),
        "image": match &step.action {
            Action::Push { image, .. } | Action::Pull { image } => Some(image.clone()),
            Action::Check(Check { marker, .. }) | Action::Mark { marker } => Some(marker.clone()),
            Action::Build(_) => None,
        },
        "digest": result.digest,
    }));
}

/// Says how reading each cache source went, once per source and run.
fn report_imports(reporter: &Reporter, progress: &BuildProgress, reported: &mut BTreeSet<String>) {
    for import in progress.imports() {
        let Some(error) = import.error else { continue };
        if !reported.insert(import.reference.clone()) {
            continue;
        }
        let problem = RegistryProblem::classify(&error);
        let text = problem.describe(&import.reference);
        if problem == RegistryProblem::NotFound {
            reporter.info(&text);
        } else {
            reporter.warning(&format!("{text}; building without it\n  {error}"));
        }
    }
}

/// Ends every running command: SIGTERM to its process group, SIGKILL after a grace period.
fn terminate(running: &Running) {
    let groups: Vec<u32> = running
        .lock()
        .map(|r| r.values().copied().collect())
        .unwrap_or_default();
    for &group in &groups {
        signal_group(group, libc::SIGTERM);
    }
    let running = running.clone();
    std::thread::spawn(move || {
        std::thread::sleep(GRACE);
        let left: Vec<u32> = running
            .lock()
            .map(|r| r.values().copied().collect())
            .unwrap_or_default();
        for group in left.into_iter().filter(|g| groups.contains(g)) {
            signal_group(group, libc::SIGKILL);
        }
    });
}

fn signal_group(group: u32, signal: i32) {
    if let Ok(group) = libc::pid_t::try_from(group) {
        // SAFETY: kill(2) on a process group we created; a group that is gone gives ESRCH.
        unsafe { libc::kill(-group, signal) };
    }
}

fn run_step(
    step: &Step,
    engine: &Engine,
    context: &Context,
    tx: &Sender<Msg>,
    running: &Running,
    cancelled: &AtomicBool,
) -> StepResult {
    let started_at = Instant::now();
    let mut result = StepResult {
        step: step.id,
        outcome: Outcome::Done,
        started: SystemTime::now(),
        ended: SystemTime::now(),
        seconds: 0.0,
        progress: None,
        digest: None,
        output: String::new(),
    };
    // A step whose image nothing in this run changed, and that the registry holds, is current.
    let current = |image: &str| -> bool {
        if context.chain_ran || context.local_before {
            return false;
        }
        let known = context
            .in_registry
            .lock()
            .ok()
            .and_then(|k| k.get(image).copied());
        known.unwrap_or_else(|| {
            // An error is not remembered: the push that follows meets it and says what it is.
            let answer = engine.registry_has(image);
            if let (Ok(held), Ok(mut k)) = (&answer, context.in_registry.lock()) {
                k.insert(image.to_string(), *held);
            }
            answer == Ok(true)
        })
    };
    if let Some(marker) = &context.package_current {
        result.outcome = Outcome::Skipped(format!("the registry holds this build as `{marker}`"));
        result.ended = SystemTime::now();
        return result;
    }
    match &step.action {
        Action::Check(question) => {
            result.outcome = check(engine, question, &context.in_registry, &context.prefetch);
        }
        Action::Mark { marker } => {
            let out = stream(step, tx, running, cancelled);
            result.output = out.text;
            if let Err(message) = out.result {
                let problem = RegistryProblem::classify(&result.output);
                result.outcome = Outcome::Warning(format!(
                    "the marker `{marker}` was not pushed ({}: {message}): the next run builds again",
                    problem.describe(marker)
                ));
            } else {
                result.digest = push_digest(&result.output);
            }
        }
        Action::Pull { image } => {
            let out = stream(step, tx, running, cancelled);
            result.output = out.text;
            if let Err(message) = out.result {
                let problem = RegistryProblem::classify(&result.output);
                let text = problem.describe(image);
                result.outcome = if problem == RegistryProblem::NotFound {
                    Outcome::Skipped(text)
                } else {
                    Outcome::Warning(format!("{text}: {message}"))
                };
            }
        }
        Action::Build(build) => {
            if build.skip_if_current && build.writes.as_deref().is_some_and(current) {
                result.outcome =
                    Outcome::Skipped("nothing in it ran, and the registry holds its cache".into());
            } else {
                // A stage image whose steps partly ran here and partly came from the registry is
                // exported with inline cache that lacks the keys of the latter, unless the engine
                // holds the old cache image (moby/buildkit#1981; seen here: the next agent re-ran
                // the toolchain). So pull it first; the final build needed its layers anyway.
                if let (true, true, Some(image)) =
                    (build.skip_if_current, context.chain_ran, &build.writes)
                {
                    let pull = Step {
                        args: vec!["pull".into(), image.clone()],
                        env: Vec::new(),
                        ..step.clone()
                    };
                    // A missing image (the first build of a new stage) only means nothing to keep.
                    let _ = stream(&pull, tx, running, cancelled);
                }
                // Started early, beside the build it waits for: the pull is done, the build
                // waits for that one to end (so that it shares no step in flight with it, which
                // loses the cache keys as the missing pull does).
                for gate in &context.after {
                    gate.wait();
                }
                if cancelled.load(Ordering::SeqCst) {
                    result.outcome = Outcome::Failed(format!(
                        "the build of stage `{}` of package `{}` was stopped",
                        build.stage, step.package
                    ));
                } else {
                    let out = stream(step, tx, running, cancelled);
                    let mut progress = BuildProgress::default();
                    out.text.lines().for_each(|l| progress.feed(l));
                    if let Err(message) = out.result {
                        let mut errors = progress.errors();
                        // A step this build shares with another build that ran it shows here only as
                        // BuildKit's error, which quotes the command.
                        let stage = progress
                            .failed_stage()
                            .or_else(|| {
                                out.text
                                    .lines()
                                    .filter(|l| l.contains("ERROR"))
                                    .find_map(|l| build.stage_of_failed_command(l))
                                    .map(str::to_string)
                            })
                            .unwrap_or_else(|| build.stage.clone());
                        // A failed cache export is a registry problem: say which, and the way out.
                        if let Some(cache) = &build.exports {
                            let problem = RegistryProblem::classify(&errors.join("\n"));
                            if problem != RegistryProblem::Other {
                                errors.push(format!(
                                    "{}\nnote: with `push-cache = \"best-effort\"` or `--push-cache-only` a failed cache export is a warning",
                                    problem.describe(cache)
                                ));
                            }
                        }
                        result.outcome = Outcome::Failed(if cancelled.load(Ordering::SeqCst) {
                            format!(
                                "the build of stage `{stage}` of package `{}` was stopped",
                                step.package
                            )
                        } else {
                            format!(
                                "the build of stage `{stage}` of package `{}` failed: {message}{}\ncommand: {}",
                                step.package,
                                errors.iter().map(|e| format!("\n  {e}")).collect::<String>(),
                                step.to_shell()
                            )
                        });
                    }
                    result.output = out.text;
                    result.progress = Some(progress);
                    // `ignore-error=true` hides a failed export: look whether the cache is there.
                    if let (Some(cache), true, Outcome::Done) =
                        (&build.exports, build.export_best_effort, &result.outcome)
                    {
                        match engine.registry_has(cache) {
                            Ok(true) => {}
                            Ok(false) => {
                                result.outcome = Outcome::Warning(format!(
                                    "the registry cache `{cache}` was not written (the export is best-effort)"
                                ))
                            }
                            Err(e) => {
                                result.outcome = Outcome::Warning(format!(
                                    "the registry cache `{cache}` could not be checked: {e}"
                                ))
                            }
                        }
                    }
                }
            }
        }
        Action::Push {
            image,
            skip_if_current,
            best_effort,
            ..
        } => {
            if *skip_if_current && current(image) {
                result.outcome =
                    Outcome::Skipped("nothing in it ran, and the registry holds it".into());
            } else {
                push(
                    step,
                    image,
                    *best_effort,
                    &mut result,
                    tx,
                    running,
                    cancelled,
                );
            }
        }
    }
    result.ended = SystemTime::now();
    result.seconds = started_at.elapsed().as_secs_f64();
    result
}

/// Whether the registry holds a build of the package's plan: the marker exists, every final tag
/// holds the same image manifests, and the export, if any, is there. `Done` if so, else
/// `Skipped` with the reason; a registry that does not answer only means building, where the
/// build then says what is wrong. Whether the registry holds each of the caches is asked at the
/// same time and remembered in `in_registry`.
fn check(
    engine: &Engine,
    check: &Check,
    in_registry: &Mutex<BTreeMap<String, bool>>,
    prefetch: &Mutex<Prefetch>,
) -> Outcome {
    let Check {
        marker,
        finals,
        caches,
        export,
    } = check;
    let images: Vec<&str> = check.questions().map(String::as_str).collect();
    let asked: Vec<Option<std::thread::JoinHandle<Answer>>> = images
        .iter()
        .map(|image| prefetch.lock().ok().and_then(|mut p| p.0.remove(*image)))
        .collect();
    let answers: Vec<Answer> = std::thread::scope(|scope| {
        let handles: Vec<_> = images
            .iter()
            .zip(asked)
            .map(|(image, asked)| {
                scope.spawn(move || match asked {
                    Some(handle) => handle
                        .join()
                        .unwrap_or_else(|_| Err("the question panicked".into())),
                    None => engine.image_manifests(image),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("the check panicked".into()))
            })
            .collect()
    });
    if let Ok(mut known) = in_registry.lock() {
        for (image, answer) in caches
            .iter()
            .zip(&answers[1 + finals.len()..1 + finals.len() + caches.len()])
        {
            if let Ok(held) = answer {
                known.insert(image.clone(), held.is_some());
            }
        }
    }
    let held = match &answers[0] {
        Ok(Some(manifest)) => manifest,
        Ok(None) => return Outcome::Skipped("no build of these inputs in the registry yet".into()),
        Err(e) => return Outcome::Skipped(format!("cannot ask the registry for `{marker}`: {e}")),
    };
    for (image, answer) in images.iter().zip(&answers).skip(1).take(finals.len()) {
        match answer {
            Ok(Some(manifest)) if manifest == held => {}
            Ok(Some(_)) => {
                return Outcome::Skipped(format!("`{image}` holds another image than `{marker}`"))
            }
            Ok(None) => return Outcome::Skipped(format!("`{image}` is not in the registry")),
            Err(e) => {
                return Outcome::Skipped(format!("cannot ask the registry for `{image}`: {e}"))
            }
        }
    }
    if let (Some(cache), Some(answer)) = (export, answers.last()) {
        match answer {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Outcome::Skipped(format!(
                    "the registry cache `{cache}` is missing (a failed export?)"
                ))
            }
            Err(e) => {
                return Outcome::Skipped(format!("cannot ask the registry for `{cache}`: {e}"))
            }
        }
    }
    Outcome::Done
}

/// Pushes, retrying a registry that is unreachable or rate-limiting with a bounded backoff.
fn push(
    step: &Step,
    image: &str,
    best_effort: bool,
    result: &mut StepResult,
    tx: &Sender<Msg>,
    running: &Running,
    cancelled: &AtomicBool,
) {
    let mut wait = Duration::from_millis(500);
    for attempt in 1..=3 {
        let out = stream(step, tx, running, cancelled);
        result.output = out.text;
        let Err(message) = out.result else {
            result.digest = push_digest(&result.output);
            result.outcome = Outcome::Done;
            return;
        };
        let problem = RegistryProblem::classify(&result.output);
        let retry = matches!(
            problem,
            RegistryProblem::Unreachable
                | RegistryProblem::RateLimited
                | RegistryProblem::ServerError
        );
        if retry && attempt < 3 && !cancelled.load(Ordering::SeqCst) {
            let _ = tx.send(Msg::Line(
                step.id,
                format!(
                    "retrying the push of `{image}` in {:.1}s ({problem:?})",
                    wait.as_secs_f64()
                ),
            ));
            std::thread::sleep(wait);
            wait *= 3;
            continue;
        }
        let why = format!(
            "the push of `{image}` (package `{}`) failed: {}\n{message}\ncommand: {}",
            step.package,
            problem.describe(image),
            step.to_shell()
        );
        let refused = matches!(
            problem,
            RegistryProblem::Authentication | RegistryProblem::DeniedOrMissing
        );
        result.outcome = if best_effort && refused {
            Outcome::Warning(format!(
                "the cache tag `{image}` was not pushed: {}",
                problem.describe(image)
            ))
        } else {
            Outcome::Failed(why)
        };
        return;
    }
}

struct Streamed {
    result: Result<(), String>,
    text: String,
}

/// Runs the step's command in a process group of its own, sending its output (stdout and stderr
/// alike) line by line as it comes, and keeping it for parsing.
fn stream(step: &Step, tx: &Sender<Msg>, running: &Running, cancelled: &AtomicBool) -> Streamed {
    let sh = match xshell::Shell::new() {
        Ok(sh) => sh,
        Err(e) => {
            return Streamed {
                result: Err(e.to_string()),
                text: String::new(),
            }
        }
    };
    let cmd = sh
        .cmd(&step.program)
        .args(&step.args)
        .envs(step.env.iter().map(|(k, v)| (k, v)));
    let mut command = Command::from(cmd);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Streamed {
                result: Err(format!("cannot run `{}`: {e}", step.program)),
                text: String::new(),
            }
        }
    };
    if let Ok(mut r) = running.lock() {
        r.insert(step.id, child.id());
    }
    // A signal or failure that came while this command was starting missed it: end it now.
    if cancelled.load(Ordering::SeqCst) {
        signal_group(child.id(), libc::SIGTERM);
    }
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
        text.push_str(&line);
        text.push('\n');
        let _ = tx.send(Msg::Line(step.id, line));
    }
    threads.into_iter().for_each(|t| {
        let _ = t.join();
    });
    let status = child.wait();
    if let Ok(mut r) = running.lock() {
        r.remove(&step.id);
    }
    let result = match status {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(status.to_string()),
        Err(e) => Err(e.to_string()),
    };
    Streamed { result, text }
}

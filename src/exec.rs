//! Runs a plan's steps against the engine, streaming docker's output and reading what it says.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use crate::diagnose::RegistryProblem;
use crate::engine::Engine;
use crate::plan::{Action, Plan, Step};
use crate::progress::{push_digest, BuildProgress};

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and succeeded.
    Done,
    /// It was not run, for the reason given.
    Skipped(String),
    /// It failed in a way the run goes on from (a cache image that could not be read).
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
    /// Its wall time.
    pub seconds: f64,
    /// For builds: what BuildKit's progress output told.
    pub progress: Option<BuildProgress>,
    /// For pushes: the pushed digest.
    pub digest: Option<String>,
}

/// What a run did, step by step.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    /// One result per step that was started or skipped, in the order they ended.
    pub steps: Vec<StepResult>,
    /// The run's wall time.
    pub seconds: f64,
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

/// Runs `plan`'s steps in order and stops at the first failure.
pub fn run(plan: &Plan, engine: &Engine) -> RunResult {
    let started = Instant::now();
    let mut result = RunResult::default();
    // Which tags the engine held before this run: a build that ran no step on an engine that
    // did not hold its tag got everything from the registry's caches.
    let local_before: BTreeSet<String> = engine
        .local_tags()
        .unwrap_or_default()
        .into_iter()
        .collect();
    for step in &plan.steps {
        let outcome = run_step(step, engine, &result, &local_before);
        let failed = matches!(outcome.outcome, Outcome::Failed(_));
        result.steps.push(outcome);
        if failed {
            break;
        }
    }
    result.seconds = started.elapsed().as_secs_f64();
    result
}

fn status(verb: &str, message: &str) {
    eprintln!("{verb:>12} {message}");
}

fn run_step(
    step: &Step,
    engine: &Engine,
    done: &RunResult,
    local_before: &BTreeSet<String>,
) -> StepResult {
    let started = Instant::now();
    let mut result = StepResult {
        step: step.id,
        outcome: Outcome::Done,
        seconds: 0.0,
        progress: None,
        digest: None,
    };
    match &step.action {
        Action::Pull { image } => {
            status("Pulling", image);
            let out = stream(step);
            if let Err(message) = &out.result {
                let problem = RegistryProblem::classify(&out.text);
                let text = problem.describe(image);
                if problem == RegistryProblem::NotFound {
                    status("Info", &text);
                    result.outcome = Outcome::Skipped(text);
                } else {
                    status("Warning", &text);
                    result.outcome = Outcome::Warning(format!("{text}: {message}"));
                }
            }
        }
        Action::Build { stage, .. } => {
            status("Building", &format!("{} stage `{stage}`", step.package));
            let out = stream(step);
            let mut progress = BuildProgress::default();
            out.text.lines().for_each(|l| progress.feed(l));
            if let Err(message) = out.result {
                let errors = progress.errors();
                result.outcome =
                    Outcome::Failed(format!(
                    "the build of stage `{stage}` of package `{}` failed: {message}{}\ncommand: {}",
                    step.package,
                    errors.iter().map(|e| format!("\n  {e}")).collect::<String>(),
                    step.to_shell()
                ));
            }
            result.progress = Some(progress);
        }
        Action::Push {
            image,
            build,
            cache,
        } => {
            let built = done.get(*build).and_then(|r| r.progress.as_ref());
            let ran_nothing = built.is_some_and(|p| p.ran().is_empty());
            if *cache && ran_nothing && !local_before.contains(image) {
                match engine.registry_has(image) {
                    Ok(true) => {
                        let why = "the registry holds it and the build ran no step".to_string();
                        status("Fresh", &format!("{image} ({why})"));
                        result.outcome = Outcome::Skipped(why);
                        result.seconds = started.elapsed().as_secs_f64();
                        return result;
                    }
                    Ok(false) => {}
                    // The push below meets the same registry and says what is wrong.
                    Err(_) => {}
                }
            }
            status("Pushing", image);
            let out = stream(step);
            match out.result {
                Ok(()) => result.digest = push_digest(&out.text),
                Err(message) => {
                    let problem = RegistryProblem::classify(&out.text);
                    result.outcome = Outcome::Failed(format!(
                        "the push of `{image}` (package `{}`) failed: {message}\n{}\ncommand: {}",
                        step.package,
                        problem.describe(image),
                        step.to_shell()
                    ));
                }
            }
        }
    }
    result.seconds = started.elapsed().as_secs_f64();
    result
}

struct Streamed {
    result: Result<(), String>,
    text: String,
}

/// Runs the step's command, copying its output (stdout and stderr alike) to our stderr line by
/// line as it comes, and keeping it for parsing.
fn stream(step: &Step) -> Streamed {
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
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Streamed {
                result: Err(format!("cannot run `{}`: {e}", step.program)),
                text: String::new(),
            }
        }
    };
    let (tx, rx) = mpsc::channel::<String>();
    let readers: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().expect("stdout is piped")),
        Box::new(child.stderr.take().expect("stderr is piped")),
    ];
    let threads: Vec<_> = readers
        .into_iter()
        .map(|reader| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let mut text = String::new();
    let stderr = std::io::stderr();
    for line in rx {
        let _ = writeln!(stderr.lock(), "{line}");
        text.push_str(&line);
        text.push('\n');
    }
    threads.into_iter().for_each(|t| {
        let _ = t.join();
    });
    let result = match child.wait() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(status.to_string()),
        Err(e) => Err(e.to_string()),
    };
    Streamed { result, text }
}

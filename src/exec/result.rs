//! What a run did, step by step: what the report and the JSON events are made of.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::engine::Answer;
use crate::progress::BuildProgress;

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
    /// When it started.
    pub started: SystemTime,
    /// When it ended.
    pub ended: SystemTime,
    /// Its wall time.
    pub seconds: f64,
    /// For builds: what BuildKit's progress output told.
    pub progress: Option<BuildProgress>,
    /// For pushes: the pushed digest.
    pub digest: Option<String>,
    /// For questions to the registry: its answer.
    pub answer: Option<Answer>,
    /// For restores and exports of cache mounts: how many bytes the mount held.
    pub bytes: Option<u64>,
    /// For an export on top of a restored copy: how many bytes it added to the copy.
    pub added: Option<u64>,
    /// Everything the command printed.
    pub output: String,
}

impl StepResult {
    /// A result with nothing in it yet but the step and its start.
    pub(crate) fn new(step: usize, started: SystemTime) -> StepResult {
        StepResult {
            step,
            outcome: Outcome::Done,
            started,
            ended: started,
            seconds: 0.0,
            progress: None,
            digest: None,
            answer: None,
            bytes: None,
            added: None,
            output: String::new(),
        }
    }
}

/// What the registry check concluded for a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The registry holds this very build under the marker tag, and every final tag holds it:
    /// no other step of the package runs.
    Fresh {
        /// The marker tag.
        marker: String,
    },
    /// The package builds, for the reason given.
    Build(String),
}

/// What a run did, step by step.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    /// One result per step that was started or skipped, in the order they ended.
    pub steps: Vec<StepResult>,
    /// The signal that interrupted the run, if one did.
    pub interrupted: Option<i32>,
    /// The packages whose build the registry holds: package -> marker tag.
    pub fresh: BTreeMap<String, String>,
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

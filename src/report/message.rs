//! The JSON events of `--message-format json`: one typed message per kind, each knowing its
//! `reason`, printed one a line on stdout.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::exec::{Outcome, StepResult, Verdict};
use crate::plan::{Action, MountKind, Plan, PullWhen, Role, Step};

use super::stages::StageReport;
use super::time::{rfc3339, round};

/// A JSON event.
pub trait Message: Serialize {
    /// Its `reason` field, which tells its kind.
    fn reason(&self) -> &'static str;

    /// The event as one line of JSON, `reason` first.
    fn to_json_line(&self) -> String {
        #[derive(Serialize)]
        struct Envelope<'a, M: ?Sized> {
            reason: &'static str,
            #[serde(flatten)]
            message: &'a M,
        }
        let envelope = Envelope {
            reason: self.reason(),
            message: self,
        };
        serde_json::to_string(&envelope).unwrap_or_else(|e| {
            format!("{{\"reason\":\"warning\",\"message\":\"an event could not be written: {e}\"}}")
        })
    }
}

/// A step's kind, as the events name it.
pub fn kind(action: &Action) -> &'static str {
    match action {
        Action::Inspect(_) => "inspect",
        Action::Pull(_) => "pull",
        Action::Build(_) => "build",
        Action::Push(_) => "push",
        Action::Mark { .. } => "mark",
        Action::Mount(mount) => match mount.kind {
            MountKind::Restore => "restore",
            MountKind::Export => "export",
            MountKind::Push => "push",
        },
    }
}

/// The `plan` event: every step with its program, argv, env and the steps it waits for.
#[derive(Serialize)]
pub struct PlanMessage<'a> {
    steps: Vec<PlanStep<'a>>,
}

#[derive(Serialize)]
struct PlanStep<'a> {
    id: usize,
    package: &'a str,
    kind: &'static str,
    stage: Option<&'a str>,
    program: &'a str,
    args: &'a [String],
    env: BTreeMap<&'a str, &'a str>,
    after: &'a [usize],
    detail: Detail<'a>,
}

/// What a step reads, writes and may skip.
#[derive(Serialize)]
#[serde(untagged)]
enum Detail<'a> {
    Inspect {
        image: &'a str,
        role: &'static str,
    },
    Pull {
        image: &'a str,
        /// `first`, or `before-rebuild` (only when a step of `chain` ran).
        when: &'static str,
        chain: Option<&'a [String]>,
    },
    Build {
        #[serde(rename = "final")]
        is_final: bool,
        writes: &'a Option<String>,
        reads: &'a [String],
        finals: &'a [String],
        exports: &'a Option<String>,
        pushes_itself: bool,
        skipped_when_current: bool,
        /// An export-only build of the registry cache: the final image whose layers decide
        /// its skip.
        #[serde(skip_serializing_if = "Option::is_none")]
        export_only: &'a Option<String>,
    },
    Push {
        image: &'a str,
        cache: bool,
        skipped_when_current: bool,
        best_effort: bool,
    },
    Mark {
        marker: &'a str,
    },
    Mount {
        mount: &'a str,
        image: &'a str,
        /// The steps that use it, `[stage, command]`: an export runs when one of them ran.
        uses: &'a [(String, String)],
        /// An export that pushes its copy itself (no push step follows).
        pushes: bool,
    },
}

fn role(role: Role) -> &'static str {
    match role {
        Role::Marker => "marker",
        Role::Final => "final",
        Role::Export => "export",
        Role::Cache => "cache",
        Role::Written => "written",
        Role::Fallback => "fallback",
        Role::Built => "built",
    }
}

impl<'a> PlanMessage<'a> {
    /// The event for `plan`.
    pub fn new(plan: &'a Plan) -> PlanMessage<'a> {
        let steps = plan
            .steps
            .iter()
            .map(|s| PlanStep {
                id: s.id,
                package: &s.package,
                kind: kind(&s.action),
                stage: plan.stage_of(s.id),
                program: &s.program,
                args: &s.args,
                env: s
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
                after: &s.after,
                detail: match &s.action {
                    Action::Inspect(i) => Detail::Inspect {
                        image: &i.image,
                        role: role(i.role),
                    },
                    Action::Pull(p) => match &p.when {
                        PullWhen::First => Detail::Pull {
                            image: &p.image,
                            when: "first",
                            chain: None,
                        },
                        PullWhen::BeforeRebuild { chain } => Detail::Pull {
                            image: &p.image,
                            when: "before-rebuild",
                            chain: Some(chain),
                        },
                    },
                    Action::Build(b) => Detail::Build {
                        is_final: b.is_final,
                        writes: &b.writes,
                        reads: &b.reads,
                        finals: &b.finals,
                        exports: &b.exports,
                        pushes_itself: b.pushes,
                        skipped_when_current: b.skip_if_current,
                        export_only: &b.export_only,
                    },
                    Action::Push(p) => Detail::Push {
                        image: &p.image,
                        cache: p.cache,
                        skipped_when_current: p.skip_if_current,
                        best_effort: p.best_effort,
                    },
                    Action::Mark { marker } => Detail::Mark { marker },
                    Action::Mount(m) => Detail::Mount {
                        mount: &m.id,
                        image: &m.image,
                        uses: &m.uses,
                        pushes: m.pushes,
                    },
                },
            })
            .collect();
        PlanMessage { steps }
    }
}

impl Message for PlanMessage<'_> {
    fn reason(&self) -> &'static str {
        "plan"
    }
}

/// `step-started`.
#[derive(Serialize)]
pub struct StepStarted<'a> {
    id: usize,
    kind: &'static str,
    package: &'a str,
    stage: Option<&'a str>,
    time: String,
}

impl<'a> StepStarted<'a> {
    /// The event for `step`, starting now.
    pub fn new(plan: &'a Plan, step: &'a Step) -> StepStarted<'a> {
        StepStarted {
            id: step.id,
            kind: kind(&step.action),
            package: &step.package,
            stage: plan.stage_of(step.id),
            time: rfc3339(std::time::SystemTime::now()),
        }
    }
}

impl Message for StepStarted<'_> {
    fn reason(&self) -> &'static str {
        "step-started"
    }
}

/// `step-finished`.
#[derive(Serialize)]
pub struct StepFinished<'a> {
    id: usize,
    kind: &'static str,
    package: &'a str,
    stage: Option<&'a str>,
    success: bool,
    outcome: &'static str,
    message: Option<&'a str>,
    seconds: f64,
    start: String,
    end: String,
    steps: Option<usize>,
    cached: Option<usize>,
    image: Option<&'a str>,
    digest: Option<&'a str>,
    /// For questions: whether the registry holds the image (`null` when it did not answer).
    found: Option<bool>,
    /// For restores and exports of cache mounts: the bytes the mount held.
    bytes: Option<u64>,
    /// For an export on top of the copy a restore read: the bytes it added (`null` for an
    /// export of the whole mount).
    added_bytes: Option<u64>,
}

impl<'a> StepFinished<'a> {
    /// The event for `step`, which ended with `result`; a build's `counts` are its stage's
    /// `(cached, steps)` as the `Built` line and the table count them.
    pub fn new(
        plan: &'a Plan,
        step: &'a Step,
        result: &'a StepResult,
        counts: Option<(usize, usize)>,
    ) -> StepFinished<'a> {
        StepFinished {
            id: step.id,
            kind: kind(&step.action),
            package: &step.package,
            stage: plan.stage_of(step.id),
            success: !matches!(result.outcome, Outcome::Failed(_)),
            outcome: match &result.outcome {
                Outcome::Done => "done",
                Outcome::Skipped(_) => "skipped",
                Outcome::Warning(_) => "warning",
                Outcome::Failed(_) => "failed",
            },
            message: match &result.outcome {
                Outcome::Done => None,
                Outcome::Skipped(m) | Outcome::Warning(m) | Outcome::Failed(m) => Some(m),
            },
            seconds: round(result.seconds),
            start: rfc3339(result.started),
            end: rfc3339(result.ended),
            steps: counts.map(|(_, steps)| steps),
            cached: counts.map(|(cached, _)| cached),
            image: match &step.action {
                Action::Push(p) => Some(&p.image),
                Action::Pull(p) => Some(&p.image),
                Action::Inspect(i) => Some(&i.image),
                Action::Mark { marker } => Some(marker),
                Action::Mount(m) => Some(&m.image),
                Action::Build(_) => None,
            },
            digest: result.digest.as_deref(),
            found: match &result.answer {
                Some(Ok(held)) => Some(held.is_some()),
                _ => None,
            },
            bytes: result.bytes,
            added_bytes: result.added,
        }
    }
}

impl Message for StepFinished<'_> {
    fn reason(&self) -> &'static str {
        "step-finished"
    }
}

/// `registry-check`: what the registry check concluded for a package.
#[derive(Serialize)]
pub struct RegistryCheck<'a> {
    package: &'a str,
    /// The registry holds this very build: no other step of the package runs.
    fresh: bool,
    marker: Option<&'a str>,
    /// Why the package builds.
    message: Option<&'a str>,
}

impl<'a> RegistryCheck<'a> {
    /// The event for `package`'s verdict.
    pub fn new(package: &'a str, verdict: &'a Verdict) -> RegistryCheck<'a> {
        match verdict {
            Verdict::Fresh { marker } => RegistryCheck {
                package,
                fresh: true,
                marker: Some(marker),
                message: None,
            },
            Verdict::Build(why) => RegistryCheck {
                package,
                fresh: false,
                marker: None,
                message: Some(why),
            },
        }
    }
}

impl Message for RegistryCheck<'_> {
    fn reason(&self) -> &'static str {
        "registry-check"
    }
}

/// `warning`.
#[derive(Serialize)]
pub struct Warning<'a> {
    message: &'a str,
}

impl<'a> Warning<'a> {
    /// The event for a warning.
    pub fn new(message: &'a str) -> Warning<'a> {
        Warning { message }
    }
}

impl Message for Warning<'_> {
    fn reason(&self) -> &'static str {
        "warning"
    }
}

/// `build-finished`, the last event.
#[derive(Serialize)]
pub struct BuildFinished<'a> {
    success: bool,
    seconds: f64,
    stages: Vec<StageMessage<'a>>,
    /// The packages whose very build the registry held; they have no stages.
    fresh: &'a [String],
}

#[derive(Serialize)]
struct StageMessage<'a> {
    package: &'a str,
    stage: &'a str,
    steps: usize,
    cached: usize,
    seconds: f64,
    cache_sources: &'a [String],
    pushed: &'a [String],
}

impl<'a> BuildFinished<'a> {
    /// The event for a run that took `seconds`.
    pub fn new(
        success: bool,
        seconds: f64,
        reports: &'a [StageReport],
        fresh: &'a [String],
    ) -> BuildFinished<'a> {
        let stages = reports
            .iter()
            .map(|r| StageMessage {
                package: &r.package,
                stage: &r.stage,
                steps: r.steps,
                cached: r.cached,
                seconds: round(r.seconds),
                cache_sources: &r.cache_sources,
                pushed: &r.pushed,
            })
            .collect();
        BuildFinished {
            success,
            seconds: round(seconds),
            stages,
            fresh,
        }
    }
}

impl Message for BuildFinished<'_> {
    fn reason(&self) -> &'static str {
        "build-finished"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_comes_first() {
        assert_eq!(
            Warning::new("it \"rains\"").to_json_line(),
            r#"{"reason":"warning","message":"it \"rains\""}"#
        );
        let stages = [StageReport {
            package: "svc".into(),
            stage: "compile".into(),
            steps: 5,
            cached: 4,
            seconds: 1.23456,
            cache_sources: vec!["r/x:compile".into()],
            pushed: vec![],
        }];
        assert_eq!(
            BuildFinished::new(true, 2.0, &stages, &[]).to_json_line(),
            r#"{"reason":"build-finished","success":true,"seconds":2.0,"stages":[{"package":"svc","stage":"compile","steps":5,"cached":4,"seconds":1.235,"cache_sources":["r/x:compile"],"pushed":[]}],"fresh":[]}"#
        );
    }
}

//! What a run did per package and stage, added up from its builds and pushes; and the silent
//! cache misses among them.

use std::collections::BTreeMap;

use crate::exec::{Outcome, RunResult};
use crate::plan::{Action, MountKind, Plan};

/// Per package and stage: Dockerfile steps, how many came from the cache, seconds of the steps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageReport {
    /// The package.
    pub package: String,
    /// The stage.
    pub stage: String,
    /// Dockerfile steps of the stage.
    pub steps: usize,
    /// Of those, how many came from a cache (in every build of this run that had them).
    pub cached: usize,
    /// Seconds its steps took (BuildKit's own times).
    pub seconds: f64,
    /// The cache sources imported by the builds that had the stage.
    pub cache_sources: Vec<String>,
    /// Pushed refs with digests, and tags left as they were.
    pub pushed: Vec<String>,
}

/// Adds up the builds of a run per package and stage. A step that several builds report (the
/// final build ran it, the stage's own build then found it in the engine's cache) counts once:
/// as run if any build ran it.
pub fn stage_reports(plan: &Plan, run: &RunResult) -> Vec<StageReport> {
    /// A stage's report, and its steps by name: (came from a cache in every build, seconds).
    type Acc = (StageReport, BTreeMap<String, (bool, f64)>);
    let mut stages: Vec<Acc> = Vec::new();
    fn entry<'a>(stages: &'a mut Vec<Acc>, package: &str, stage: &str) -> &'a mut Acc {
        let i = match stages
            .iter()
            .position(|(r, _)| r.package == package && r.stage == stage)
        {
            Some(i) => i,
            None => {
                let report = StageReport {
                    package: package.into(),
                    stage: stage.into(),
                    ..StageReport::default()
                };
                stages.push((report, BTreeMap::new()));
                stages.len() - 1
            }
        };
        &mut stages[i]
    }
    let fresh = fresh_packages(run);
    for step in &plan.steps {
        let Some(result) = run.get(step.id) else {
            continue;
        };
        if fresh.contains(&step.package) {
            continue;
        }
        match &step.action {
            Action::Build(build) => {
                let Some(progress) = &result.progress else {
                    continue;
                };
                let imported = progress.imported();
                for s in progress.steps() {
                    let (report, steps) =
                        entry(&mut stages, &step.package, s.stage_or(&build.stage));
                    for source in &imported {
                        if !report.cache_sources.contains(source) {
                            report.cache_sources.push(source.clone());
                        }
                    }
                    let seen = steps.entry(s.name).or_insert((true, 0.0));
                    seen.0 &= s.cached;
                    seen.1 = seen.1.max(s.seconds);
                }
            }
            // Pushes belong to the stage whose build made them.
            Action::Push(push) => {
                let image = &push.image;
                let Some(stage) = plan.stage_of(push.build) else {
                    continue;
                };
                let text = match (&result.outcome, &result.digest) {
                    (Outcome::Done, Some(digest)) => format!("{image}@{digest}"),
                    (Outcome::Done, None) => image.clone(),
                    (Outcome::Skipped(_), _) => format!("{image} (already current)"),
                    (Outcome::Warning(_), _) => format!("{image} (not pushed)"),
                    (Outcome::Failed(_), _) => format!("{image} (failed)"),
                };
                entry(&mut stages, &step.package, stage).0.pushed.push(text);
            }
            Action::Pull(_) | Action::Inspect(_) | Action::Mark { .. } | Action::Mount(_) => {}
        }
    }
    stages
        .into_iter()
        .map(|(mut report, steps)| {
            report.steps = steps.len();
            report.cached = steps.values().filter(|(cached, _)| *cached).count();
            // From +0.0: an empty f64 sum is -0.0, which prints as `-0.0s`.
            report.seconds = steps.values().fold(0.0, |sum, (_, s)| sum + s);
            report
        })
        .collect()
}

/// The packages whose registry check found their very build in the registry: nothing of them
/// ran, and the report leaves them out.
pub fn fresh_packages(run: &RunResult) -> Vec<String> {
    run.fresh.keys().cloned().collect()
}

/// The silent misses of a run: a stage whose own cache was imported, yet none of whose steps
/// came from it, though no stage it needs ran a step (which would explain it). Nobody notices
/// those until CI is slow again.
pub fn silent_misses(plan: &Plan, run: &RunResult) -> Vec<String> {
    // Each stage's build (its own cache's refs, the stages it needs), by package and stage.
    let mut builds: BTreeMap<(&str, &str), &crate::plan::Build> = BTreeMap::new();
    for step in &plan.steps {
        if let Action::Build(b) = &step.action {
            builds.insert((step.package.as_str(), b.stage.as_str()), b);
        }
    }
    let mut warned = Vec::new();
    let mut out = Vec::new();
    for step in &plan.steps {
        let Action::Build(build) = &step.action else {
            continue;
        };
        let Some(progress) = run.get(step.id).and_then(|r| r.progress.as_ref()) else {
            continue;
        };
        let imported = progress.imported();
        let ran = progress.stages_that_ran(&build.stage);
        let mut stages: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for s in progress.steps() {
            let entry = stages
                .entry(s.stage_or(&build.stage).to_string())
                .or_default();
            entry.0 += 1;
            entry.1 += usize::from(s.cached);
        }
        for (stage, (steps, cached)) in stages {
            let Some(own) = builds.get(&(step.package.as_str(), stage.as_str())) else {
                continue;
            };
            // A stage it needs changed: its steps had to run.
            if own.chain.iter().any(|c| *c != stage && ran.contains(c)) {
                continue;
            }
            let Some(source) = own.own_cache.iter().find(|r| {
                imported
                    .iter()
                    .any(|i| i == *r || i.ends_with(&format!("ref={r}")))
            }) else {
                continue;
            };
            if steps > 0 && cached == 0 && !warned.contains(&(step.package.clone(), stage.clone()))
            {
                warned.push((step.package.clone(), stage.clone()));
                out.push(format!(
                    "stage `{stage}` of package `{}` imported its cache `{source}`, yet none of its {steps} steps came from it\nnote: the usual causes: a changed base image, changed build args, a changed file early in the stage, a different platform, or an engine's cache bug",
                    step.package
                ));
            }
        }
    }
    out
}

/// What a run did with one travelling cache mount of a package.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MountReport {
    /// The package.
    pub package: String,
    /// The mount's id.
    pub mount: String,
    /// Restored: from which image, how many bytes, in how many seconds.
    pub restored: Option<(String, Option<u64>, f64)>,
    /// Exported: to which image, how many bytes, in how many seconds (the export and its push).
    pub exported: Option<(String, Option<u64>, f64)>,
}

/// The travelling cache mounts of a run, with what was restored and exported of each.
pub fn mount_reports(plan: &Plan, run: &RunResult) -> Vec<MountReport> {
    let mut reports: Vec<MountReport> = Vec::new();
    for step in &plan.steps {
        let Action::Mount(m) = &step.action else {
            continue;
        };
        let at = match reports
            .iter()
            .position(|r| r.package == step.package && r.mount == m.id)
        {
            Some(at) => at,
            None => {
                reports.push(MountReport {
                    package: step.package.clone(),
                    mount: m.id.clone(),
                    ..MountReport::default()
                });
                reports.len() - 1
            }
        };
        let Some(result) = run.get(step.id) else {
            continue;
        };
        let ran = matches!(result.outcome, Outcome::Done | Outcome::Warning(_));
        let report = &mut reports[at];
        match m.kind {
            MountKind::Restore if ran => {
                report.restored = Some((m.image.clone(), result.bytes, result.seconds))
            }
            MountKind::Export if ran => {
                report.exported = Some((m.image.clone(), result.bytes, result.seconds))
            }
            MountKind::Push if ran => {
                if let Some((_, _, seconds)) = &mut report.exported {
                    *seconds += result.seconds;
                }
            }
            _ => {}
        }
    }
    reports
}

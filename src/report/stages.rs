//! What a run did per package and stage, added up from its builds and pushes.

use std::collections::BTreeMap;

use crate::exec::{Outcome, RunResult};
use crate::plan::{Action, MountKind, Plan};
use crate::progress::BuildProgress;

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

/// A stage's steps and how many came from a cache, by the one definition every count the
/// tool prints uses (the `Built` line, the table, the JSON events): the Dockerfile steps of
/// that stage (its own instructions, `FROM` included), each counted once however many builds
/// of the run had it, and cached when it came from a cache in every build that had it. A step
/// that several builds report (the final build ran it, the stage's own build then found it in
/// the engine's cache) so counts once, as run.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    stages: Vec<Counted>,
}

/// A stage's report, and its steps by name: (came from a cache in every build, seconds).
type Counted = (StageReport, BTreeMap<String, (bool, f64)>);

impl Tally {
    fn entry(&mut self, package: &str, stage: &str) -> &mut Counted {
        let i = match self
            .stages
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
                self.stages.push((report, BTreeMap::new()));
                self.stages.len() - 1
            }
        };
        &mut self.stages[i]
    }

    /// Adds what a build of `package` whose `--target` is `build_stage` reported.
    pub fn add_build(&mut self, package: &str, build_stage: &str, progress: &BuildProgress) {
        let imported = progress.imported();
        for s in progress.steps() {
            let (report, steps) = self.entry(package, s.stage_or(build_stage));
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

    /// `(cached, steps)` of `stage` of `package` in the builds added so far.
    pub fn counts(&self, package: &str, stage: &str) -> (usize, usize) {
        self.stages
            .iter()
            .find(|(r, _)| r.package == package && r.stage == stage)
            .map_or((0, 0), |(_, steps)| {
                (
                    steps.values().filter(|(cached, _)| *cached).count(),
                    steps.len(),
                )
            })
    }

    /// The reports, each stage's counts filled in.
    fn reports(self) -> Vec<StageReport> {
        self.stages
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
}

/// Adds up the builds of a run per package and stage (see [`Tally`] for how steps count).
pub fn stage_reports(plan: &Plan, run: &RunResult) -> Vec<StageReport> {
    let mut tally = Tally::default();
    let fresh = fresh_packages(run);
    for step in &plan.steps {
        let Some(result) = run.get(step.id) else {
            continue;
        };
        if fresh.contains(&step.package) {
            continue;
        }
        match &step.action {
            // The registry cache's export-only build repeats the final build's steps, taken
            // from the engine (or shared while they run): the final build's counts are the run's.
            Action::Build(build) if build.export_only.is_some() => {}
            Action::Build(build) => {
                if let Some(progress) = &result.progress {
                    tally.add_build(&step.package, &build.stage, progress);
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
                tally.entry(&step.package, stage).0.pushed.push(text);
            }
            Action::Pull(_) | Action::Inspect(_) | Action::Mark { .. } | Action::Mount(_) => {}
        }
    }
    tally.reports()
}

/// The packages whose registry check found their very build in the registry: nothing of them
/// ran, and the report leaves them out.
pub fn fresh_packages(run: &RunResult) -> Vec<String> {
    run.fresh.keys().cloned().collect()
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
    /// Exported: to which image, how many bytes, in how many seconds (the export and its push);
    /// only when the copy reached the registry.
    pub exported: Option<(String, Option<u64>, f64)>,
    /// What that export added to the copy a restore read, where it was made on top of it.
    pub added: Option<u64>,
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
        let result = run.get(step.id);
        let report = &mut reports[at];
        // An export into the engine's store is followed by its push: the copy reached the
        // registry only if that push was done. A refused push (a warning under `push-cache =
        // "best-effort"`), or one that never ran, leaves no export to tell of. An export that
        // pushes has no push step: it tells of its copy only where it printed the push.
        if m.kind == MountKind::Push {
            match result.map(|r| (&r.outcome, r.seconds)) {
                Some((Outcome::Done, seconds)) => {
                    if let Some((_, _, total)) = &mut report.exported {
                        *total += seconds;
                    }
                }
                _ => report.exported = None,
            }
            continue;
        }
        let Some(result) = result else {
            continue;
        };
        let ran = matches!(result.outcome, Outcome::Done | Outcome::Warning(_));
        match m.kind {
            MountKind::Restore if ran => {
                report.restored = Some((m.image.clone(), result.bytes, result.seconds))
            }
            MountKind::Export if ran && (!m.pushes || result.digest.is_some()) => {
                report.exported = Some((m.image.clone(), result.bytes, result.seconds));
                report.added = result.added;
            }
            _ => {}
        }
    }
    reports
}

#[cfg(test)]
mod tests {
    use super::Tally;
    use crate::progress::BuildProgress;

    fn progress(output: &str) -> BuildProgress {
        let mut progress = BuildProgress::default();
        for line in output.lines() {
            progress.feed(line);
        }
        progress
    }

    #[test]
    fn a_stage_counts_its_own_steps_once_and_a_step_any_build_ran_as_run() {
        // The final build found `compile`'s steps done by the stage build beside it: 3 of its
        // 4 steps "cached", which is no count of any stage.
        let runtime = progress(
            "#5 [toolchain 1/1] COPY busybox /bin/busybox\n#5 CACHED\n#6 [compile 1/2] COPY src ./src\n#6 CACHED\n#7 [compile 2/2] RUN make\n#7 CACHED\n#8 [runtime 1/1] COPY --from=compile /out /out\n#8 DONE 0.0s\n",
        );
        let compile = progress(
            "#5 [toolchain 1/1] COPY busybox /bin/busybox\n#5 CACHED\n#6 [compile 1/2] COPY src ./src\n#6 DONE 0.1s\n#7 [compile 2/2] RUN make\n#7 DONE 1.0s\n",
        );
        let mut tally = Tally::default();
        tally.add_build("svc", "runtime", &runtime);
        assert_eq!(tally.counts("svc", "runtime"), (0, 1));
        assert_eq!(tally.counts("svc", "compile"), (2, 2));
        tally.add_build("svc", "compile", &compile);
        assert_eq!(tally.counts("svc", "compile"), (0, 2));
        assert_eq!(tally.counts("svc", "toolchain"), (1, 1));
        assert_eq!(tally.counts("svc", "runtime"), (0, 1));
        assert_eq!(tally.counts("other", "runtime"), (0, 0));
        let reports = tally.reports();
        let rows: Vec<(&str, usize, usize)> = reports
            .iter()
            .map(|r| (r.stage.as_str(), r.cached, r.steps))
            .collect();
        assert_eq!(
            rows,
            [("toolchain", 1, 1), ("compile", 0, 2), ("runtime", 0, 1)]
        );
    }

    /// A plan of one travelling mount's export, and its push where `pushed_apart`, and a run
    /// in which the export (with the digest it printed as pushed) and the push (if any) ended
    /// as given.
    fn export_run(
        pushed_apart: bool,
        export: (super::Outcome, Option<&str>),
        push: Option<super::Outcome>,
    ) -> (crate::plan::Plan, super::RunResult) {
        use crate::plan::{Action, MountKind, MountStep, Plan, Step};
        let step = |id, kind| Step {
            id,
            package: "svc".into(),
            action: Action::Mount(MountStep {
                id: "target".into(),
                image: "r/svc:mount-target-main".into(),
                kind,
                target: "/app/target".into(),
                uses: vec![],
                limit: 1 << 30,
                best_effort: true,
                pushes: !pushed_apart && kind == MountKind::Export,
            }),
            program: "docker".into(),
            args: vec![],
            env: vec![],
            stdin: None,
            after: vec![],
        };
        let mut steps = vec![step(0, MountKind::Export)];
        if pushed_apart {
            steps.push(step(1, MountKind::Push));
        }
        let result = |id, outcome, seconds| {
            let mut r = crate::exec::StepResult::new(id, std::time::SystemTime::UNIX_EPOCH);
            r.outcome = outcome;
            r.seconds = seconds;
            r.bytes = (id == 0).then_some(10 << 20);
            r
        };
        let mut run = super::RunResult::default();
        let mut exported = result(0, export.0, 2.0);
        exported.digest = export.1.map(str::to_string);
        run.steps.push(exported);
        if let Some(outcome) = push {
            run.steps.push(result(1, outcome, 0.5));
        }
        (
            Plan {
                steps,
                warnings: vec![],
            },
            run,
        )
    }

    #[test]
    fn a_mount_is_reported_exported_only_once_its_copy_reached_the_registry() {
        use super::Outcome;
        let exported = |pushed_apart, export, push| {
            let (plan, run) = export_run(pushed_apart, export, push);
            super::mount_reports(&plan, &run).remove(0).exported
        };
        let done = (Outcome::Done, None);
        let pushed = Some(("r/svc:mount-target-main".to_string(), Some(10 << 20), 2.5));
        assert_eq!(exported(true, done.clone(), Some(Outcome::Done)), pushed);
        // A push the registry refused, under `push-cache = "best-effort"`: a warning, and no
        // export to tell of.
        let refused = Outcome::Warning("the cache tag was not pushed".into());
        assert_eq!(exported(true, done.clone(), Some(refused.clone())), None);
        // A run that stopped before the push.
        assert_eq!(exported(true, done, None), None);
        // An export that pushes its image itself: exported where it printed the push.
        let by_export = Some(("r/svc:mount-target-main".to_string(), Some(10 << 20), 2.0));
        assert_eq!(
            exported(false, (Outcome::Done, Some("sha256:ab")), None),
            by_export
        );
        // Its push refused (a warning), or a build that printed no push: nothing to tell of.
        assert_eq!(exported(false, (refused, None), None), None);
        assert_eq!(exported(false, (Outcome::Done, None), None), None);
    }
}

//! What a run did per package and stage, added up from its builds and pushes; and the silent
//! cache misses among them.

use std::collections::{BTreeMap, BTreeSet};

use crate::exec::{Outcome, RunResult};
use crate::plan::{Action, MountKind, Plan};
use crate::progress::{BuildProgress, StepReport};

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

/// The silent misses of a run: a stage whose own cache was imported, yet none of whose steps
/// came from it, though no changed input explains it. Nobody notices those until CI is slow
/// again. A changed input is a stage it needs that ran a step in any build of the package in
/// this run (the final build, or a stage build before it), or a first step that reads the
/// build context (see [`expected_miss`]).
pub fn silent_misses(plan: &Plan, run: &RunResult) -> Vec<String> {
    // Each stage's build (its own cache's refs, the stages it needs), by package and stage;
    // and the stages that ran a step in any build of the package.
    let mut builds: BTreeMap<(&str, &str), &crate::plan::Build> = BTreeMap::new();
    let mut ran: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for step in &plan.steps {
        if let Action::Build(b) = &step.action {
            builds.insert((step.package.as_str(), b.stage.as_str()), b);
            if let Some(progress) = run.get(step.id).and_then(|r| r.progress.as_ref()) {
                ran.entry(step.package.as_str())
                    .or_default()
                    .extend(progress.stages_that_ran(&b.stage));
            }
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
        let ran = ran.get(step.package.as_str()).cloned().unwrap_or_default();
        let mut stages: BTreeMap<String, Vec<StepReport>> = BTreeMap::new();
        for s in progress.steps() {
            stages
                .entry(s.stage_or(&build.stage).to_string())
                .or_default()
                .push(s);
        }
        for (stage, steps) in stages {
            let Some(own) = builds.get(&(step.package.as_str(), stage.as_str())) else {
                continue;
            };
            if steps.is_empty()
                || steps.iter().any(|s| s.cached)
                || expected_miss(&stage, &steps, &own.chain, &ran)
            {
                continue;
            }
            let Some(source) = own.own_cache.iter().find(|r| {
                imported
                    .iter()
                    .any(|i| i == *r || i.ends_with(&format!("ref={r}")))
            }) else {
                continue;
            };
            if !warned.contains(&(step.package.clone(), stage.clone())) {
                warned.push((step.package.clone(), stage.clone()));
                out.push(format!(
                    "stage `{stage}` of package `{}` imported its cache `{source}`, yet none of its {} steps came from it\nnote: the usual causes: a changed base image, changed build args, a different platform, or an engine's cache bug",
                    step.package,
                    steps.len()
                ));
            }
        }
    }
    out
}

/// Whether a stage none of whose `steps` came from a cache missed because an input changed:
/// a stage of its `chain` (the stages it needs) ran a step in this run (`ran`), so its own
/// steps had to run; or its first step, `FROM` aside, reads the build context (`COPY` without
/// `--from`, or `ADD`), where an edited file makes every step from there on miss. A miss
/// that starts with any other step (`WORKDIR`, `RUN`, `ENV`, `COPY --from` an image) cannot
/// follow from the checkout, and is worth the warning.
pub(crate) fn expected_miss(
    stage: &str,
    steps: &[StepReport],
    chain: &[String],
    ran: &BTreeSet<String>,
) -> bool {
    if chain.iter().any(|c| c != stage && ran.contains(c)) {
        return true;
    }
    let first = steps
        .iter()
        .filter_map(|s| Some((step_number(&s.name)?, instruction(&s.name)?)))
        .filter(|(_, i)| !i.to_ascii_uppercase().starts_with("FROM "))
        .min_by_key(|(n, _)| *n);
    first.is_some_and(|(_, instruction)| reads_context(instruction))
}

/// The `3` of `[compile 3/5] RUN make`.
fn step_number(name: &str) -> Option<usize> {
    let inner = name.strip_prefix('[')?.split_once(']')?.0;
    let count = inner.rsplit(' ').next()?;
    count.split_once('/')?.0.parse().ok()
}

/// The `RUN make` of `[compile 3/5] RUN make`.
fn instruction(name: &str) -> Option<&str> {
    Some(name.split_once("] ")?.1.trim_start())
}

/// Whether a Dockerfile instruction, as BuildKit names its step, reads the build context or
/// fetches a source: `COPY` without `--from`, and `ADD`.
fn reads_context(instruction: &str) -> bool {
    let mut words = instruction.split_whitespace();
    match words.next().map(str::to_ascii_uppercase).as_deref() {
        Some("ADD") => true,
        Some("COPY") => !words
            .take_while(|w| w.starts_with("--"))
            .any(|w| w.to_ascii_lowercase().starts_with("--from=")),
        _ => false,
    }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{expected_miss, Tally};
    use crate::progress::{BuildProgress, StepReport};

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

    /// The steps of `stage` in BuildKit's plain `output`.
    fn steps(output: &str, stage: &str) -> Vec<StepReport> {
        let mut progress = BuildProgress::default();
        for line in output.lines() {
            progress.feed(line);
        }
        progress
            .steps()
            .into_iter()
            .filter(|s| s.stage_or("runtime") == stage)
            .collect()
    }

    fn chain(stages: &[&str]) -> Vec<String> {
        stages.iter().map(|s| s.to_string()).collect()
    }

    fn set(stages: &[&str]) -> BTreeSet<String> {
        stages.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_miss_after_a_stage_it_needs_ran_is_expected_in_any_build_of_the_run() {
        let runtime = steps(
            "#8 [runtime 1/1] COPY --from=compile /out/service /usr/local/bin/service\n#8 DONE 0.0s\n",
            "runtime",
        );
        let chain = chain(&["runtime", "compile", "toolchain"]);
        // `compile` ran, whether in this build or in the stage build before it.
        assert!(expected_miss(
            "runtime",
            &runtime,
            &chain,
            &set(&["compile"])
        ));
        // Nothing it needs ran, and its step copies from a stage: a silent miss.
        assert!(!expected_miss("runtime", &runtime, &chain, &set(&[])));
        // The stage's own steps running explain nothing.
        assert!(!expected_miss(
            "runtime",
            &runtime,
            &chain,
            &set(&["runtime"])
        ));
        // A stage it does not need explains nothing either.
        assert!(!expected_miss(
            "runtime",
            &runtime,
            &chain,
            &set(&["tools"])
        ));
    }

    #[test]
    fn a_miss_that_starts_by_reading_the_context_is_expected() {
        let chain = chain(&["runtime", "toolchain"]);
        let none = set(&[]);
        for (output, expected) in [
            // The binary, built outside, copied from the context: an edit changes it.
            ("#9 [runtime 1/1] COPY target/release/service /usr/local/bin/service\n#9 DONE 0.0s\n", true),
            ("#9 [runtime 1/2] ADD app.tar /app\n#9 DONE 0.0s\n#10 [runtime 2/2] RUN true\n#10 DONE 0.1s\n", true),
            ("#9 [runtime 1/1] COPY --chown=1:1 service /usr/local/bin/\n#9 DONE 0.0s\n", true),
            // An image's `FROM` step is not the stage's first step.
            ("#4 [runtime 1/2] FROM docker.io/library/debian@sha256:0000\n#4 DONE 0.0s\n#9 [runtime 2/2] COPY service /usr/local/bin/\n#9 DONE 0.0s\n", true),
            // Steps that no checkout change explains.
            ("#9 [runtime 1/2] WORKDIR /app\n#9 DONE 0.0s\n#10 [runtime 2/2] COPY service /app/\n#10 DONE 0.0s\n", false),
            ("#9 [runtime 1/1] COPY --link --from=acme/tools:1 /bin/tool /bin/\n#9 DONE 0.0s\n", false),
            ("#9 [runtime 1/1] RUN make\n#9 DONE 0.3s\n", false),
        ] {
            let steps = steps(output, "runtime");
            assert!(!steps.is_empty(), "{output}");
            assert_eq!(expected_miss("runtime", &steps, &chain, &none), expected, "{output}");
        }
    }
}

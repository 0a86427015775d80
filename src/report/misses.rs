//! The silent cache misses of a run: a stage whose own cache was imported, yet none of whose
//! steps came from it, though no changed input explains it.

use std::collections::{BTreeMap, BTreeSet};

use crate::exec::RunResult;
use crate::plan::{Action, Plan};
use crate::progress::StepReport;

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
        // The registry cache's export-only build repeats the final build's steps.
        if let Action::Build(b) = &step.action {
            if b.export_only.is_some() {
                continue;
            }
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
        if build.export_only.is_some() {
            continue;
        }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::expected_miss;
    use crate::progress::{BuildProgress, StepReport};

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

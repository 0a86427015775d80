//! What the user sees: status lines in cargo's style, warnings, docker's output when asked for,
//! JSON events (`--message-format json`), and the summary at the end of a run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::exec::{Outcome, RunResult};
use crate::plan::{Action, Plan};

/// How much to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Warnings, errors and the summary only.
    Quiet,
    /// Status lines too (the default); docker's output only for a step that failed.
    Normal,
    /// Everything docker prints, each line prefixed with its package and stage.
    Verbose,
}

/// Where messages go: human text on stderr, and with JSON events, one object a line on stdout.
/// On a terminal, each running step also has a live line with what BuildKit is doing.
pub struct Reporter {
    json: bool,
    verbosity: Verbosity,
    color: bool,
    lock: Mutex<()>,
    live: Option<Live>,
}

/// The live lines of running steps (indicatif), on a terminal only: CI logs get plain lines.
struct Live {
    bars: indicatif::MultiProgress,
    running: Mutex<BTreeMap<usize, indicatif::ProgressBar>>,
}

impl Reporter {
    /// A reporter; `color` is decided by the caller (`--color`, and whether stderr is a terminal).
    /// Live lines are shown when stderr is a terminal, at normal verbosity, without JSON.
    pub fn new(json: bool, verbosity: Verbosity, color: bool) -> Reporter {
        let live = (!json && verbosity == Verbosity::Normal && std::io::stderr().is_terminal())
            .then(|| Live {
                bars: indicatif::MultiProgress::with_draw_target(
                    indicatif::ProgressDrawTarget::stderr(),
                ),
                running: Mutex::new(BTreeMap::new()),
            });
        Reporter {
            json,
            verbosity,
            color,
            lock: Mutex::new(()),
            live,
        }
    }

    /// A step started: on a terminal, it gets a live line.
    pub fn started(&self, id: usize, label: &str) {
        let Some(live) = &self.live else { return };
        let bar = live.bars.add(indicatif::ProgressBar::new_spinner());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {prefix}: {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        if let Ok(mut running) = live.running.lock() {
            running.insert(id, bar);
        }
    }

    /// A step ended: its live line goes.
    pub fn ended(&self, id: usize) {
        let Some(live) = &self.live else { return };
        if let Some(bar) = live.running.lock().ok().and_then(|mut r| r.remove(&id)) {
            bar.finish_and_clear();
            live.bars.remove(&bar);
        }
    }

    /// Whether colors are wanted for `--color auto` on stderr.
    pub fn stderr_is_terminal() -> bool {
        std::io::stderr().is_terminal()
    }

    /// The verbosity.
    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    fn err_line(&self, line: &str) {
        let _guard = self.lock.lock();
        match &self.live {
            // Printed above the live lines, which redraw below it.
            Some(live) => {
                let _ = live.bars.println(line);
            }
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// A status line such as `    Building service stage `compile``.
    pub fn status(&self, verb: &str, message: &str) {
        if self.verbosity >= Verbosity::Normal {
            let verb = self.paint("1;32", &format!("{verb:>12}"));
            self.err_line(&format!("{verb} {message}"));
        }
    }

    /// An informational line that is not a status (e.g. "no cache yet").
    pub fn info(&self, message: &str) {
        if self.verbosity >= Verbosity::Normal {
            let tag = self.paint("1;36", "info");
            self.err_line(&format!("{tag}: {message}"));
        }
    }

    /// A warning, always shown, and a `warning` event.
    pub fn warning(&self, message: &str) {
        let tag = self.paint("1;33", "warning");
        self.err_line(&format!("{tag}: {message}"));
        self.event(json!({ "reason": "warning", "message": message }));
    }

    /// An error line.
    pub fn error(&self, message: &str) {
        let tag = self.paint("1;31", "error");
        self.err_line(&format!("{tag}: {message}"));
    }

    /// One line of a step's own output: shown when verbose; on a terminal, a step's BuildKit
    /// vertex names become its live line.
    pub fn output(&self, id: usize, label: &str, line: &str) {
        if self.verbosity >= Verbosity::Verbose {
            self.err_line(&format!("[{label}] {line}"));
        }
        let Some(live) = &self.live else { return };
        // `#12 [compile 3/5] RUN cargo build`: what the step is doing now.
        let Some((_, text)) = line.strip_prefix('#').and_then(|l| l.split_once(' ')) else {
            return;
        };
        if text.starts_with('[') || text.starts_with("exporting") || text.starts_with("importing") {
            if let Some(bar) = live.running.lock().ok().and_then(|r| r.get(&id).cloned()) {
                bar.set_message(text.to_string());
            }
        }
    }

    /// The last lines of a failed step's output, always shown.
    pub fn failed_output(&self, label: &str, text: &str) {
        if self.verbosity >= Verbosity::Verbose {
            return; // already streamed
        }
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = &lines[lines.len().saturating_sub(20)..];
        for line in tail {
            self.err_line(&format!("[{label}] {line}"));
        }
    }

    /// A JSON event on stdout, with `--message-format json`.
    pub fn event(&self, event: Value) {
        if self.json {
            let _guard = self.lock.lock();
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{event}");
            let _ = out.flush();
        }
    }

    /// Plain text for stdout (the dry run, `check`), unless JSON events own stdout.
    pub fn stdout(&self, text: &str) {
        if !self.json {
            print!("{text}");
        }
    }
}

/// The `plan` event: every step with its program, argv, env and the steps it waits for.
pub fn plan_event(plan: &Plan) -> Value {
    let steps: Vec<Value> = plan
        .steps
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "package": s.package,
                "kind": kind(&s.action),
                "stage": stage_of(plan, s.id),
                "program": s.program,
                "args": s.args,
                "env": s.env.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
                "after": s.after,
                "detail": detail(&s.action),
            })
        })
        .collect();
    json!({ "reason": "plan", "steps": steps })
}

/// What a step reads, writes and may skip, for the `plan` event.
fn detail(action: &Action) -> Value {
    match action {
        Action::Pull { image } => json!({ "image": image }),
        Action::Check(check) => json!({
            "marker": check.marker,
            "finals": check.finals,
            "caches": check.caches,
            "export": check.export,
        }),
        Action::Mark { marker } => json!({ "marker": marker }),
        Action::Build(b) => json!({
            "final": b.is_final,
            "writes": b.writes,
            "reads": b.reads,
            "finals": b.finals,
            "exports": b.exports,
            "pushes_itself": b.pushes,
            "skipped_when_current": b.skip_if_current,
        }),
        Action::Push {
            image,
            cache,
            skip_if_current,
            best_effort,
            ..
        } => json!({
            "image": image,
            "cache": cache,
            "skipped_when_current": skip_if_current,
            "best_effort": best_effort,
        }),
    }
}

/// `check`, `pull`, `build`, `push` or `mark`.
pub fn kind(action: &Action) -> &'static str {
    match action {
        Action::Check(_) => "check",
        Action::Mark { .. } => "mark",
        Action::Pull { .. } => "pull",
        Action::Build(_) => "build",
        Action::Push { .. } => "push",
    }
}

/// The stage a step belongs to, if any.
pub fn stage_of(plan: &Plan, id: usize) -> Option<String> {
    match &plan.steps.get(id)?.action {
        Action::Build(b) => Some(b.stage.clone()),
        Action::Push { build, .. } => stage_of(plan, *build),
        Action::Pull { .. } | Action::Check(_) | Action::Mark { .. } => None,
    }
}

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
    let fresh = fresh_packages(plan, run);
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
            Action::Push { image, build, .. } => {
                let Some(stage) = stage_of(plan, *build) else {
                    continue;
                };
                let text = match (&result.outcome, &result.digest) {
                    (Outcome::Done, Some(digest)) => format!("{image}@{digest}"),
                    (Outcome::Done, None) => image.clone(),
                    (Outcome::Skipped(_), _) => format!("{image} (already current)"),
                    (Outcome::Warning(_), _) => format!("{image} (not pushed)"),
                    (Outcome::Failed(_), _) => format!("{image} (failed)"),
                };
                entry(&mut stages, &step.package, &stage)
                    .0
                    .pushed
                    .push(text);
            }
            Action::Pull { .. } | Action::Check(_) | Action::Mark { .. } => {}
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
pub fn fresh_packages(plan: &Plan, run: &RunResult) -> Vec<String> {
    plan.steps
        .iter()
        .filter(|s| matches!(s.action, Action::Check(_)))
        .filter(|s| run.get(s.id).is_some_and(|r| r.outcome == Outcome::Done))
        .map(|s| s.package.clone())
        .collect()
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
            let Some(source) = own.own.iter().find(|r| {
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

/// The summary table of a run, as text; empty when nothing was built.
pub fn summary(reports: &[StageReport]) -> String {
    if reports.is_empty() {
        return String::new();
    }
    let mut rows: Vec<[String; 5]> = vec![[
        "package".into(),
        "stage".into(),
        "cached/steps".into(),
        "time".into(),
        "pushed".into(),
    ]];
    for r in reports {
        rows.push([
            r.package.clone(),
            r.stage.clone(),
            format!("{}/{}", r.cached, r.steps),
            format!("{:.1}s", r.seconds),
            if r.pushed.is_empty() {
                "-".into()
            } else {
                r.pushed.join(", ")
            },
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "  {}", line.join("  ").trim_end());
    }
    out
}

/// The `build-finished` event; `fresh` are the packages found in the registry.
pub fn finished_event(
    success: bool,
    seconds: f64,
    reports: &[StageReport],
    fresh: &[String],
) -> Value {
    let stages: Vec<Value> = reports
        .iter()
        .map(|r| {
            json!({
                "package": r.package,
                "stage": r.stage,
                "steps": r.steps,
                "cached": r.cached,
                "seconds": round(r.seconds),
                "cache_sources": r.cache_sources,
                "pushed": r.pushed,
            })
        })
        .collect();
    json!({ "reason": "build-finished", "success": success, "seconds": round(seconds), "stages": stages, "fresh": fresh })
}

/// Seconds to milliseconds' precision, for stable JSON.
pub fn round(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// A Unix time as RFC 3339 UTC (`2026-11-27T20:14:44.123Z`), without a date crate.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_as_rfc3339() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_810_484_123);
        assert_eq!(rfc3339(t), "2026-11-27T20:14:44.123Z");
        assert_eq!(rfc3339(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}

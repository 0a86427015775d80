//! What the user sees: status lines in cargo's style, warnings, docker's output when asked for,
//! JSON events (`--message-format json`), and the summary at the end of a run. Every line the
//! tool prints goes through the [`Reporter`].
//!
//! The rooms: [`message`] (the typed JSON events), [`stages`] (what a run did per stage),
//! [`misses`] (its silent cache misses), [`summary`] (the table), [`time`].

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use crate::diagnose::RegistryProblem;
use crate::exec::{Listener, Outcome, StepResult, Verdict};
use crate::plan::{Action, MountKind, Plan, PushTag, Step};

pub mod message;
pub mod misses;
pub mod stages;
pub mod summary;
pub mod time;

use message::Message;
pub use misses::silent_misses;
pub use stages::{fresh_packages, mount_reports, stage_reports};
pub use summary::{mounts_summary, summary};

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
    /// Packages the registry holds: their steps have nothing to say.
    fresh: Mutex<BTreeSet<String>>,
    /// Cache sources whose import was already reported.
    imports: Mutex<BTreeSet<String>>,
    /// The steps of the builds finished so far, counted as the table counts them.
    tally: Mutex<stages::Tally>,
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
            fresh: Mutex::default(),
            imports: Mutex::default(),
            tally: Mutex::default(),
        }
    }

    /// A step started: on a terminal, it gets a live line.
    fn live_started(&self, id: usize, label: &str) {
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
    fn live_ended(&self, id: usize) {
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

    /// A line that only `-v` shows: what the tool found out about the machine.
    pub fn detail(&self, message: &str) {
        if self.verbosity >= Verbosity::Verbose {
            self.err_line(message);
        }
    }

    /// A warning, always shown, and a `warning` event.
    pub fn warning(&self, message: &str) {
        let tag = self.paint("1;33", "warning");
        self.err_line(&format!("{tag}: {message}"));
        self.event(&message::Warning::new(message));
    }

    /// An error line.
    pub fn error(&self, message: &str) {
        let tag = self.paint("1;31", "error");
        self.err_line(&format!("{tag}: {message}"));
    }

    /// One line of a step's own output: shown when verbose; on a terminal, a step's BuildKit
    /// vertex names become its live line.
    fn step_line(&self, id: usize, label: &str, line: &str) {
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
    fn failed_output(&self, label: &str, text: &str) {
        if self.verbosity >= Verbosity::Verbose {
            return; // already streamed
        }
        // BuildKit's JSON in the plain form's words, like the live lines.
        let text = crate::progress::readable(text);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = &lines[lines.len().saturating_sub(20)..];
        for line in tail {
            self.err_line(&format!("[{label}] {line}"));
        }
    }

    /// A JSON event on stdout, with `--message-format json`.
    pub fn event(&self, event: &impl Message) {
        if self.json {
            let line = event.to_json_line();
            let _guard = self.lock.lock();
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }

    /// Plain text for stdout (the dry run, `check`), unless JSON events own stdout.
    pub fn stdout(&self, text: &str) {
        if !self.json {
            let _guard = self.lock.lock();
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }

    /// Text for stderr as it is, at every verbosity (the summary table).
    pub fn stderr(&self, text: &str) {
        for line in text.lines() {
            self.err_line(line);
        }
    }

    /// Whether `package`'s steps have nothing to say: the registry holds its build.
    fn is_fresh(&self, package: &str) -> bool {
        self.fresh.lock().is_ok_and(|f| f.contains(package))
    }

    /// Says how reading each cache source of a finished build went, once per source and run.
    fn report_imports(&self, result: &StepResult) {
        let Some(progress) = &result.progress else {
            return;
        };
        for import in progress.imports() {
            let Some(error) = import.error else { continue };
            let first = self
                .imports
                .lock()
                .is_ok_and(|mut seen| seen.insert(import.reference.clone()));
            if !first {
                continue;
            }
            let problem = RegistryProblem::classify(&error);
            let text = problem.describe(&import.reference);
            if problem == RegistryProblem::NotFound {
                self.info(&text);
            } else {
                self.warning(&format!("{text}; building without it\n  {error}"));
            }
        }
    }
}

/// `service/compile` for a step of a stage, `service` otherwise: the prefix of its lines.
fn display_name(plan: &Plan, step: &Step) -> String {
    match plan.stage_of(step.id) {
        Some(stage) => format!("{}/{stage}", step.package),
        None => step.package.clone(),
    }
}

impl Listener for Reporter {
    fn started(&self, plan: &Plan, step: &Step, runs: bool) {
        self.event(&message::StepStarted::new(plan, step));
        // A skipped step says why when it is finished.
        if !runs || self.is_fresh(&step.package) {
            return;
        }
        match &step.action {
            // Says what it found, or did, when it is done.
            Action::Inspect(_) | Action::Mark { .. } => return,
            Action::Pull(pull) => self.status("Pulling", &pull.image),
            Action::Build(b) if b.export_only.is_some() => self.status(
                "Exporting",
                &format!(
                    "{} registry cache `{}`",
                    step.package,
                    b.exports.as_deref().unwrap_or_default()
                ),
            ),
            Action::Build(b) => {
                self.status("Building", &format!("{} stage `{}`", step.package, b.stage))
            }
            // A push that may turn out current says what it did when it is done.
            Action::Push(PushTag {
                skip_if_current: true,
                ..
            }) => {}
            Action::Push(push) => self.status("Pushing", &push.image),
            Action::Mount(m) => match m.kind {
                MountKind::Restore => self.status(
                    "Restoring",
                    &format!("{} cache mount `{}` from {}", step.package, m.id, m.image),
                ),
                MountKind::Export => self.status(
                    "Exporting",
                    &format!("{} cache mount `{}`", step.package, m.id),
                ),
                MountKind::Push => self.status("Pushing", &m.image),
            },
        }
        self.live_started(step.id, &display_name(plan, step));
    }

    fn output(&self, plan: &Plan, step: &Step, line: &str) {
        self.step_line(step.id, &display_name(plan, step), line);
    }

    fn finished(&self, plan: &Plan, step: &Step, result: &StepResult) {
        self.live_ended(step.id);
        let quiet = self.is_fresh(&step.package);
        // The built stage's own steps, over the builds of the run so far: what its row of the
        // table says (the other stages a build has get rows of their own).
        let counts = match (&step.action, &result.progress) {
            // The registry cache's export-only build repeats the final build's steps.
            (Action::Build(b), Some(progress)) if b.export_only.is_none() => {
                self.tally.lock().ok().map(|mut tally| {
                    tally.add_build(&step.package, &b.stage, progress);
                    tally.counts(&step.package, &b.stage)
                })
            }
            _ => None,
        };
        match &result.outcome {
            _ if quiet => {}
            Outcome::Done => match (&step.action, counts) {
                (Action::Build(b), _) if b.export_only.is_some() => self.status(
                    "Exported",
                    &format!(
                        "{} registry cache `{}` in {:.1}s",
                        step.package,
                        b.exports.as_deref().unwrap_or_default(),
                        result.seconds
                    ),
                ),
                (Action::Build(b), Some((cached, steps))) => self.status(
                    "Built",
                    &format!(
                        "{} stage `{}` in {:.1}s ({cached}/{steps} steps cached)",
                        step.package, b.stage, result.seconds,
                    ),
                ),
                // Every push that succeeded, final tags' included: `Pushing` alone would leave
                // open whether it was done.
                (Action::Push(PushTag { image, .. }), _) => {
                    self.status("Pushed", &format!("{image} in {:.1}s", result.seconds))
                }
                (Action::Mark { marker }, _) => {
                    self.info(&format!("recorded this build as `{marker}`"))
                }
                (Action::Mount(m), _) => {
                    let size = result
                        .bytes
                        .map(|b| format!(" ({})", crate::exec::human_bytes(b)))
                        .unwrap_or_default();
                    let (verb, what) = match m.kind {
                        MountKind::Restore => (
                            "Restored",
                            format!("{} cache mount `{}`{size}", step.package, m.id),
                        ),
                        MountKind::Export => (
                            "Exported",
                            format!("{} cache mount `{}`{size}", step.package, m.id),
                        ),
                        MountKind::Push => ("Pushed", m.image.clone()),
                    };
                    self.status(verb, &format!("{what} in {:.1}s", result.seconds));
                }
                _ => {}
            },
            Outcome::Skipped(why) => match &step.action {
                Action::Pull(_) => self.info(why),
                Action::Build(b) if b.export_only.is_some() => self.status(
                    "Fresh",
                    &format!(
                        "{} registry cache `{}` ({why})",
                        step.package,
                        b.exports.as_deref().unwrap_or_default()
                    ),
                ),
                Action::Build(b) => self.status(
                    "Fresh",
                    &format!("{} stage `{}` ({why})", step.package, b.stage),
                ),
                Action::Push(push) => self.status("Fresh", &format!("{} ({why})", push.image)),
                Action::Mount(m) if m.kind != MountKind::Push => {
                    self.info(&format!("{}: {why}", step.package))
                }
                Action::Inspect(_) | Action::Mark { .. } | Action::Mount(_) => {}
            },
            Outcome::Warning(why) => self.warning(why),
            Outcome::Failed(_) => self.failed_output(&display_name(plan, step), &result.output),
        }
        if !quiet {
            self.report_imports(result);
        }
        self.event(&message::StepFinished::new(plan, step, result, counts));
    }

    fn checked(&self, package: &str, verdict: &Verdict) {
        match verdict {
            Verdict::Fresh { marker } => {
                if let Ok(mut fresh) = self.fresh.lock() {
                    fresh.insert(package.to_string());
                }
                self.status(
                    "Fresh",
                    &format!(
                        "{package}: the registry holds this build (`{marker}`), and every final tag holds it: nothing to build or push"
                    ),
                );
            }
            Verdict::Build(why) => self.info(&format!("{package}: building: {why}")),
        }
        self.event(&message::RegistryCheck::new(package, verdict));
    }

    fn interrupted(&self, signal: i32) {
        self.error(&format!(
            "interrupted by signal {signal}: ending every running command"
        ));
    }
}

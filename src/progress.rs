//! Reads a build's progress output, in either of BuildKit's two forms, and docker push's output.
//!
//! - buildx's `--progress=rawjson` ([`rawjson`]): BuildKit's own `SolveStatus` messages, one
//!   JSON object at a time (buildx 0.13 indents them over many lines), with the CLI's text lines
//!   (a failed build's summary) in between.
//! - the plain printer's `--progress=plain` ([`plain`]), the only form the 20.10 CLI has.
//!
//! **Whether a step came from a cache.** BuildKit tells it in the messages of the step's vertex:
//! loading a result from a cache sends the vertex `cached` at its start and at its end, with an
//! error if the load failed (then the step is executed after all); executing the step's op sends
//! it uncached, naming its inputs; and on dockerd 26 (BuildKit 0.13), downloading the layers of
//! a result loaded from a remote cache sends the vertex once more, started and completed anew,
//! uncached and without its inputs (the downloads' progress controller; seen here on every fresh
//! agent, for the final target's last step and for every hit a running step reads). The plain
//! printer prints only a vertex's latest message when it gets to print: a hit whose download
//! round came in before that prints `DONE` instead of `CACHED` (seen in 2 of 20 builds of the
//! five-stage example on two agents at once; nearly always with the 20.10 CLI on dockerd 26).
//! So:
//! - a step is a **hit** when a message had its result loaded from a cache (`cached`,
//!   completed, no error), and no message says its op executed;
//! - a step **ran** otherwise, and it is **known to have run while the build goes on** only from
//!   the completion of its op's execution (completed, uncached, no error, naming its inputs). A
//!   step without inputs (`FROM` an image) is resolved uncached before it may be loaded from a
//!   cache, so it is never known to have run before its build ends.
//!
//! The plain printer's `CACHED` holds the same evidence but may lose it: a `DONE` without
//! `CACHED` counts as run (the safe side). A `DONE` after a `CACHED` counts as run too: on
//! dockerd 20.10 (BuildKit 0.8, which downloads inside the load) it is a step executed after
//! all, its result found in a cache whose layer the inline cache had lost (moby/buildkit#2274:
//! the vertex is printed again and ends `DONE`, where a second hit prints `CACHED` again); on
//! dockerd 26 it may also be a hit's download round, and counting it as run errs the safe way.
//! A `DONE` that made a step known to have run is not undone by a later `CACHED`: what the
//! scheduler decided during the build, the counts say after it.

use std::collections::{BTreeMap, BTreeSet};

mod plain;
mod rawjson;
#[cfg(test)]
mod tests;

/// Which of BuildKit's progress forms a build printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `--progress=plain`: a hit whose layers were downloaded may read as a step that ran.
    Plain,
    /// `--progress=rawjson`: hits and runs are told apart.
    RawJson,
}

/// What one build's progress output told.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuildProgress {
    /// Plain's vertices, by the number it prints (`#12`).
    plain: BTreeMap<u32, Vertex>,
    /// rawjson's vertices, in the order they were first named.
    json: Vec<Vertex>,
    /// How many of them started (and so got a number).
    started: u32,
    /// rawjson's vertex digests, with their index in `json`.
    digests: BTreeMap<String, usize>,
    /// The lines of a JSON object still being read.
    pending: rawjson::Pending,
    /// The image id from `writing image sha256:...`.
    pub image_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Vertex {
    name: String,
    /// Its result came from a cache: plain printed `CACHED`, or a JSON message said it was
    /// loaded (cached, completed, no error).
    hit: bool,
    /// Known to have run: plain printed `DONE` before any `CACHED` (for a step that is not a
    /// `FROM`), or a JSON message completed its op's execution. Never taken back.
    ran: bool,
    /// Its work was canceled (plain's `CANCELED`, rawjson's `context canceled`).
    canceled: bool,
    seconds: f64,
    error: Option<String>,
    /// When it started (rawjson's RFC 3339 time), to place its log lines.
    started: Option<String>,
    /// rawjson: its number in the order vertices started, as the plain printer numbers them
    /// (0 while it has not started: a vertex that never starts is no step of the build).
    number: u32,
    /// rawjson: its name was said (in plain's words).
    shown: bool,
    /// rawjson: what its process printed after its last newline. A log message carries the
    /// bytes of one write, and a program may write a line in pieces (cargo's `Compiling` and the
    /// crate's name come apart), so lines are shown whole.
    partial: String,
}

impl Vertex {
    /// Came from a cache, by the rule above.
    fn cached(&self) -> bool {
        self.hit && !self.ran
    }

    /// Was canceled, and neither loaded nor executed.
    fn only_canceled(&self) -> bool {
        self.canceled && !self.hit && !self.ran
    }
}

/// What one line of a build's output told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    /// What to show a person: the line itself, or what a JSON message said in the plain
    /// printer's words (`#3 [compile 2/5] RUN make`, `#3 CACHED`, log lines...); nothing while
    /// a JSON object is still being read.
    pub text: Vec<String>,
    /// Whether a step became known to have run: the moment to ask
    /// [`BuildProgress::stages_that_ran_so_far`] again.
    pub ran: bool,
}

/// One Dockerfile step as the build reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// BuildKit's name for it, e.g. `[compile 3/5] RUN make`.
    pub name: String,
    /// The stage it belongs to, e.g. `compile` (`None` in a Dockerfile of one unnamed stage).
    pub stage: Option<String>,
    /// Whether it came from a cache.
    pub cached: bool,
    /// How long it took.
    pub seconds: f64,
}

impl StepReport {
    /// The stage the step belongs to: its own, or in a Dockerfile of one unnamed stage (where
    /// BuildKit names none) the stage `build_stage` that was built.
    pub fn stage_or<'a>(&'a self, build_stage: &'a str) -> &'a str {
        self.stage.as_deref().unwrap_or(build_stage)
    }
}

/// How reading one `--cache-from` source went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheImport {
    /// The reference, as BuildKit names it.
    pub reference: String,
    /// `None` when it was imported, else BuildKit's error.
    pub error: Option<String>,
}

impl BuildProgress {
    /// Takes one line of output, in either form.
    pub fn feed(&mut self, line: &str) {
        self.read(line);
    }

    /// Takes one line of output, in either form, and says what it told.
    pub fn read(&mut self, line: &str) -> Reading {
        match rawjson::take(&mut self.pending, line) {
            rawjson::Taken::Partial => Reading::default(),
            rawjson::Taken::Message(status) => self.apply_json(status),
            rawjson::Taken::Text(lines) => {
                let mut reading = Reading::default();
                for line in lines {
                    reading.ran |= self.apply_plain(&line);
                    reading.text.push(line);
                }
                reading
            }
        }
    }

    /// The form the build printed its progress in, if any.
    pub fn format(&self) -> Option<Format> {
        if !self.json.is_empty() {
            Some(Format::RawJson)
        } else if !self.plain.is_empty() {
            Some(Format::Plain)
        } else {
            None
        }
    }

    /// Every vertex that was printed or started: plain's, then rawjson's, each in its
    /// numbering.
    fn vertices(&self) -> impl Iterator<Item = &Vertex> {
        let mut json: Vec<&Vertex> = self.json.iter().filter(|v| v.number > 0).collect();
        json.sort_by_key(|v| v.number);
        self.plain.values().chain(json)
    }

    /// The Dockerfile steps, in BuildKit's vertex order.
    ///
    /// A vertex that was only canceled (never loaded, never executed) is left out when another
    /// vertex of the same name tells what became of that step: on dockerd 26, two builds on one
    /// engine whose steps turn out to share a cache key are merged, and a build's progress then
    /// shows the other build's vertex of that step, canceled, beside its own (seen in the
    /// workspace's two images: `[deps 3/3]` canceled, then the same step `CACHED` under another
    /// number). Alone, a canceled step counts as run: nothing says it came from a cache.
    ///
    /// A `FROM` counts as from a cache when a step of its stage (and platform) came from one:
    /// that step's cache key holds the image's digest, so the image is the one the cache was
    /// made from. BuildKit shows such a `FROM` as done, not `CACHED`, whenever the agent had to
    /// download it (every fresh agent), which would make an untouched stage look rebuilt.
    pub fn steps(&self) -> Vec<StepReport> {
        let vertices: Vec<&Vertex> = self.vertices().collect();
        let superseded = |v: &Vertex| {
            v.only_canceled()
                && vertices
                    .iter()
                    .any(|o| o.name == v.name && !o.only_canceled())
        };
        let mut steps: Vec<StepReport> = vertices
            .iter()
            .filter(|v| !superseded(v))
            .filter_map(|v| {
                Some(StepReport {
                    stage: dockerfile_step_stage(&v.name)?,
                    name: v.name.clone(),
                    cached: v.cached(),
                    seconds: v.seconds,
                })
            })
            .collect();
        let proven_scopes: Vec<String> = steps
            .iter()
            .filter(|s| s.cached)
            .map(|s| stage_scope(&s.name).to_string())
            .collect();
        for step in &mut steps {
            if plain::is_from(&step.name)
                && proven_scopes.iter().any(|p| p == stage_scope(&step.name))
            {
                step.cached = true;
            }
        }
        steps
    }

    /// The Dockerfile steps known to have run while the build still goes on (see the module's
    /// rule: a step that may yet turn out to come from a cache is not among them).
    pub fn ran_so_far(&self) -> Vec<StepReport> {
        self.vertices()
            .filter(|v| v.ran)
            .filter_map(|v| {
                Some(StepReport {
                    stage: dockerfile_step_stage(&v.name)?,
                    name: v.name.clone(),
                    cached: false,
                    seconds: v.seconds,
                })
            })
            .collect()
    }

    /// The stages in which a step ran (did not come from a cache), each as
    /// [`StepReport::stage_or`] `build_stage` names it: the stages whose result this build may
    /// have changed, by [`Self::steps`]' counts. Its rule for a `FROM` matters most here: were a
    /// downloaded `FROM` counted as run, every stage on a fresh agent would look changed, and
    /// re-pushing such a stage's inline cache loses the layers of the steps BuildKit never
    /// loaded (moby/buildkit#2274).
    pub fn stages_that_ran(&self, build_stage: &str) -> BTreeSet<String> {
        stages(self.steps().into_iter().filter(|s| !s.cached), build_stage)
    }

    /// [`Self::stages_that_ran`] while the build goes on: from [`Self::ran_so_far`].
    pub fn stages_that_ran_so_far(&self, build_stage: &str) -> BTreeSet<String> {
        stages(self.ran_so_far().into_iter(), build_stage)
    }

    /// How many Dockerfile steps the build had.
    pub fn step_count(&self) -> usize {
        self.steps().len()
    }

    /// How many of them came from a cache.
    pub fn cached(&self) -> usize {
        self.steps().iter().filter(|s| s.cached).count()
    }

    /// The steps that ran (did not come from a cache), as BuildKit names them.
    pub fn ran(&self) -> Vec<String> {
        self.steps()
            .into_iter()
            .filter(|s| !s.cached)
            .map(|s| s.name)
            .collect()
    }

    /// The `--cache-from` sources BuildKit tried, and how each went.
    pub fn imports(&self) -> Vec<CacheImport> {
        self.vertices()
            .filter_map(|v| {
                let reference = v.name.strip_prefix("importing cache manifest from ")?;
                Some(CacheImport {
                    reference: reference.to_string(),
                    error: v.error.clone(),
                })
            })
            .collect()
    }

    /// The `--cache-from` sources that were imported without an error.
    pub fn imported(&self) -> Vec<String> {
        self.imports()
            .into_iter()
            .filter(|i| i.error.is_none())
            .map(|i| i.reference)
            .collect()
    }

    /// The errors that BuildKit reported for Dockerfile steps, with the step they belong to.
    pub fn errors(&self) -> Vec<String> {
        self.vertices()
            .filter(|v| !v.name.starts_with("importing cache manifest from "))
            .filter_map(|v| v.error.as_ref().map(|e| format!("{}: {e}", v.name)))
            .collect()
    }

    /// The stage of the first step that failed.
    pub fn failed_stage(&self) -> Option<String> {
        self.vertices()
            .filter(|v| v.error.is_some())
            .find_map(|v| dockerfile_step_stage(&v.name))
            .flatten()
    }
}

/// A build's whole output as a person reads it: plain lines as they are, rawjson messages in
/// the plain printer's words (for a failed step's last lines).
pub fn readable(output: &str) -> String {
    let mut progress = BuildProgress::default();
    let mut text = String::new();
    for line in output.lines() {
        for shown in progress.read(line).text {
            text.push_str(&shown);
            text.push('\n');
        }
    }
    text
}

/// For `[compile 2/5] RUN ...`, `[stage-1 1/2] COPY ...` or `[2/3] RUN ...` (a step of the
/// Dockerfile, as opposed to `[internal] ...` and `[auth] ...`): `Some(stage)`, where the stage
/// is `None` for the last form.
///
/// A build of several platforms prefixes the step's platform: `[linux/arm64 compile 2/5]`
/// (or `[linux/arm64 2/3]` for one unnamed stage) is a step of `compile` all the same.
fn dockerfile_step_stage(name: &str) -> Option<Option<String>> {
    let (scope, count) = bracketed(name)?;
    let stage = (!scope.is_empty()).then_some(scope);
    // A stage name has no `/`, a platform always has one.
    let stage = stage
        .map(|s| match s.split_once(' ') {
            Some((platform, stage)) if platform.contains('/') => stage,
            _ => s,
        })
        .filter(|s| !s.contains('/'))
        .map(str::to_string);
    let (k, n) = count.split_once('/')?;
    let digits = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit());
    (digits(k) && digits(n)).then_some(stage)
}

/// The platform and stage part of a step's name, the same for every step of one stage of one
/// platform: `linux/arm64 compile` for `[linux/arm64 compile 2/5] RUN ...`, empty for
/// `[2/3] RUN ...`.
fn stage_scope(name: &str) -> &str {
    bracketed(name).map_or("", |(scope, _)| scope)
}

/// The two parts of the bracket a step's name starts with: `("linux/arm64 compile", "2/5")`
/// for `[linux/arm64 compile 2/5] RUN ...`, `("", "2/3")` for `[2/3] RUN ...`.
fn bracketed(name: &str) -> Option<(&str, &str)> {
    let inner = name.strip_prefix('[')?.split_once(']')?.0;
    Some(inner.rsplit_once(' ').unwrap_or(("", inner)))
}

/// The digest in docker push's last line, `TAG: digest: sha256:... size: N`.
pub fn push_digest(output: &str) -> Option<String> {
    output.lines().rev().find_map(|line| {
        let (_, rest) = line.split_once(": digest: ")?;
        rest.split_whitespace().next().map(str::to_string)
    })
}

/// The digest of `image` as a build that pushed it printed it (`pushing manifest for
/// IMAGE@sha256:...`, in plain progress or in [`readable`] text): `None` where it did not
/// push that image.
pub fn pushed_manifest(output: &str, image: &str) -> Option<String> {
    output.lines().rev().find_map(|line| {
        let (_, rest) = line.split_once("pushing manifest for ")?;
        let pushed = rest.split_whitespace().next()?;
        let (name, digest) = pushed.rsplit_once('@')?;
        (name == image && digest.starts_with("sha256:")).then(|| digest.to_string())
    })
}

/// The stages of `steps`, each as [`StepReport::stage_or`] `build_stage` names it.
fn stages(steps: impl Iterator<Item = StepReport>, build_stage: &str) -> BTreeSet<String> {
    steps.map(|s| s.stage_or(build_stage).to_string()).collect()
}

//! The results: a markdown table per fixture and scenario, the goals, `results.json`, and a
//! grouped bar chart, `chart.svg`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;
use testbed::Flavor;

use super::contender::{self, Contender};
use super::fixture::{self, FixtureName};
use super::measure::{median, min_max};
use super::overhead::Overhead;
use super::{mib, Cell, Results, Scenario, SCENARIOS};

/// A cell's runs, summed up over those that succeeded.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Runs that failed.
    pub failed: usize,
    /// Median wall time, seconds (`NaN` without a successful run).
    pub median: f64,
    /// Fastest run.
    pub min: f64,
    /// Slowest run.
    pub max: f64,
    /// Median disk growth of the agent, MiB.
    pub agent_mib: Option<f64>,
    /// Median bytes the registry served, MiB.
    pub served_mib: f64,
    /// Median requests to the registry.
    pub requests: f64,
    /// Median manifest requests.
    pub manifest_requests: f64,
    /// Median growth of the registry's storage, MiB.
    pub pushed_mib: f64,
    /// Steps ran/cached, per distinct outcome with its count of runs.
    pub steps: String,
}

/// Sums up `cell`.
pub fn summarize(cell: &Cell) -> Summary {
    let ok: Vec<_> = cell.runs.iter().filter(|r| r.error.is_none()).collect();
    let seconds: Vec<f64> = ok.iter().map(|r| r.seconds).collect();
    let (min, max) = min_max(&seconds);
    let agent: Vec<f64> = ok.iter().filter_map(|r| r.agent_bytes.map(mib)).collect();
    let of =
        |f: &dyn Fn(&super::RunRecord) -> f64| median(&ok.iter().map(|r| f(r)).collect::<Vec<_>>());
    let mut outcomes: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    for r in &ok {
        if let Some((steps, cached)) = r.steps() {
            *outcomes.entry((steps - cached, cached)).or_default() += 1;
        }
    }
    let steps = if outcomes.is_empty() {
        "-".to_string()
    } else if outcomes.len() == 1 {
        let ((ran, cached), _) = outcomes.iter().next().expect("one outcome");
        format!("{ran}/{cached}")
    } else {
        outcomes
            .iter()
            .map(|((ran, cached), n)| format!("{ran}/{cached} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Summary {
        failed: cell.runs.len() - ok.len(),
        median: median(&seconds),
        min,
        max,
        agent_mib: (!agent.is_empty()).then(|| median(&agent)),
        served_mib: of(&|r| mib(r.traffic.served_bytes)),
        requests: of(&|r| r.traffic.requests as f64),
        manifest_requests: of(&|r| r.traffic.manifest_requests as f64),
        pushed_mib: of(&|r| r.pushed_bytes as f64 / (1024.0 * 1024.0)),
        steps,
    }
}

/// The median wall time of a cell, if it has a successful run; `NaN` when one of its runs
/// failed: a failed run fails the goal it counts for instead of leaving the median to the
/// runs that worked.
fn median_of(cells: &[Cell], f: FixtureName, s: Scenario, c: Contender) -> Option<f64> {
    let cell = cells
        .iter()
        .find(|x| x.fixture == f && x.scenario == s && x.contender == c)?;
    let summary = summarize(cell);
    if summary.failed > 0 {
        return Some(f64::NAN);
    }
    summary.median.is_finite().then_some(summary.median)
}

/// The seed script on the contender's engine: what its ratio is against.
fn seed_for(c: Contender) -> Contender {
    match c.engine() {
        Some(Flavor::Modern) => Contender::SeedModern,
        _ => Contender::SeedClassic,
    }
}

/// A goal of the issue, checked.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    /// What it asks.
    pub goal: String,
    /// Met (`Some(true)`), missed, or not measured (`None`).
    pub pass: Option<bool>,
    /// The numbers.
    pub detail: String,
}

impl Goal {
    fn verdict(&self) -> &'static str {
        match self.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a",
        }
    }
}

/// Checks the goals against the measurements.
pub fn goals(cells: &[Cell], overhead: Option<&Overhead>) -> Vec<Goal> {
    let mut goals = Vec::new();
    let m = |f, s, c| median_of(cells, f, s, c);
    let ratio_goal = |goal: String,
                      ours: Option<f64>,
                      theirs: Option<f64>,
                      limit: f64,
                      names: (&str, &str),
                      extra: String| {
        match (ours, theirs) {
            (Some(a), Some(b)) if a.is_nan() || b.is_nan() => Goal {
                goal,
                pass: Some(false),
                detail: format!(
                    "a run of {} failed",
                    if a.is_nan() { names.0 } else { names.1 }
                ),
            },
            (Some(a), Some(b)) => Goal {
                goal,
                pass: Some(a <= limit * b),
                detail: format!(
                    "{} {a:.2} s, {} {b:.2} s: {:.2}x (limit {limit}x){extra}",
                    names.0,
                    names.1,
                    a / b
                ),
            },
            _ => Goal {
                goal,
                pass: None,
                detail: format!("not measured ({} or {} missing)", names.0, names.1),
            },
        }
    };

    // Real Rust first (issue 11.5, 12.7).
    for f in fixture::ALL.into_iter().filter(|f| f.is_rust()) {
        let n = f.as_str();
        for (tool, seed) in [
            (Contender::ToolClassic, Contender::SeedClassic),
            (Contender::ToolRegistry, Contender::SeedModern),
        ] {
            goals.push(ratio_goal(
                format!("{n} source edit: {} <= 0.9x {}", tool.id(), seed.label()),
                m(f, Scenario::Changed, tool),
                m(f, Scenario::Changed, seed),
                0.9,
                (tool.id(), seed.label()),
                String::new(),
            ));
            goals.push(ratio_goal(
                format!("{n} next commit: {} <= 0.1x its own cold build", tool.id()),
                m(f, Scenario::NextCommit, tool),
                m(f, Scenario::Cold, tool),
                0.1,
                ("next commit", "cold"),
                String::new(),
            ));
            goals.push(ratio_goal(
                format!("{n} cold: {} <= 1.1x {}", tool.id(), seed.label()),
                m(f, Scenario::Cold, tool),
                m(f, Scenario::Cold, seed),
                1.1,
                (tool.id(), seed.label()),
                String::new(),
            ));
        }
        if !f.has_mounts_variant() {
            continue;
        }
        let (mounts, layers, seed) = (
            Contender::ToolMounts,
            Contender::ToolRegistry,
            Contender::SeedModern,
        );
        goals.push(ratio_goal(
            format!("{n} dependency bump: tool-mounts <= 0.4x {}", seed.label()),
            m(f, Scenario::DepBump, mounts),
            m(f, Scenario::DepBump, seed),
            0.4,
            ("tool-mounts", seed.label()),
            String::new(),
        ));
        goals.push(ratio_goal(
            format!("{n} source edit: tool-mounts no slower than the layer route (tool-registry)"),
            m(f, Scenario::Changed, mounts),
            m(f, Scenario::Changed, layers),
            1.0,
            ("tool-mounts", "tool-registry"),
            String::new(),
        ));
        goals.push(ratio_goal(
            format!("{n} cold: the mounts' export adds <= 20% (tool-mounts <= 1.2x tool-registry)"),
            m(f, Scenario::Cold, mounts),
            m(f, Scenario::Cold, layers),
            1.2,
            ("tool-mounts", "tool-registry"),
            String::new(),
        ));
    }

    // The registry cache's export when no layer changed (issue 11.5): the next commit of the
    // heavy fixture on the modern engine, against the faster seed script.
    {
        let h = FixtureName::Heavy;
        let nc = Scenario::NextCommit;
        let (c, mo) = (
            m(h, nc, Contender::SeedClassic),
            m(h, nc, Contender::SeedModern),
        );
        let (faster, name) = match (c, mo) {
            (Some(c), Some(mo)) if mo < c => (Some(mo), "seed-script (modern)"),
            (Some(c), _) => (Some(c), "seed-script (classic)"),
            (None, mo) => (mo, "seed-script (modern)"),
        };
        goals.push(ratio_goal(
            "heavy next commit (no layer changed): tool-registry <= 0.35x the faster seed-script"
                .into(),
            m(h, nc, Contender::ToolRegistry),
            faster,
            0.35,
            ("tool-registry", name),
            String::new(),
        ));
    }

    // Warm heavy.
    let (h, w) = (FixtureName::Heavy, Scenario::Warm);
    let measured = |v: Option<f64>| v.filter(|v| v.is_finite());
    let floor = match (
        measured(m(h, w, Contender::Floor)),
        measured(m(h, w, Contender::FloorManifest)),
    ) {
        (Some(p), Some(q)) => {
            format!("; floor: docker pull {p:.2} s, manifest inspect {q:.2} s")
        }
        (Some(p), None) => format!("; floor: docker pull {p:.2} s"),
        _ => String::new(),
    };
    goals.push(ratio_goal(
        "warm heavy --push: tool-classic <= 0.5x seed-script (classic)".into(),
        m(h, w, Contender::ToolClassic),
        m(h, w, Contender::SeedClassic),
        0.5,
        ("tool-classic", "seed-script (classic)"),
        floor.clone(),
    ));
    let (seed_c, seed_m) = (
        m(h, w, Contender::SeedClassic),
        m(h, w, Contender::SeedModern),
    );
    let (faster, faster_name) = match (seed_c, seed_m) {
        (Some(c), Some(m)) if m < c => (Some(m), "seed-script (modern)"),
        (Some(c), _) => (Some(c), "seed-script (classic)"),
        (None, m) => (m, "seed-script (modern)"),
    };
    goals.push(ratio_goal(
        "warm heavy --push: tool-registry <= 0.35x the faster seed-script".into(),
        m(h, w, Contender::ToolRegistry),
        faster,
        0.35,
        ("tool-registry", faster_name),
        floor.clone(),
    ));
    // The same through a build: what a run costs when the registry does not hold the very
    // build (a new commit that only changes the image's revision label), measured with
    // `--rebuild`.
    goals.push(ratio_goal(
        "warm heavy --push --rebuild: tool-classic <= 0.5x seed-script (classic)".into(),
        m(h, w, Contender::ToolClassicRebuild),
        m(h, w, Contender::SeedClassic),
        0.5,
        ("tool-classic --rebuild", "seed-script (classic)"),
        String::new(),
    ));
    goals.push(ratio_goal(
        "warm heavy --push --rebuild: tool-registry <= 0.35x the faster seed-script".into(),
        m(h, w, Contender::ToolRegistryRebuild),
        faster,
        0.35,
        ("tool-registry --rebuild", faster_name),
        String::new(),
    ));
    goals.push(ratio_goal(
        "warm heavy --push: tool-classic within 1.5x best-buildkit (classic)".into(),
        m(h, w, Contender::ToolClassic),
        m(h, w, Contender::BestClassic),
        1.5,
        ("tool-classic", "best-buildkit (classic)"),
        floor.clone(),
    ));
    goals.push(ratio_goal(
        "warm heavy --push: tool-registry within 1.5x best-buildkit (modern)".into(),
        m(h, w, Contender::ToolRegistry),
        m(h, w, Contender::BestModern),
        1.5,
        ("tool-registry", "best-buildkit (modern)"),
        floor,
    ));

    // Changed: only downstream stages ran, and the tool is no slower than the script.
    for f in fixture::ALL {
        let fx = f.fixture();
        for tool in [Contender::ToolClassic, Contender::ToolRegistry] {
            let Some(cell) = cells
                .iter()
                .find(|c| c.fixture == f && c.scenario == Scenario::Changed && c.contender == tool)
            else {
                continue;
            };
            let mut bad = Vec::new();
            let mut seen = Vec::new();
            for run in &cell.runs {
                if let Some(error) = &run.error {
                    bad.push(format!("run {} failed: {error}", run.round + 1));
                    continue;
                }
                let Some(stages) = &run.stages else {
                    bad.push(format!("run {}: no build-finished event", run.round + 1));
                    continue;
                };
                let ran: Vec<&str> = stages
                    .iter()
                    .filter(|s| s.cached < s.steps)
                    .map(|s| s.stage.as_str())
                    .collect();
                let upstream: Vec<&str> = ran
                    .iter()
                    .copied()
                    .filter(|s| !fx.downstream.contains(s))
                    .collect();
                if !upstream.is_empty() {
                    bad.push(format!(
                        "run {}: upstream stages ran: {}",
                        run.round + 1,
                        upstream.join(", ")
                    ));
                }
                let steps_ran: u64 = stages.iter().map(|s| s.steps - s.cached).sum();
                if steps_ran > fx.changed_steps {
                    bad.push(format!(
                        "run {}: {steps_ran} steps ran where the change needs {}",
                        run.round + 1,
                        fx.changed_steps
                    ));
                }
                if !ran.contains(&fx.downstream[0]) {
                    bad.push(format!(
                        "run {}: the edited stage `{}` ran nothing",
                        run.round + 1,
                        fx.downstream[0]
                    ));
                }
                seen.push(format!("[{}] {steps_ran} steps", ran.join(", ")));
            }
            let checked = !seen.is_empty() || !bad.is_empty();
            goals.push(Goal {
                goal: format!(
                    "changed {}: {} ran only the steps downstream of the change (stages {}; {} steps)",
                    f.as_str(),
                    tool.id(),
                    fx.downstream.join(", "),
                    fx.changed_steps
                ),
                pass: checked.then_some(bad.is_empty()),
                detail: if bad.is_empty() {
                    format!("stages that ran, per run: {}", seen.join(", "))
                } else {
                    format!("{} (the tool's `build-finished` event)", bad.join("; "))
                },
            });
            let seed = seed_for(tool);
            goals.push(ratio_goal(
                format!(
                    "changed {}: {} <= {} wall time",
                    f.as_str(),
                    tool.id(),
                    seed.label()
                ),
                m(f, Scenario::Changed, tool),
                m(f, Scenario::Changed, seed),
                1.0,
                (tool.id(), seed.label()),
                String::new(),
            ));
        }
    }

    goals.push(ratio_goal(
        "cold five-stage: tool-classic within 1.1x single-buildkit".into(),
        m(
            FixtureName::FiveStage,
            Scenario::Cold,
            Contender::ToolClassic,
        ),
        m(
            FixtureName::FiveStage,
            Scenario::Cold,
            Contender::SingleBuildkit,
        ),
        1.1,
        ("tool-classic", "single-buildkit (classic)"),
        String::new(),
    ));
    goals.push(ratio_goal(
        "cold five-stage: tool-registry within 1.1x single-buildkit (modern)".into(),
        m(
            FixtureName::FiveStage,
            Scenario::Cold,
            Contender::ToolRegistry,
        ),
        m(
            FixtureName::FiveStage,
            Scenario::Cold,
            Contender::SingleModern,
        ),
        1.1,
        ("tool-registry", "single-buildkit (modern)"),
        String::new(),
    ));
    // Not a goal of the issue: the part of the above that is the tool's own, against the same
    // single build with the registry cache it reads and writes.
    goals.push(ratio_goal(
        "cold five-stage: tool-registry within 1.1x single-buildkit + registry cache (modern)"
            .into(),
        m(
            FixtureName::FiveStage,
            Scenario::Cold,
            Contender::ToolRegistry,
        ),
        m(
            FixtureName::FiveStage,
            Scenario::Cold,
            Contender::SingleModernCache,
        ),
        1.1,
        ("tool-registry", "single-buildkit + registry cache (modern)"),
        String::new(),
    ));
    goals.push(ratio_goal(
        format!(
            "overhead: --dry-run of {} packages <= 1.2x cargo metadata",
            super::overhead::PACKAGES
        ),
        overhead.map(|o| o.dry_run.median),
        overhead.map(|o| o.cargo_metadata.median),
        1.2,
        ("dry run", "cargo metadata"),
        String::new(),
    ));
    goals
}

/// Where the time of each cell's median run went: the tool's steps (its JSON events) and the
/// slowest BuildKit vertices (downloads, compiles, exports, pushes).
fn timelines(out: &mut String, cells: &[&Cell]) {
    for cell in cells {
        let ok: Vec<&super::RunRecord> = cell.runs.iter().filter(|r| r.error.is_none()).collect();
        let Some(run) = ok.iter().min_by(|a, b| {
            let median = summarize(cell).median;
            (a.seconds - median)
                .abs()
                .total_cmp(&(b.seconds - median).abs())
        }) else {
            continue;
        };
        let _ = writeln!(
            out,
            "<details><summary>{}: where the {:.1} s of run {} went</summary>\n",
            cell.label,
            run.seconds,
            run.round + 1
        );
        for span in &run.timeline {
            let bytes = span
                .bytes
                .map(|b| format!(", {:.1} MiB", mib(b)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "- {:>6.1} s +{:.1} s: {} `{}` ({}{bytes})",
                span.start, span.seconds, span.kind, span.what, span.outcome
            );
        }
        for v in &run.vertices {
            let name: String = v.name.chars().take(90).collect();
            let _ = writeln!(out, "- vertex {:.1} s `[{}]` {}", v.seconds, v.build, name);
        }
        let _ = writeln!(out, "\n</details>\n");
    }
}

fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "-".into()
    }
}

/// Writes `results.md`, `results.json` and `chart.svg` into `dir`; returns the markdown.
pub fn write(dir: &Path, results: &Results) -> Result<String> {
    let md = markdown(results);
    std::fs::write(dir.join("results.md"), &md)
        .with_context(|| format!("cannot write `{}`", dir.join("results.md").display()))?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    chart(&dir.join("chart.svg"), results)
        .map_err(|e| anyhow::anyhow!("cannot draw the chart: {e}"))?;
    Ok(md)
}

fn markdown(results: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# xtask-docker benchmark\n");
    let _ = writeln!(
        out,
        "Median of {} timed runs per row (failed runs excluded and counted), each on a new, empty engine \
         (a fresh CI agent), contenders alternating run by run. `cold`: empty registry. `warm`: nothing \
         changed since the contender's own last push. `changed`: one source file edited since then. \
         Every contender pushes to its own repository on the same registry.\n",
        results.runs
    );
    let _ = writeln!(
        out,
        "Columns: **agent +MiB** is the growth of the fresh engine's disk (its data root; on the modern \
         engine also containerd's root, where it keeps image content and snapshots): what the agent \
         fetched and unpacked. **served MiB** is the body bytes of the registry's GET responses during \
         the run (its access log), with **req** the requests (manifest requests in brackets). \
         **pushed MiB** is the growth of the registry's storage. **ran/cached** are Dockerfile steps \
         (the tool's `build-finished` event; BuildKit's plain progress for the others, a step shared by \
         several builds counted once). **× seed** is the median against the seed script's on the same \
         engine.\n"
    );
    let _ = writeln!(out, "## Goals\n");
    for g in &results.goals {
        let _ = writeln!(out, "- **{}** {}: {}", g.verdict(), g.goal, g.detail);
    }
    let _ = writeln!(out);

    for f in fixture::ALL {
        for s in SCENARIOS {
            let cells: Vec<&Cell> = contender::ALL
                .iter()
                .filter_map(|c| {
                    results
                        .cells
                        .iter()
                        .find(|x| x.fixture == f && x.scenario == s && x.contender == *c)
                })
                .collect();
            if cells.is_empty() {
                continue;
            }
            let _ = writeln!(out, "## {} {}\n", f.as_str(), s.title());
            let _ = writeln!(
                out,
                "| contender | median s | min–max s | agent +MiB | served MiB (req) | pushed MiB | ran/cached | × seed |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---:|");
            for cell in &cells {
                let sum = summarize(cell);
                let seed = median_of(&results.cells, f, s, seed_for(cell.contender));
                let ratio = match seed {
                    Some(seed) if sum.median.is_finite() => format!("{:.2}", sum.median / seed),
                    _ => "-".into(),
                };
                let failed = if sum.failed > 0 {
                    format!(" ({} failed)", sum.failed)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "| {}{failed} | {} | {}–{} | {} | {} ({} [{}]) | {} | {} | {ratio} |",
                    cell.label,
                    num(sum.median, 2),
                    num(sum.min, 2),
                    num(sum.max, 2),
                    sum.agent_mib.map_or("-".into(), |v| num(v, 1)),
                    num(sum.served_mib, 1),
                    num(sum.requests, 0),
                    num(sum.manifest_requests, 0),
                    num(sum.pushed_mib, 1),
                    sum.steps,
                );
            }
            let _ = writeln!(out);
            if f.is_rust() {
                timelines(&mut out, &cells);
            }
        }
    }

    if let Some(o) = &results.overhead {
        let _ = writeln!(
            out,
            "## Overhead ({} packages, {} runs each)\n",
            o.packages, o.runs
        );
        let _ = writeln!(out, "| command | median s | min–max s |");
        let _ = writeln!(out, "|---|---:|---:|");
        for s in [&o.dry_run, &o.cargo_metadata] {
            let _ = writeln!(
                out,
                "| `{}` | {:.3} | {:.3}–{:.3} |",
                s.command, s.median, s.min, s.max
            );
        }
        let _ = writeln!(
            out,
            "\nratio {:.2}x\n",
            o.dry_run.median / o.cargo_metadata.median
        );
    }

    for p in &results.profiles {
        let _ = writeln!(
            out,
            "## Where the time goes: {} heavy warm (one more run with `-v`: {:.2} s)\n",
            p.contender.id(),
            p.seconds
        );
        let _ = writeln!(
            out,
            "- before the first step (workspace, plan, preflight probes): {:.2} s",
            p.before_first_step
        );
        for s in &p.steps {
            let _ = writeln!(
                out,
                "- step {} {} `{}`: starts at {:.2} s, {:.2} s, {}{}",
                s.id,
                s.kind,
                s.stage,
                s.start,
                s.seconds,
                s.outcome,
                s.message
                    .as_ref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(
            out,
            "- after the last step (summary, exit): {:.2} s",
            p.after_last_step
        );
        let _ = writeln!(
            out,
            "\nSlowest BuildKit vertices (BuildKit's own times, 0.1 s resolution):\n"
        );
        for v in &p.vertices {
            let _ = writeln!(out, "- {:.1} s `[{}]` {}", v.seconds, v.build, v.name);
        }
        let _ = writeln!(
            out,
            "\nCommands the tool may run before or between its steps, each timed alone (median of 5 on a fresh agent; which ones it runs, and whether at once, depends on its version):\n"
        );
        for probe in &p.probes {
            let _ = writeln!(
                out,
                "- {:.3} s `{}`",
                probe.seconds,
                probe.command.trim_end_matches(" || true")
            );
        }
        let _ = writeln!(out, "\nFull output: `{}`\n", p.log);
    }

    let _ = writeln!(
        out,
        "## Commands (heavy where measured; paths and ports vary)\n"
    );
    for c in contender::ALL {
        let cell = results
            .cells
            .iter()
            .filter(|x| x.contender == c)
            .min_by_key(|x| {
                (
                    x.fixture != FixtureName::Heavy,
                    x.scenario != Scenario::Warm,
                )
            });
        if let Some(cell) = cell {
            let _ = writeln!(
                out,
                "**{}** ({} {}):\n\n```sh\n{}\n```\n",
                c.label(),
                cell.fixture.as_str(),
                cell.scenario.as_str(),
                cell.commands.join("\n")
            );
        }
    }
    let _ = writeln!(out, "## Versions\n");
    for (k, v) in &results.versions {
        let _ = writeln!(out, "- {k}: {v}");
    }
    let _ = writeln!(out, "\nWhole benchmark: {:.0} s.", results.total_seconds);
    out
}

/// Fixed colours, one per contender, in [`contender::ALL`] order.
const COLOURS: [RGBColor; 14] = [
    RGBColor(148, 103, 189),
    RGBColor(197, 176, 213),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(23, 190, 207),
    RGBColor(174, 199, 232),
    RGBColor(152, 223, 138),
    RGBColor(255, 127, 14),
    RGBColor(255, 187, 120),
    RGBColor(214, 39, 40),
    RGBColor(255, 152, 150),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
    RGBColor(199, 199, 199),
];

/// Grouped bars: the median wall time of each contender (whiskers: min–max) per fixture and
/// scenario, on a logarithmic axis so that sub-second warm runs and cold builds both show.
fn chart(path: &Path, results: &Results) -> Result<(), Box<dyn std::error::Error>> {
    let groups: Vec<(FixtureName, Scenario)> = fixture::ALL
        .iter()
        .flat_map(|&f| SCENARIOS.iter().map(move |&s| (f, s)))
        .filter(|&(f, s)| {
            results
                .cells
                .iter()
                .any(|c| c.fixture == f && c.scenario == s)
        })
        .collect();
    let summaries: Vec<(&Cell, Summary)> = results
        .cells
        .iter()
        .map(|c| (c, summarize(c)))
        .filter(|(_, s)| s.median.is_finite())
        .collect();
    let ymax = summaries.iter().map(|(_, s)| s.max).fold(1.0f64, f64::max) * 1.5;
    let ymin = summaries
        .iter()
        .map(|(_, s)| s.min)
        .fold(1.0f64, f64::min)
        .max(0.001)
        / 1.5;
    // The legend goes into a column of its own on the right, clear of the bars.
    let legend_width = 240;
    let width = 150 * groups.len().max(3) as u32 + 100 + legend_width;
    let root = SVGBackend::new(path, (width, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "xtask-docker bench: wall time per run on a fresh agent (median of {}, whiskers min–max)",
                results.runs
            ),
            ("sans-serif", 18),
        )
        .margin(20)
        .margin_right(legend_width + 10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..groups.len().max(1) as f64, (ymin..ymax).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(12)
        .y_desc("seconds (log scale)")
        .y_label_formatter(&|v| format!("{}", (v * 1000.0).round() / 1000.0))
        .draw()?;
    let slots = groups
        .iter()
        .map(|&(f, s)| {
            summaries
                .iter()
                .filter(|(c, _)| c.fixture == f && c.scenario == s)
                .count()
        })
        .max()
        .unwrap_or(1)
        .max(1);
    let bar = 0.84 / slots as f64;
    let mut legend = Vec::new();
    for (ci, contender) in contender::ALL.iter().enumerate() {
        let colour = COLOURS[ci % COLOURS.len()];
        let mut bars = Vec::new();
        for (gi, &(f, s)) in groups.iter().enumerate() {
            let here: Vec<&(&Cell, Summary)> = summaries
                .iter()
                .filter(|(c, _)| c.fixture == f && c.scenario == s)
                .collect();
            let Some(pos) = here.iter().position(|(c, _)| c.contender == *contender) else {
                continue;
            };
            // The group's bars are centred in it.
            let left = gi as f64 + 0.5 - bar * here.len() as f64 / 2.0 + bar * pos as f64;
            bars.push((left, here[pos].1.clone()));
        }
        if bars.is_empty() {
            continue;
        }
        chart.draw_series(bars.iter().map(|(left, s)| {
            Rectangle::new(
                [(*left + bar * 0.08, ymin), (*left + bar * 0.92, s.median)],
                colour.filled(),
            )
        }))?;
        legend.push((contender.label(), colour));
        chart.draw_series(bars.iter().map(|(left, s)| {
            let x = left + bar / 2.0;
            PathElement::new(vec![(x, s.min), (x, s.max)], BLACK.stroke_width(1))
        }))?;
        chart.draw_series(bars.iter().map(|(left, s)| {
            Text::new(
                format!("{:.2}", s.median),
                (left + bar / 2.0, s.max * 1.08),
                ("sans-serif", 10)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))?;
    }
    for (i, (label, colour)) in legend.iter().enumerate() {
        let (x, y) = (width as i32 - legend_width as i32, 70 + 22 * i as i32);
        root.draw(&Rectangle::new([(x, y), (x + 14, y + 14)], colour.filled()))?;
        root.draw(&Text::new(
            label.to_string(),
            (x + 20, y + 7),
            ("sans-serif", 13)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    // Group names under the axis, at the groups' centres.
    for (gi, (f, s)) in groups.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(gi as f64 + 0.5, ymin));
        root.draw(&Text::new(
            format!("{} {}", f.as_str(), s.as_str()),
            (x, y + 10),
            ("sans-serif", 14)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(contender: Contender, runs: &[(f64, Option<&str>)]) -> Cell {
        Cell {
            fixture: FixtureName::Heavy,
            scenario: Scenario::Warm,
            contender,
            label: contender.label(),
            commands: Vec::new(),
            runs: runs
                .iter()
                .enumerate()
                .map(|(round, (seconds, error))| super::super::RunRecord {
                    round: round as u32,
                    seconds: *seconds,
                    error: error.map(str::to_string),
                    agent_bytes: None,
                    traffic: Default::default(),
                    pushed_bytes: 0,
                    stages: None,
                    timeline: Vec::new(),
                    vertices: Vec::new(),
                })
                .collect(),
        }
    }

    fn warm_heavy(goals: &[Goal]) -> &Goal {
        goals
            .iter()
            .find(|g| {
                g.goal
                    .starts_with("warm heavy --push: tool-classic <= 0.5x")
            })
            .expect("the goal")
    }

    #[test]
    fn a_failed_run_fails_its_goal() {
        let seed = cell(
            Contender::SeedClassic,
            &[(4.0, None), (4.2, None), (4.1, None)],
        );
        let ok = cell(
            Contender::ToolClassic,
            &[(0.2, None), (0.2, None), (0.3, None)],
        );
        let checked = goals(&[seed.clone(), ok], None);
        assert_eq!(warm_heavy(&checked).pass, Some(true));
        // Two fast runs and one that failed: not a median of the two.
        let failed = cell(
            Contender::ToolClassic,
            &[(0.2, None), (0.1, Some("exit status 1")), (0.2, None)],
        );
        let checked = goals(&[seed, failed], None);
        let goal = warm_heavy(&checked);
        assert_eq!(goal.pass, Some(false), "{goal:?}");
        assert!(
            goal.detail.contains("a run of tool-classic failed"),
            "{goal:?}"
        );
    }
}

//! The summary at the end of a run: per stage, how much came from the cache, and what was pushed.

use std::fmt::Write as _;

use crate::exec::{Outcome, RunResult};
use crate::plan::{Action, Plan};

/// The summary table of a run, as text.
pub fn summary(plan: &Plan, run: &RunResult) -> String {
    let mut rows: Vec<[String; 5]> = vec![[
        "package".into(),
        "stage".into(),
        "steps cached".into(),
        "time".into(),
        "pushed".into(),
    ]];
    for step in &plan.steps {
        let Action::Build { stage, .. } = &step.action else {
            continue;
        };
        let Some(result) = run.get(step.id) else {
            continue;
        };
        let cached = match &result.progress {
            Some(p) => format!("{}/{}", p.cached(), p.steps()),
            None => "-".into(),
        };
        let pushes: Vec<String> = plan
            .steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Push { image, build, .. } if *build == step.id => {
                    let pushed = run.get(s.id)?;
                    Some(match (&pushed.outcome, &pushed.digest) {
                        (Outcome::Done, Some(digest)) => format!("{image}@{digest}"),
                        (Outcome::Done, None) => image.clone(),
                        (Outcome::Skipped(_), _) => format!("{image} (already current)"),
                        (Outcome::Failed(_), _) => format!("{image} (failed)"),
                        (Outcome::Warning(_), _) => format!("{image} (warning)"),
                    })
                }
                _ => None,
            })
            .collect();
        let failed = matches!(result.outcome, Outcome::Failed(_));
        rows.push([
            step.package.clone(),
            stage.clone(),
            if failed { "failed".into() } else { cached },
            format!("{:.1}s", result.seconds),
            if pushes.is_empty() {
                "-".into()
            } else {
                pushes.join(", ")
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

//! The table at the end of a run.

use std::fmt::Write as _;

use super::stages::{MountReport, StageReport};

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

/// The table of a run's travelling cache mounts; empty when there are none.
pub fn mounts_summary(reports: &[MountReport]) -> String {
    if reports.is_empty() {
        return String::new();
    }
    let what = |done: &Option<(String, Option<u64>, f64)>, added: Option<u64>| match done {
        Some((image, bytes, seconds)) => format!(
            "{}{} in {seconds:.1}s ({image})",
            bytes.map_or("?".to_string(), crate::exec::human_bytes),
            added.map_or(String::new(), |added| format!(
                ", {} of it added on the restored copy",
                crate::exec::human_bytes(added)
            ))
        ),
        None => "-".to_string(),
    };
    let mut rows: Vec<[String; 4]> = vec![[
        "package".into(),
        "cache mount".into(),
        "restored".into(),
        "exported".into(),
    ]];
    for r in reports {
        rows.push([
            r.package.clone(),
            r.mount.clone(),
            what(&r.restored, None),
            what(&r.exported, r.added),
        ]);
    }
    let widths: Vec<usize> = (0..4)
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

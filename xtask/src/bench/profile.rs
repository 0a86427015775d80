//! Where the time goes in the tool's warm run of the heavy fixture: one more run on a fresh
//! agent with `-v` and JSON events, read as a timeline, plus the cost of each probe the tool
//! makes before and between its steps.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;
use testbed::{Registry, Tools};

use super::contender::{self, Cmd, Contender, Programs};
use super::fixture::{Checkout, Fixture};
use super::measure::median;

/// One step of the tool's plan as it ran.
#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    /// Its id in the plan.
    pub id: u64,
    /// `build`, `push` or `pull`.
    pub kind: String,
    /// Its stage.
    pub stage: String,
    /// `done`, `skipped`, ...
    pub outcome: String,
    /// Why it was skipped, if it was.
    pub message: Option<String>,
    /// Seconds from the tool's start to the step's start.
    pub start: f64,
    /// Seconds it took.
    pub seconds: f64,
}

/// A BuildKit vertex of the run's builds and how long it took (`#N DONE 1.2s`).
#[derive(Debug, Clone, Serialize)]
pub struct Vertex {
    /// The build (`package/stage`) it belongs to.
    pub build: String,
    /// Its name, e.g. `importing cache manifest from ...`.
    pub name: String,
    /// Seconds, as BuildKit printed them (0.1 s resolution).
    pub seconds: f64,
}

/// The median time of one command the tool runs outside its plan's steps.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// The command.
    pub command: String,
    /// Median seconds over several runs on the same fresh agent.
    pub seconds: f64,
}

/// The profile of one contender's warm run.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// The contender.
    pub contender: Contender,
    /// Wall time of the run (with `-v`, so slightly more than a timed run).
    pub seconds: f64,
    /// From the tool's start to its first step: loading the workspace,
    /// planning, the preflight probes.
    pub before_first_step: f64,
    /// The plan's steps, by start.
    pub steps: Vec<StepTiming>,
    /// From the last step's end to the tool's exit.
    pub after_last_step: f64,
    /// The slowest BuildKit vertices.
    pub vertices: Vec<Vertex>,
    /// What each probe costs.
    pub probes: Vec<Probe>,
    /// Where the run's full output is.
    pub log: String,
}

/// Runs `contender` once more (warm, fresh agent) with `-v`, and times the probes.
pub fn run(
    tools: &Tools,
    programs: &Programs,
    contender: Contender,
    fixture: &Fixture,
    copy: &Checkout,
    registry: &Registry,
    out_dir: &Path,
) -> Result<Profile> {
    let engine = match contender.engine() {
        Some(testbed::Flavor::Modern) => tools.modern_engine()?,
        _ => tools.engine()?,
    };
    let addr = registry.addr();
    let clone = copy.clone_fresh()?;
    let cmds = contender::commands(programs, contender, fixture, Some(&clone), &addr, &[], true);
    let host = engine.host();
    let timed = contender::execute(&cmds, Some(&host), &engine.docker_config());
    let printed = timed.printed.first().cloned().unwrap_or_default();
    let log = out_dir.join(format!(
        "profile-{}-{}.log",
        fixture.name.as_str(),
        contender.id()
    ));
    std::fs::write(
        &log,
        format!(
            "$ {}\n{}\n--- stdout (JSON events) ---\n{}",
            cmds[0].shell_line(),
            printed.stderr,
            printed.stdout
        ),
    )
    .with_context(|| format!("cannot write `{}`", log.display()))?;
    if let Some(error) = &timed.error {
        engine.stop();
        anyhow::bail!("the profile run of {} failed: {error}", contender.id());
    }

    let since = |t: SystemTime| {
        t.duration_since(timed.started)
            .unwrap_or_default()
            .as_secs_f64()
    };
    let mut steps = Vec::new();
    let mut last_end = timed.started;
    for event in printed
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["reason"] == "step-finished")
    {
        let (Some(start), Some(end)) = (
            event["start"].as_str().and_then(parse_rfc3339),
            event["end"].as_str().and_then(parse_rfc3339),
        ) else {
            continue;
        };
        last_end = last_end.max(end);
        steps.push(StepTiming {
            id: event["id"].as_u64().unwrap_or(0),
            kind: event["kind"].as_str().unwrap_or("").to_string(),
            stage: event["stage"].as_str().unwrap_or("").to_string(),
            outcome: event["outcome"].as_str().unwrap_or("").to_string(),
            message: event["message"].as_str().map(str::to_string),
            start: since(start),
            seconds: event["seconds"].as_f64().unwrap_or(0.0),
        });
    }
    steps.sort_by(|a, b| a.start.total_cmp(&b.start));
    let before_first_step = steps.first().map_or(timed.seconds, |s| s.start);
    let after_last_step = (timed.seconds - since(last_end)).max(0.0);

    // The probes, each timed on this same agent (its state does not change their answer).
    let docker = programs.docker.as_path();
    let cache_image = super::fixture::image(
        &addr,
        contender.id(),
        fixture.name,
        fixture.cache_tags.last().copied().unwrap_or("latest"),
    );
    let cargo = crate::test::cargo();
    let manifest = clone.manifest.display().to_string();
    let mut probe_cmds: Vec<Cmd> = vec![
        cmd(docker, &["--version"]),
        cmd(docker, &["buildx", "version"]),
        cmd(docker, &["version", "--format", "{{.Server.Version}}"]),
    ];
    if contender == Contender::ToolRegistry {
        probe_cmds.push(cmd(docker, &["buildx", "inspect"]));
        probe_cmds.push(cmd(docker, &["info", "--format", "{{json .DriverStatus}}"]));
    } else {
        probe_cmds.push(cmd(
            docker,
            &["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"],
        ));
        probe_cmds.push(cmd(
            docker,
            &["manifest", "inspect", "--insecure", &cache_image],
        ));
    }
    probe_cmds.push(cmd(
        Path::new(&cargo),
        &[
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
            &manifest,
        ],
    ));
    let mut probes = Vec::new();
    for probe in &probe_cmds {
        let times: Vec<f64> = (0..5)
            .map(|_| {
                contender::execute(
                    std::slice::from_ref(probe),
                    Some(&host),
                    &engine.docker_config(),
                )
                .seconds
            })
            .collect();
        probes.push(Probe {
            command: probe.shell_line(),
            seconds: median(&times),
        });
    }
    engine.stop();

    // BuildKit's own account of each vertex: `[build] #N name`, then `[build] #N DONE 1.2s`.
    let mut names: Vec<((String, String), String)> = Vec::new();
    let mut vertices = Vec::new();
    for line in printed.stderr.lines() {
        let Some((build, rest)) = line.strip_prefix('[').and_then(|l| l.split_once("] ")) else {
            continue;
        };
        let Some((number, text)) = rest.strip_prefix('#').and_then(|r| r.split_once(' ')) else {
            continue;
        };
        let key = (build.to_string(), number.to_string());
        if let Some(seconds) = text
            .strip_prefix("DONE ")
            .and_then(|s| s.strip_suffix('s'))
            .and_then(|s| s.parse::<f64>().ok())
        {
            if let Some((_, name)) = names.iter().find(|(k, _)| *k == key) {
                vertices.push(Vertex {
                    build: build.to_string(),
                    name: name.clone(),
                    seconds,
                });
            }
        } else if !names.iter().any(|(k, _)| *k == key) && number.parse::<u32>().is_ok() {
            names.push((key, text.to_string()));
        }
    }
    vertices.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    vertices.truncate(12);

    Ok(Profile {
        contender,
        seconds: timed.seconds,
        before_first_step,
        steps,
        after_last_step,
        vertices,
        probes,
        log: log.display().to_string(),
    })
}

fn cmd(program: &Path, args: &[&str]) -> Cmd {
    Cmd {
        program: program.to_path_buf(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: Vec::new(),
        may_fail: true,
        stdin: None,
    }
}

/// `2026-11-27T20:49:01.569Z` (the tool's event times: UTC, milliseconds) as a time.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, millis) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (t.next()??, t.next()??, t.next()??);
    let millis: i64 = format!("{millis:0<3}")[..3].parse().ok()?;
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 86_400 + h * 3600 + m * 60 + s) * 1000 + millis)
        .try_into()
        .ok()?;
    Some(UNIX_EPOCH + Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_tools_event_times() {
        let t = parse_rfc3339("2026-11-27T20:14:44.123Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_millis(),
            1_795_810_484_123
        );
        let leap = parse_rfc3339("2000-02-29T00:00:00.000Z").unwrap();
        assert_eq!(
            leap.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            951_782_400
        );
    }
}

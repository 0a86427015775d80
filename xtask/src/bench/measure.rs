//! What a run is measured by, besides its wall time: the agent's disk growth, the registry's
//! access log, BuildKit's plain progress, the tool's JSON events; and the statistics over runs.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

/// What the registry's access log says about a stretch of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    /// Every request.
    pub requests: u64,
    /// `GET` and `HEAD` of manifests (tags or digests): the round trips of cache imports and
    /// existence checks.
    pub manifest_requests: u64,
    /// Body bytes of every `GET` response: what clients downloaded.
    pub served_bytes: u64,
}

/// Reads the CNCF registry's access-log lines (combined log format:
/// `127.0.0.1 - - [date] "GET /v2/... HTTP/1.1" 200 1234 "" "agent"`) out of `log`.
pub fn traffic(log: &str) -> Traffic {
    let mut traffic = Traffic::default();
    for line in log.lines() {
        let Some((_, rest)) = line.split_once(" \"") else {
            continue;
        };
        if line.starts_with("time=") {
            continue; // the structured lines repeat what the access lines say
        }
        let Some((request, rest)) = rest.split_once("\" ") else {
            continue;
        };
        let mut words = request.split(' ');
        let (Some(method), Some(uri)) = (words.next(), words.next()) else {
            continue;
        };
        if !uri.starts_with("/v2/") {
            continue;
        }
        let mut fields = rest.split(' ');
        let _status = fields.next();
        let bytes: u64 = fields.next().and_then(|b| b.parse().ok()).unwrap_or(0);
        traffic.requests += 1;
        if uri.contains("/manifests/") {
            traffic.manifest_requests += 1;
        }
        // A HEAD response has no body, though the log gives its Content-Length.
        if method == "GET" {
            traffic.served_bytes += bytes;
        }
    }
    traffic
}

/// Steps of one stage: how many, and how many came from the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageSteps {
    /// The stage's name.
    pub stage: String,
    /// Dockerfile steps.
    pub steps: u64,
    /// Of them, from the cache.
    pub cached: u64,
}

/// Steps per stage out of BuildKit `--progress=plain` outputs, one per build (vertex numbers
/// start again in each). A Dockerfile step is a vertex named `[stage k/n] INSTRUCTION`; it was
/// cached when its number has a `#N CACHED` line. A step that several builds share is counted
/// once, as cached only when every build that had it took it from the cache, so that a script
/// of several builds and one build of the same Dockerfile count the same steps.
pub fn plain_progress_steps(outputs: &[&str]) -> Vec<StageSteps> {
    // step name -> (stage, cached in every build that had it)
    let mut steps: BTreeMap<String, (String, bool)> = BTreeMap::new();
    for output in outputs {
        let mut names: BTreeMap<&str, (&str, String)> = BTreeMap::new();
        let mut cached: HashSet<&str> = HashSet::new();
        for line in output.lines() {
            // The tool's `-v` prefixes each line with `[package/stage] `.
            let line = match line.strip_prefix('[') {
                Some(rest) => rest.split_once("] ").map_or(line, |(_, l)| l),
                None => line,
            };
            let Some(rest) = line.strip_prefix('#') else {
                continue;
            };
            let Some((number, text)) = rest.split_once(' ') else {
                continue;
            };
            if number.parse::<u32>().is_err() {
                continue;
            }
            if text == "CACHED" {
                cached.insert(number);
            } else if let Some(stage) = dockerfile_step(text) {
                names
                    .entry(number)
                    .or_insert_with(|| (stage, text.to_string()));
            }
        }
        for (number, (stage, name)) in names {
            let hit = cached.contains(number);
            steps
                .entry(name)
                .and_modify(|(_, all)| *all &= hit)
                .or_insert_with(|| (stage.to_string(), hit));
        }
    }
    let mut stages: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (stage, hit) in steps.into_values() {
        let counts = stages.entry(stage).or_default();
        counts.0 += 1;
        counts.1 += u64::from(hit);
    }
    stages
        .into_iter()
        .map(|(stage, (steps, cached))| StageSteps {
            stage,
            steps,
            cached,
        })
        .collect()
}

/// The stage of a vertex named like a Dockerfile step: `[compile 4/5] COPY src ./src` gives
/// `compile` (`[2/3] ...` of an unnamed single stage gives `-`); `[internal] ...` is not one.
fn dockerfile_step(text: &str) -> Option<&str> {
    let inner = text.strip_prefix('[')?.split_once(']')?.0;
    let (stage, position) = match inner.rsplit_once(' ') {
        Some((stage, position)) => (stage.rsplit(' ').next().unwrap_or(stage), position),
        None => ("-", inner),
    };
    let (k, n) = position.split_once('/')?;
    (k.parse::<u32>().is_ok() && n.parse::<u32>().is_ok()).then_some(stage)
}

/// The tool's `build-finished` event's `stages[].steps/cached`, summed per stage, out of its
/// `--message-format json` stdout; `None` without such an event. Where the run built more than
/// one package (a workspace), a stage is named `package/stage`.
pub fn tool_steps(stdout: &str) -> Option<Vec<StageSteps>> {
    let finished = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["reason"] == "build-finished")?;
    let listed = finished["stages"].as_array()?;
    let packages: std::collections::BTreeSet<&str> = listed
        .iter()
        .filter_map(|s| s["package"].as_str())
        .collect();
    let mut stages: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for s in listed {
        let stage = s["stage"].as_str()?;
        let name = match s["package"].as_str() {
            Some(package) if packages.len() > 1 => format!("{package}/{stage}"),
            _ => stage.to_string(),
        };
        let counts = stages.entry(name).or_default();
        counts.0 += s["steps"].as_u64()?;
        counts.1 += s["cached"].as_u64()?;
    }
    Some(
        stages
            .into_iter()
            .map(|(stage, (steps, cached))| StageSteps {
                stage,
                steps,
                cached,
            })
            .collect(),
    )
}

/// A BuildKit vertex and how long it took, as BuildKit printed it (`#N DONE 1.2s`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vertex {
    /// The build it belongs to: the tool's `package/stage` prefix with `-v`, else the
    /// command's position in the contender's list.
    pub build: String,
    /// Its name, e.g. `[deps 3/3] RUN cargo chef cook ...`.
    pub name: String,
    /// Seconds (0.1 s resolution); the longest `DONE` of the vertex where it was sent twice.
    pub seconds: f64,
}

/// Every vertex with a time out of plain progress outputs (BuildKit's `--progress=plain`, or
/// the tool's `-v` lines, each prefixed `[package/stage] `), slowest first.
pub fn vertices(outputs: &[&str]) -> Vec<Vertex> {
    let mut found: Vec<Vertex> = Vec::new();
    for (i, output) in outputs.iter().enumerate() {
        let mut names: BTreeMap<(String, String), String> = BTreeMap::new();
        for line in output.lines() {
            let (build, rest) = match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
                Some((build, rest)) if rest.starts_with('#') => (build.to_string(), rest),
                _ => (format!("command {}", i + 1), line),
            };
            let Some((number, text)) = rest.strip_prefix('#').and_then(|r| r.split_once(' '))
            else {
                continue;
            };
            if number.parse::<u32>().is_err() {
                continue;
            }
            let key = (build.clone(), number.to_string());
            if let Some(seconds) = text
                .strip_prefix("DONE ")
                .and_then(|s| s.strip_suffix('s'))
                .and_then(|s| s.parse::<f64>().ok())
            {
                let Some(name) = names.get(&key) else {
                    continue;
                };
                match found
                    .iter_mut()
                    .find(|v| v.build == build && v.name == *name)
                {
                    Some(v) => v.seconds = v.seconds.max(seconds),
                    None => found.push(Vertex {
                        build,
                        name: name.clone(),
                        seconds,
                    }),
                }
            } else if !names.contains_key(&key)
                && (text.starts_with('[')
                    || text.starts_with("exporting")
                    || text.starts_with("importing")
                    || text.starts_with("pushing")
                    || text.starts_with("writing"))
            {
                names.insert(key, text.to_string());
            }
        }
    }
    found.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    found
}

/// One step of the tool's run: its kind, stage, start (seconds since the first step started)
/// and duration, from its `step-finished` events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    /// `build`, `push`, `restore`, `export`, ...
    pub kind: String,
    /// The stage (or the cache mount's id), if any.
    pub what: String,
    /// `done`, `skipped`, ...
    pub outcome: String,
    /// Seconds from the first step's start.
    pub start: f64,
    /// Its seconds.
    pub seconds: f64,
    /// Bytes a cache mount's restore or export moved.
    pub bytes: Option<u64>,
}

/// The steps of the tool's run out of its JSON events (`step-finished`), by start; skipped
/// steps and questions left out.
pub fn timeline(stdout: &str) -> Vec<Span> {
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &serde_json::Value| {
            e["reason"] == "step-finished" && e["outcome"] != "skipped" && e["kind"] != "inspect"
        })
        .collect();
    let time = |e: &serde_json::Value| e["start"].as_str().map(str::to_string);
    let first = events.iter().filter_map(time).min();
    let Some(first) = first.and_then(|t| super::profile::parse_rfc3339(&t)) else {
        return Vec::new();
    };
    let mut spans: Vec<Span> = events
        .iter()
        .filter_map(|e| {
            let start = super::profile::parse_rfc3339(e["start"].as_str()?)?;
            Some(Span {
                kind: e["kind"].as_str()?.to_string(),
                what: e["stage"]
                    .as_str()
                    .or(e["image"].as_str())
                    .unwrap_or_default()
                    .to_string(),
                outcome: e["outcome"].as_str().unwrap_or_default().to_string(),
                start: start
                    .duration_since(first)
                    .unwrap_or_default()
                    .as_secs_f64(),
                seconds: e["seconds"].as_f64().unwrap_or(0.0),
                bytes: e["bytes"].as_u64(),
            })
        })
        .collect();
    spans.sort_by(|a, b| a.start.total_cmp(&b.start));
    spans
}

/// The median (the mean of the middle two for an even count); `NaN` for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// The smallest and largest value; `NaN`s for none.
pub fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold((f64::NAN, f64::NAN), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_registry_access_log() {
        let log = concat!(
            "time=\"2026\" level=info msg=\"response completed\" http.request.method=GET\n",
            "127.0.0.1 - - [27/Nov/2026:20:49:02 +0000] \"HEAD /v2/acme/heavy/manifests/compile HTTP/1.1\" 200 1987 \"\" \"containerd/1.6.20\"\n",
            "127.0.0.1 - - [27/Nov/2026:20:49:02 +0000] \"GET /v2/acme/heavy/manifests/sha256:19 HTTP/1.1\" 200 1987 \"\" \"containerd/1.6.20\"\n",
            "127.0.0.1 - - [27/Nov/2026:20:49:02 +0000] \"GET /v2/acme/heavy/blobs/sha256:45 HTTP/1.1\" 200 1064345 \"\" \"containerd/1.6.20\"\n",
            "127.0.0.1 - - [27/Nov/2026:20:49:03 +0000] \"PUT /v2/acme/heavy/manifests/latest HTTP/1.1\" 201 0 \"\" \"docker/20.10.24 UpstreamClient(Docker-Client/28.2.2 \\\\(linux\\\\))\"\n",
        );
        assert_eq!(
            traffic(log),
            Traffic {
                requests: 4,
                manifest_requests: 3,
                served_bytes: 1987 + 1_064_345
            }
        );
    }

    #[test]
    fn counts_steps_across_builds_once() {
        let compile = "#1 [internal] load build definition from Dockerfile\n#1 DONE 0.0s\n\
            #6 [base 1/2] COPY busybox /bin/busybox\n#6 CACHED\n\
            #7 [compile 1/2] COPY src ./src\n#7 DONE 0.1s\n";
        let runtime = "#4 [base 1/2] COPY busybox /bin/busybox\n#4 CACHED\n\
            #5 [compile 1/2] COPY src ./src\n#5 CACHED\n\
            #8 [runtime 1/1] COPY --from=compile /out /app\n#8 pulling sha256:45\n#8 CACHED\n";
        assert_eq!(
            plain_progress_steps(&[compile, runtime]),
            [
                StageSteps {
                    stage: "base".into(),
                    steps: 1,
                    cached: 1
                },
                StageSteps {
                    stage: "compile".into(),
                    steps: 1,
                    cached: 0
                },
                StageSteps {
                    stage: "runtime".into(),
                    steps: 1,
                    cached: 1
                },
            ]
        );
        let prefixed =
            "[heavy/runtime] #3 [linux/amd64 runtime 1/1] COPY a b\n[heavy/runtime] #3 CACHED\n";
        assert_eq!(
            plain_progress_steps(&[prefixed]),
            [StageSteps {
                stage: "runtime".into(),
                steps: 1,
                cached: 1
            }]
        );
    }

    #[test]
    fn names_a_workspace_s_stages_by_package() {
        let event = |stages: &str| {
            format!(
                r#"{{"reason":"plan"}}
{{"reason":"build-finished","success":true,"stages":[{stages}]}}"#
            )
        };
        let one = event(
            r#"{"package":"svc","stage":"compile","steps":4,"cached":1},{"package":"svc","stage":"runtime","steps":1,"cached":1}"#,
        );
        let names = |stdout: &str| -> Vec<(String, u64, u64)> {
            tool_steps(stdout)
                .unwrap()
                .into_iter()
                .map(|s| (s.stage, s.steps, s.cached))
                .collect()
        };
        assert_eq!(
            names(&one),
            [("compile".into(), 4, 1), ("runtime".into(), 1, 1)]
        );
        let two = event(
            r#"{"package":"api","stage":"compile","steps":4,"cached":2},{"package":"worker","stage":"compile","steps":4,"cached":4}"#,
        );
        assert_eq!(
            names(&two),
            [
                ("api/compile".into(), 4, 2),
                ("worker/compile".into(), 4, 4)
            ]
        );
        assert!(tool_steps(r#"{"reason":"plan"}"#).is_none());
    }

    #[test]
    fn reads_vertex_times_from_plain_and_prefixed_progress() {
        let plain = "#9 [deps 3/3] RUN cargo chef cook --release\n#9 12.0 Compiling serde\n#9 DONE 51.3s\n#10 exporting to image\n#10 DONE 2.0s\n";
        let tool = "[svc/runtime] #4 [compile 2/2] RUN cargo build\n[svc/runtime] #4 DONE 20.1s\n";
        let v = vertices(&[plain, tool]);
        assert_eq!(v[0].name, "[deps 3/3] RUN cargo chef cook --release");
        assert_eq!(v[0].seconds, 51.3);
        assert_eq!(v[1].build, "svc/runtime");
        assert_eq!(v[1].seconds, 20.1);
        assert_eq!(v[2].name, "exporting to image");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(min_max(&[2.0, 5.0, 1.0]), (1.0, 5.0));
    }
}

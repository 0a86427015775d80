//! buildx's `--progress=rawjson`: BuildKit's `SolveStatus` messages as JSON (moby/buildkit
//! `client.SolveStatus`: `vertexes` of `{digest, inputs, name, started, completed, cached,
//! error}`, `statuses` of `{id, vertex, name, current, total, started, completed}`, `logs` of
//! `{vertex, stream, data (base64), timestamp}`), each one object, which buildx 0.13 indents over
//! many lines, between the text lines the CLI prints itself (a failed build's summary). Read
//! with serde_json into the few fields the rule needs; unknown fields are ignored.

use base64::Engine as _;
use serde::Deserialize;

use super::{BuildProgress, Reading, Vertex};

/// The lines of a JSON object read so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Pending {
    text: String,
    lines: Vec<String>,
}

/// An object larger than this is not a progress message: its lines are given back as text.
const MAX_MESSAGE: usize = 16 << 20;

/// What a line was, once taken.
pub(super) enum Taken {
    /// It ended a progress message.
    Message(SolveStatus),
    /// It is inside an object that has not ended yet.
    Partial,
    /// Lines that are no progress message: this one, or an object's that did not parse.
    Text(Vec<String>),
}

/// Takes one line of a build's output.
pub(super) fn take(pending: &mut Pending, line: &str) -> Taken {
    if pending.lines.is_empty() && !line.trim_start().starts_with('{') {
        return Taken::Text(vec![line.to_string()]);
    }
    if !pending.lines.is_empty() {
        pending.text.push('\n');
    }
    pending.text.push_str(line);
    pending.lines.push(line.to_string());
    // Only a line that closes a brace can end the object.
    if line.trim_end().ends_with('}') {
        match serde_json::from_str::<SolveStatus>(&pending.text) {
            Ok(status) => {
                *pending = Pending::default();
                return Taken::Message(status);
            }
            Err(e) if e.is_eof() && pending.text.len() <= MAX_MESSAGE => {}
            Err(_) => return Taken::Text(std::mem::take(pending).lines),
        }
    } else if pending.text.len() > MAX_MESSAGE {
        return Taken::Text(std::mem::take(pending).lines);
    }
    Taken::Partial
}

/// One progress message.
#[derive(Debug, Deserialize)]
pub(super) struct SolveStatus {
    vertexes: Option<Vec<VertexMessage>>,
    statuses: Option<Vec<StatusMessage>>,
    logs: Option<Vec<LogMessage>>,
}

/// What BuildKit said of a vertex at one moment: each message replaces the last.
#[derive(Debug, Deserialize)]
struct VertexMessage {
    digest: String,
    /// The vertices it reads; sent with the messages of loading from a cache and of executing,
    /// never with those of downloading a result's layers.
    inputs: Option<Vec<String>>,
    name: Option<String>,
    started: Option<String>,
    completed: Option<String>,
    #[serde(default)]
    cached: bool,
    error: Option<String>,
}

/// One task of a vertex: a layer's download, a push, `writing image sha256:...`.
#[derive(Debug, Deserialize)]
struct StatusMessage {
    id: String,
    vertex: String,
    completed: Option<String>,
}

/// Bytes a vertex's process printed.
#[derive(Debug, Deserialize)]
struct LogMessage {
    vertex: String,
    /// Base64, as Go encodes a byte slice.
    data: Option<String>,
    timestamp: Option<String>,
}

impl BuildProgress {
    /// Takes one progress message: what it says of each vertex, by the module's rule.
    pub(super) fn apply_json(&mut self, status: SolveStatus) -> Reading {
        let mut reading = Reading::default();
        for m in status.vertexes.unwrap_or_default() {
            let index = self.json_vertex(&m.digest);
            if m.started.is_some() || m.completed.is_some() {
                self.number(index);
            }
            let vertex = &mut self.json[index];
            let number = vertex.number;
            if vertex.name.is_empty() {
                vertex.name = m.name.clone().unwrap_or_default();
            }
            if m.started.is_some() {
                vertex.started.clone_from(&m.started);
            }
            if number > 0 && !vertex.shown {
                vertex.shown = true;
                reading.text.push(format!("#{number} {}", vertex.name));
            }
            let Some(completed) = &m.completed else {
                continue;
            };
            if !vertex.partial.is_empty() {
                let rest = std::mem::take(&mut vertex.partial);
                reading.text.push(format!("#{number} {rest}"));
            }
            let seconds = m
                .started
                .as_deref()
                .and_then(|s| seconds_between(s, completed))
                .unwrap_or(0.0);
            let error = m.error.filter(|e| !e.is_empty());
            let executes = m.inputs.is_some_and(|i| !i.is_empty());
            match (&error, m.cached) {
                // A failed load is followed by the step's execution; a canceled step is no
                // error of its own (the plain printer says `CANCELED`).
                (Some(e), _) if e.ends_with("context canceled") => {
                    vertex.canceled = true;
                    reading.text.push(format!("#{number} CANCELED"));
                }
                (Some(e), _) => {
                    vertex.error = Some(e.clone());
                    reading.text.push(format!("#{number} ERROR: {e}"));
                }
                (None, true) => {
                    vertex.hit = true;
                    vertex.error = None;
                    vertex.seconds = seconds;
                    reading.text.push(format!("#{number} CACHED"));
                }
                (None, false) => {
                    vertex.error = None;
                    if executes && !vertex.ran {
                        vertex.ran = true;
                        vertex.seconds = seconds;
                        reading.ran |= super::dockerfile_step_stage(&vertex.name).is_some();
                    }
                    reading.text.push(format!("#{number} DONE {seconds:.1}s"));
                }
            }
        }
        for s in status.statuses.unwrap_or_default() {
            if s.completed.is_none() {
                continue;
            }
            if let Some(id) = s.id.strip_prefix("writing image ") {
                self.image_id = id.split_whitespace().next().map(str::to_string);
            }
            let index = self.json_vertex(&s.vertex);
            let number = self.number(index);
            reading.text.push(format!("#{number} {} done", s.id));
        }
        for log in status.logs.unwrap_or_default() {
            let index = self.json_vertex(&log.vertex);
            let number = self.number(index);
            let vertex = &mut self.json[index];
            let bytes = log
                .data
                .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
                .unwrap_or_default();
            let at = match (&vertex.started, &log.timestamp) {
                (Some(started), Some(at)) => seconds_between(started, at)
                    .map(|s| format!(" {s:.3}"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            vertex.partial.push_str(&String::from_utf8_lossy(&bytes));
            while let Some(end) = vertex.partial.find('\n') {
                let line: String = vertex.partial.drain(..=end).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                reading.text.push(format!("#{number}{at} {line}"));
            }
        }
        reading
    }

    /// The index in `json` of the vertex of `digest`.
    fn json_vertex(&mut self, digest: &str) -> usize {
        if let Some(&index) = self.digests.get(digest) {
            return index;
        }
        self.json.push(Vertex::default());
        self.digests.insert(digest.to_string(), self.json.len() - 1);
        self.json.len() - 1
    }

    /// The number of the vertex at `index`, given when it first started (as the plain printer
    /// numbers them): BuildKit announces every vertex of the build at once, in no useful order.
    fn number(&mut self, index: usize) -> u32 {
        if self.json[index].number == 0 {
            self.started += 1;
            self.json[index].number = self.started;
        }
        self.json[index].number
    }
}

/// Seconds from one RFC 3339 time to another (Go's `time.Time` in JSON: `2026-12-02T05:47:13.
/// 403171535Z`, or with an offset such as `+01:00`).
fn seconds_between(from: &str, to: &str) -> Option<f64> {
    Some(unix_seconds(to)? - unix_seconds(from)?)
}

/// An RFC 3339 time as seconds since 1970, without a date crate for one format.
fn unix_seconds(time: &str) -> Option<f64> {
    let number = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (date, clock) = time.split_once(['T', 't'])?;
    let mut date = date.splitn(3, '-');
    let (year, month, day) = (
        number(date.next()?)?,
        number(date.next()?)?,
        number(date.next()?)?,
    );
    let (clock, offset) = match clock.find(['Z', 'z', '+', '-']) {
        Some(i) => clock.split_at(i),
        None => return None,
    };
    let offset = match offset {
        "Z" | "z" => 0,
        _ => {
            let (sign, rest) = offset.split_at(1);
            let (h, m) = rest.split_once(':')?;
            let minutes = number(h)? * 60 + number(m)?;
            if sign == "-" {
                -minutes * 60
            } else {
                minutes * 60
            }
        }
    };
    let mut clock = clock.splitn(3, ':');
    let (hour, minute) = (number(clock.next()?)?, number(clock.next()?)?);
    let seconds = clock.next()?;
    let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
    let fraction = match fraction {
        "" => 0.0,
        f => format!("0.{f}").parse::<f64>().ok()?,
    };
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + number(whole)? - offset;
    Some(secs as f64 + fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_times() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(unix_seconds("2000-02-29T00:00:00Z"), Some(951_782_400.0));
        assert_eq!(
            unix_seconds("2026-11-27T20:14:44.123Z"),
            Some(1_795_810_484.123)
        );
        assert_eq!(
            unix_seconds("2026-11-27T21:14:44.123+01:00"),
            unix_seconds("2026-11-27T20:14:44.123Z")
        );
        assert_eq!(
            unix_seconds("2026-11-27T19:44:44.123-00:30"),
            unix_seconds("2026-11-27T20:14:44.123Z")
        );
        let d = seconds_between(
            "2026-12-02T05:47:13.403171535Z",
            "2026-12-02T05:47:13.553898113Z",
        )
        .unwrap();
        assert!((d - 0.150_726_578).abs() < 1e-6, "{d}");
        // Across midnight and a month's end.
        assert_eq!(
            seconds_between("2026-11-30T23:59:59.5Z", "2026-12-01T00:00:00.5Z"),
            Some(1.0)
        );
        for bad in [
            "",
            "yesterday",
            "2026-12-02",
            "2026-12-02T05:47:13",
            "2026-1x-02T05:47:13Z",
        ] {
            assert_eq!(unix_seconds(bad), None, "{bad}");
        }
    }

    #[test]
    fn takes_objects_of_one_line_or_many_and_gives_other_lines_back() {
        let mut pending = Pending::default();
        let text = |t: Taken| match t {
            Taken::Text(lines) => lines,
            _ => panic!("not text"),
        };
        assert_eq!(
            text(take(&mut pending, "ERROR: failed to solve")),
            ["ERROR: failed to solve"]
        );
        assert!(matches!(
            take(&mut pending, "{\"vertexes\": []}"),
            Taken::Message(_)
        ));
        for line in ["{", "  \"logs\": [", "    {\"vertex\": \"sha256:a\"}"] {
            assert!(matches!(take(&mut pending, line), Taken::Partial), "{line}");
        }
        assert!(matches!(take(&mut pending, "  ]"), Taken::Partial));
        assert!(matches!(take(&mut pending, "}"), Taken::Message(_)));
        // Braces that are no message come back as the lines they were.
        assert!(matches!(take(&mut pending, "{ not json"), Taken::Partial));
        assert_eq!(text(take(&mut pending, "}")), ["{ not json", "}"]);
        assert_eq!(
            text(take(&mut pending, "{\"vertexes\": 3}")),
            ["{\"vertexes\": 3}"]
        );
    }
}

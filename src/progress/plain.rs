//! The plain printer's lines: `#N NAME` when vertex N is first printed, then `#N CACHED`,
//! `#N DONE 1.2s`, `#N ERROR: ...`, its statuses (`#N sha256:... 1.06MB / 1.06MB 0.1s done`)
//! and log lines (`#N 0.512 text`). Each is what the printer knew of the vertex when it printed.

use super::BuildProgress;

impl BuildProgress {
    /// Takes one line that is not part of a JSON message; whether it made a step known to have
    /// run (a `DONE` before any `CACHED`).
    pub(super) fn apply_plain(&mut self, line: &str) -> bool {
        let Some(rest) = line.strip_prefix('#') else {
            return false;
        };
        let Some((number, text)) = rest.split_once(' ') else {
            return false;
        };
        let Ok(number) = number.parse::<u32>() else {
            return false;
        };
        let vertex = self.plain.entry(number).or_default();
        if vertex.name.is_empty() && !text.starts_with("sha256:") {
            vertex.name = text.to_string();
        } else if text == "CACHED" {
            vertex.hit = true;
        } else if text == "CANCELED" {
            vertex.canceled = true;
        } else if let Some(seconds) = text.strip_prefix("DONE ").and_then(|t| t.strip_suffix('s')) {
            vertex.seconds = seconds.parse().unwrap_or(0.0);
            // A `FROM` is printed `DONE` when its image is resolved, and may yet be loaded from
            // a cache: only the end of the build tells. A `DONE` after `CACHED` is a run (see
            // the module `progress`).
            if !vertex.ran && !is_from(&vertex.name) {
                vertex.ran = true;
                return super::dockerfile_step_stage(&vertex.name).is_some();
            }
        } else if let Some(error) = text
            .strip_prefix("ERROR: ")
            .or_else(|| text.strip_prefix("ERROR "))
        {
            vertex.error = Some(error.to_string());
        } else if let Some(id) = text.strip_prefix("writing image ") {
            // `writing image sha256:... done`
            self.image_id = id.split_whitespace().next().map(str::to_string);
        }
        false
    }
}

/// Whether BuildKit's name of a vertex is a Dockerfile `FROM` of an image
/// (`[base 1/3] FROM docker.io/library/rust:1.82@sha256:...`).
pub(super) fn is_from(name: &str) -> bool {
    name.split_once("] ")
        .is_some_and(|(_, instruction)| instruction.starts_with("FROM "))
}

#[cfg(test)]
mod tests {
    use super::BuildProgress;

    #[test]
    fn a_step_printed_again_and_done_after_cached_ran() {
        // dockerd 20.10 with the 20.10 CLI, here: `base`'s RUN found in the cache, then
        // executed after all for the runtime stage (its layer digest changed in the registry).
        let mut progress = BuildProgress::default();
        let mut ran = false;
        for line in [
            "#7 [base 2/2] RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]",
            "#7 CACHED",
            "#13 [compile 5/5] RUN make",
            "#13 DONE 1.3s",
            "#7 [base 2/2] RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]",
            "#7 DONE 0.3s",
        ] {
            ran |= progress.read(line).ran;
        }
        assert!(ran);
        assert_eq!(progress.cached(), 0, "{:?}", progress.steps());
        // A second hit is printed `CACHED` again: still a hit.
        let mut hit = BuildProgress::default();
        for line in [
            "#7 [base 2/2] RUN true",
            "#7 CACHED",
            "#7 [base 2/2] RUN true",
            "#7 CACHED",
        ] {
            hit.read(line);
        }
        assert_eq!(hit.cached(), 1);
    }

    #[test]
    fn tells_a_from_by_its_name() {
        assert!(super::is_from(
            "[base 1/3] FROM docker.io/library/rust:1.82"
        ));
        assert!(super::is_from(
            "[1/2] FROM 127.0.0.1:5000/library/bb:1@sha256:7d23"
        ));
        assert!(!super::is_from("[base 2/3] RUN echo FROM x"));
        assert!(!super::is_from("[internal] load metadata"));
    }
}

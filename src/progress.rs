//! Reads BuildKit's plain progress output (`--progress=plain`) and docker's push output.

use std::collections::BTreeMap;

/// What one build's progress output told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildProgress {
    vertices: BTreeMap<u32, Vertex>,
    /// The image id from `writing image sha256:...`.
    pub image_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Vertex {
    name: String,
    cached: bool,
    error: Option<String>,
}

impl BuildProgress {
    /// Takes one line of output.
    pub fn feed(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix('#') else {
            return;
        };
        let Some((number, text)) = rest.split_once(' ') else {
            return;
        };
        let Ok(number) = number.parse::<u32>() else {
            return;
        };
        let vertex = self.vertices.entry(number).or_default();
        if text.starts_with('[') && vertex.name.is_empty() {
            vertex.name = text.to_string();
        } else if text == "CACHED" {
            vertex.cached = true;
        } else if let Some(error) = text
            .strip_prefix("ERROR: ")
            .or_else(|| text.strip_prefix("ERROR "))
        {
            vertex.error = Some(error.to_string());
        } else if let Some(id) = text.strip_prefix("writing image ") {
            // `writing image sha256:... done`
            self.image_id = id.split_whitespace().next().map(str::to_string);
        }
    }

    fn dockerfile_steps(&self) -> impl Iterator<Item = &Vertex> {
        self.vertices
            .values()
            .filter(|v| is_dockerfile_step(&v.name))
    }

    /// How many Dockerfile steps the build had.
    pub fn steps(&self) -> usize {
        self.dockerfile_steps().count()
    }

    /// How many of them came from a cache.
    pub fn cached(&self) -> usize {
        self.dockerfile_steps().filter(|v| v.cached).count()
    }

    /// The steps that ran (did not come from a cache), as BuildKit names them.
    pub fn ran(&self) -> Vec<&str> {
        self.dockerfile_steps()
            .filter(|v| !v.cached)
            .map(|v| v.name.as_str())
            .collect()
    }

    /// The errors that BuildKit reported, with the step they belong to.
    pub fn errors(&self) -> Vec<String> {
        self.vertices
            .values()
            .filter_map(|v| v.error.as_ref().map(|e| format!("{}: {e}", v.name)))
            .collect()
    }
}

/// `[compile 2/5] RUN ...`, `[stage-1 1/2] COPY ...` or `[2/3] RUN ...`: a step of the
/// Dockerfile, as opposed to `[internal] ...` and `[auth] ...`.
fn is_dockerfile_step(name: &str) -> bool {
    let Some(inner) = name
        .strip_prefix('[')
        .and_then(|n| n.split_once(']'))
        .map(|(i, _)| i)
    else {
        return false;
    };
    let count = inner.rsplit(' ').next().unwrap_or("");
    match count.split_once('/') {
        Some((k, n)) => {
            !k.is_empty()
                && !n.is_empty()
                && (k.chars().chain(n.chars())).all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

/// The digest in docker push's last line, `TAG: digest: sha256:... size: N`.
pub fn push_digest(output: &str) -> Option<String> {
    output.lines().rev().find_map(|line| {
        let (_, rest) = line.split_once(": digest: ")?;
        rest.split_whitespace().next().map(str::to_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as the 20.10 engine's BuildKit printed them here.
    const CACHED_BUILD: &str = "\
#1 [internal] load build definition from Dockerfile
#1 sha256:2eeca46beb295a6c34b26637f7a0f6fd69d5d6971aa89e7a05ad62bcea36a1cc
#1 transferring dockerfile: 32B done
#1 DONE 0.0s

#3 importing cache manifest from 127.0.0.1:5055/svc:compile
#3 DONE 0.0s

#7 [compile 1/5] WORKDIR /src
#7 CACHED

#9 [compile 3/5] RUN sleep 2 && dd if=/dev/urandom of=/toolchain.bin bs=1M count=8 2>/dev/null
#9 pulling sha256:2d626481f6214841128d1d205d951456e47a404b85162be40f45c14c3d417c63 0.0s done
#9 CACHED

#12 [runtime 1/1] COPY --from=compile /out/service /usr/local/bin/service
#12 DONE 0.0s

#14 exporting to image
#14 exporting layers done
#14 writing image sha256:c2d64abe68b39f9724b52ed9369240d1f2010eab97764387fc665311a10a1e58 done
#14 naming to 127.0.0.1:5055/svc:dev done
";

    #[test]
    fn counts_steps_and_cache_hits() {
        let mut progress = BuildProgress::default();
        CACHED_BUILD.lines().for_each(|l| progress.feed(l));
        assert_eq!(progress.steps(), 3);
        assert_eq!(progress.cached(), 2);
        assert_eq!(
            progress.ran(),
            vec!["[runtime 1/1] COPY --from=compile /out/service /usr/local/bin/service"]
        );
        assert_eq!(
            progress.image_id.as_deref(),
            Some("sha256:c2d64abe68b39f9724b52ed9369240d1f2010eab97764387fc665311a10a1e58")
        );
    }

    #[test]
    fn keeps_errors_with_their_step() {
        let mut progress = BuildProgress::default();
        for line in [
            "#5 [compile 2/2] RUN false",
            "#5 ERROR: executor failed running [/bin/sh -c false]: exit code: 1",
        ] {
            progress.feed(line);
        }
        assert_eq!(
            progress.errors(),
            vec![
                "[compile 2/2] RUN false: executor failed running [/bin/sh -c false]: exit code: 1"
            ]
        );
        assert_eq!(progress.ran().len(), 1);
    }

    #[test]
    fn tells_dockerfile_steps_from_internal_ones() {
        assert!(is_dockerfile_step("[compile 2/5] RUN x"));
        assert!(is_dockerfile_step("[stage-1 1/2] COPY a b"));
        assert!(is_dockerfile_step("[2/3] RUN x"));
        assert!(!is_dockerfile_step("[internal] load build context"));
        assert!(!is_dockerfile_step("[auth] library/rust:pull token"));
        assert!(!is_dockerfile_step("exporting to image"));
        assert!(!is_dockerfile_step("[compile /] x"));
    }

    #[test]
    fn reads_the_pushed_digest() {
        let out = "14147414d18b: Pushed\ncompile: digest: sha256:db4e6dfd0499cccb4942d31de2d98e031d81a58307582683157116d9c48995f0 size: 1774\n";
        assert_eq!(
            push_digest(out).as_deref(),
            Some("sha256:db4e6dfd0499cccb4942d31de2d98e031d81a58307582683157116d9c48995f0")
        );
        assert_eq!(push_digest("no digest here"), None);
    }
}

//! Reads BuildKit's plain progress output (`--progress=plain`) and docker's push output.

use std::collections::{BTreeMap, BTreeSet};

/// What one build's progress output told.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuildProgress {
    vertices: BTreeMap<u32, Vertex>,
    /// The image id from `writing image sha256:...`.
    pub image_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Vertex {
    name: String,
    cached: bool,
    /// `DONE` seen: it finished (a cache hit prints `CACHED` and no `DONE`).
    done: bool,
    seconds: f64,
    error: Option<String>,
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
        if vertex.name.is_empty() && !text.starts_with("sha256:") {
            vertex.name = text.to_string();
        } else if text == "CACHED" {
            vertex.cached = true;
        } else if let Some(seconds) = text.strip_prefix("DONE ").and_then(|t| t.strip_suffix('s')) {
            vertex.seconds = seconds.parse().unwrap_or(0.0);
            vertex.done = true;
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

    /// The Dockerfile steps, in BuildKit's vertex order.
    pub fn steps(&self) -> Vec<StepReport> {
        self.vertices
            .values()
            .filter_map(|v| {
                let stage = dockerfile_step_stage(&v.name)?;
                Some(StepReport {
                    name: v.name.clone(),
                    stage,
                    cached: v.cached,
                    seconds: v.seconds,
                })
            })
            .collect()
    }

    /// The Dockerfile steps known to have run while the build still goes on: finished, and not
    /// from a cache. (A step just started may yet print `CACHED`.)
    pub fn ran_so_far(&self) -> Vec<StepReport> {
        self.vertices
            .values()
            .filter(|v| v.done && !v.cached)
            .filter_map(|v| {
                Some(StepReport {
                    name: v.name.clone(),
                    stage: dockerfile_step_stage(&v.name)?,
                    cached: false,
                    seconds: v.seconds,
                })
            })
            .collect()
    }

    /// The stages in which a step ran (did not come from a cache), each as
    /// [`StepReport::stage_or`] `build_stage` names it.
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
    #[cfg(test)]
    pub fn ran(&self) -> Vec<String> {
        self.steps()
            .into_iter()
            .filter(|s| !s.cached)
            .map(|s| s.name)
            .collect()
    }

    /// The `--cache-from` sources BuildKit tried, and how each went.
    pub fn imports(&self) -> Vec<CacheImport> {
        self.vertices
            .values()
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
        self.vertices
            .values()
            .filter(|v| !v.name.starts_with("importing cache manifest from "))
            .filter_map(|v| v.error.as_ref().map(|e| format!("{}: {e}", v.name)))
            .collect()
    }

    /// The stage of the first step that failed.
    pub fn failed_stage(&self) -> Option<String> {
        self.vertices
            .values()
            .filter(|v| v.error.is_some())
            .find_map(|v| dockerfile_step_stage(&v.name))
            .flatten()
    }
}

/// For `[compile 2/5] RUN ...`, `[stage-1 1/2] COPY ...` or `[2/3] RUN ...` (a step of the
/// Dockerfile, as opposed to `[internal] ...` and `[auth] ...`): `Some(stage)`, where the stage
/// is `None` for the last form.
fn dockerfile_step_stage(name: &str) -> Option<Option<String>> {
    let inner = name.strip_prefix('[')?.split_once(']')?.0;
    let (stage, count) = match inner.rsplit_once(' ') {
        Some((stage, count)) => (Some(stage.to_string()), count),
        None => (None, inner),
    };
    let (k, n) = count.split_once('/')?;
    let digits = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit());
    (digits(k) && digits(n)).then_some(stage)
}

/// The digest in docker push's last line, `TAG: digest: sha256:... size: N`.
pub fn push_digest(output: &str) -> Option<String> {
    output.lines().rev().find_map(|line| {
        let (_, rest) = line.split_once(": digest: ")?;
        rest.split_whitespace().next().map(str::to_string)
    })
}

/// The stages of `steps`, each as [`StepReport::stage_or`] `build_stage` names it.
fn stages(steps: impl Iterator<Item = StepReport>, build_stage: &str) -> BTreeSet<String> {
    steps.map(|s| s.stage_or(build_stage).to_string()).collect()
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
        assert_eq!(progress.step_count(), 3);
        assert_eq!(progress.cached(), 2);
        assert_eq!(progress.steps()[1].seconds, 0.0);
        assert_eq!(progress.steps()[2].stage.as_deref(), Some("runtime"));
        assert_eq!(progress.steps()[2].stage_or("other"), "runtime");
        let unnamed = StepReport {
            name: "[2/2] RUN x".into(),
            stage: None,
            cached: false,
            seconds: 0.0,
        };
        assert_eq!(unnamed.stage_or("stage-0"), "stage-0");
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
    fn knows_a_step_ran_only_once_it_is_done() {
        let mut progress = BuildProgress::default();
        let names = |p: &BuildProgress| -> Vec<String> {
            p.ran_so_far().into_iter().map(|s| s.name).collect()
        };
        // Started: it may yet come from the cache.
        progress.feed("#9 [compile 3/5] RUN sleep 2");
        assert!(names(&progress).is_empty());
        progress.feed("#9 CACHED");
        assert!(names(&progress).is_empty());
        progress.feed("#10 [compile 4/5] COPY src ./src");
        progress.feed("#10 DONE 0.0s");
        progress.feed("#1 [internal] load build definition from Dockerfile");
        progress.feed("#1 DONE 0.0s");
        progress.feed("#11 [compile 5/5] RUN make");
        progress.feed("#11 0.512 compiling");
        assert_eq!(names(&progress), ["[compile 4/5] COPY src ./src"]);
        assert_eq!(progress.ran_so_far()[0].stage.as_deref(), Some("compile"));
        progress.feed("#12 [runtime 1/1] COPY --from=compile /out /out");
        assert_eq!(
            progress.stages_that_ran_so_far("x"),
            BTreeSet::from(["compile".to_string()])
        );
        // Once the build ended, a step that did not come from a cache ran.
        assert_eq!(
            progress.stages_that_ran("x"),
            BTreeSet::from(["compile".to_string(), "runtime".to_string()])
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
        let stage = |name: &str| dockerfile_step_stage(name);
        assert_eq!(stage("[compile 2/5] RUN x"), Some(Some("compile".into())));
        assert_eq!(
            stage("[stage-1 1/2] COPY a b"),
            Some(Some("stage-1".into()))
        );
        assert_eq!(stage("[2/3] RUN x"), Some(None));
        assert_eq!(stage("[internal] load build context"), None);
        assert_eq!(stage("[auth] library/rust:pull token"), None);
        assert_eq!(stage("exporting to image"), None);
        assert_eq!(stage("[compile /] x"), None);
    }

    #[test]
    fn reads_cache_imports_and_their_errors() {
        // The 20.10 engine, one missing cache image and one registry that is down.
        let out = "\
#7 importing cache manifest from 127.0.0.1:5999/down:x
#7 ERROR: failed to do request: Head \"http://127.0.0.1:5999/v2/down/manifests/x\": dial tcp 127.0.0.1:5999: connect: connection refused

#6 importing cache manifest from 127.0.0.1:5055/none:x
#6 ERROR: 127.0.0.1:5055/none:x: not found

#3 importing cache manifest from 127.0.0.1:5055/svc:compile
#3 DONE 0.0s
";
        let mut progress = BuildProgress::default();
        out.lines().for_each(|l| progress.feed(l));
        let imports = progress.imports();
        assert_eq!(imports.len(), 3);
        assert_eq!(imports[0].reference, "127.0.0.1:5055/svc:compile");
        assert_eq!(imports[0].error, None);
        assert_eq!(progress.imported(), ["127.0.0.1:5055/svc:compile"]);
        assert!(imports[1].error.as_deref().unwrap().ends_with("not found"));
        assert!(imports[2]
            .error
            .as_deref()
            .unwrap()
            .contains("connection refused"));
        assert!(
            progress.errors().is_empty(),
            "import errors are not build errors"
        );
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

//! The parser against outputs captured on real engines (`fixtures/`, whose README says where
//! each came from), and against hand-made lines where the engines here never printed a case.

use std::collections::BTreeSet;

use super::*;

/// Reads `output` line by line as the executor does. Checks on the way that a step known to
/// have run stays so, and once the build ended counts as run.
fn read_all(output: &str) -> BuildProgress {
    let mut progress = BuildProgress::default();
    let mut known: BTreeSet<String> = BTreeSet::new();
    for line in output.lines() {
        let reading = progress.read(line);
        let now: BTreeSet<String> = progress.ran_so_far().into_iter().map(|s| s.name).collect();
        assert!(
            now.is_superset(&known),
            "a step known to have run is no more"
        );
        assert_eq!(
            reading.ran,
            now != known,
            "`ran` says when a step became known to have run, at: {line}"
        );
        known = now;
    }
    let ran: BTreeSet<String> = progress.ran().into_iter().collect();
    assert!(
        known.is_subset(&ran),
        "known to have run during the build, cached after it: {:?}",
        known.difference(&ran).collect::<Vec<_>>()
    );
    progress
}

fn names(steps: Vec<StepReport>) -> Vec<String> {
    steps.into_iter().map(|s| s.name).collect()
}

/// The steps of a five-stage fixture that ran, by their first words.
fn ran_starts(progress: &BuildProgress) -> Vec<String> {
    progress
        .ran()
        .iter()
        .map(|n| n.split(" /").next().unwrap_or(n).to_string())
        .collect()
}

const MODERN_REBUILD: &str = include_str!("fixtures/modern-rawjson-rebuild.json");
const MODERN_CHANGED: &str = include_str!("fixtures/modern-rawjson-changed.json");
const MODERN_FAILED: &str = include_str!("fixtures/modern-rawjson-failed.json");
const MODERN_FROM_IMAGE: &str = include_str!("fixtures/modern-rawjson-from-image.json");
const CLASSIC_INLINE: &str = include_str!("fixtures/classic-rawjson-inline.json");
const CLASSIC_CHANGED: &str = include_str!("fixtures/classic-rawjson-changed.json");
const MODERN_PLAIN_LOST: &str = include_str!("fixtures/modern-plain-lost-cached.txt");
const CLASSIC_PLAIN: &str = include_str!("fixtures/classic-plain-inline.txt");
const CLI20_ON_MODERN: &str = include_str!("fixtures/cli20-modern-plain.txt");

#[test]
fn a_hit_whose_layers_were_downloaded_counts_as_cached() {
    let progress = read_all(MODERN_REBUILD);
    assert_eq!(progress.format(), Some(Format::RawJson));
    assert_eq!(progress.step_count(), 9);
    assert_eq!(progress.cached(), 9, "{:?}", progress.ran());
    assert!(progress.ran_so_far().is_empty());
    assert!(progress.stages_that_ran("runtime").is_empty());
    assert_eq!(
        progress.imported(),
        ["127.0.0.1:5077/acme/five-stage:buildcache"]
    );
    // The capture holds the download round that made the plain printer say `DONE`: the last
    // step's vertex started and completed again, uncached, with the five layers of the image.
    let text = readable(MODERN_REBUILD);
    let last = text
        .lines()
        .find(|l| l.ends_with("[runtime 2/2] COPY --from=compile-b /out/b /app/b"))
        .and_then(|l| l.split_once(' '))
        .map(|(number, _)| number.to_string())
        .unwrap();
    let said: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{last} ")))
        .collect();
    assert_eq!(said.get(1), Some(&"CACHED"), "{said:?}");
    assert!(said.last().unwrap().starts_with("DONE "), "{said:?}");
    assert_eq!(said.iter().filter(|l| l.starts_with("sha256:")).count(), 5);
}

#[test]
fn one_object_per_line_reads_the_same_as_indented_objects() {
    let mut compact = String::new();
    let mut values =
        serde_json::Deserializer::from_str(MODERN_REBUILD).into_iter::<serde_json::Value>();
    while let Some(Ok(value)) = values.next() {
        compact.push_str(&value.to_string());
        compact.push('\n');
    }
    let (one, many) = (read_all(&compact), read_all(MODERN_REBUILD));
    assert_eq!(one.steps(), many.steps());
    assert!(compact.lines().count() < MODERN_REBUILD.lines().count() / 10);
}

#[test]
fn steps_that_ran_after_parents_from_the_registry_cache_count_as_run() {
    // compile-b's source changed: its two steps and the runtime's copy of it ran; `base 3/3`
    // and `runtime 1/2` came from the cache and had their layers downloaded for them.
    for output in [MODERN_CHANGED, CLASSIC_CHANGED] {
        let progress = read_all(output);
        assert_eq!(
            ran_starts(&progress),
            [
                "[compile-b 1/2] COPY b",
                "[compile-b 2/2] RUN sleep 1 && mkdir -p",
                "[runtime 2/2] COPY --from=compile-b"
            ]
        );
        assert_eq!(names(progress.ran_so_far()), progress.ran());
        assert_eq!(
            progress.stages_that_ran("runtime"),
            BTreeSet::from(["compile-b".to_string(), "runtime".to_string()])
        );
        assert_eq!(progress.cached(), 6);
        let ran = progress.steps().into_iter().filter(|s| !s.cached);
        assert!(
            ran.clone().all(|s| s.seconds > 0.0),
            "{:?}",
            ran.collect::<Vec<_>>()
        );
    }
}

#[test]
fn the_classic_engine_downloads_inside_the_load_and_says_cached() {
    let progress = read_all(CLASSIC_INLINE);
    assert_eq!((progress.step_count(), progress.cached()), (9, 9));
    assert_eq!(
        progress.image_id.as_deref(),
        Some("sha256:d1f6a9e9f7680a6ff757eef9821e93b718735981275a8d26f11f3c9db25a36db")
    );
    // Its plain printer, on another fresh agent, said the same.
    let plain = read_all(CLASSIC_PLAIN);
    assert_eq!(plain.format(), Some(Format::Plain));
    assert_eq!(names(plain.steps()).len(), 9);
    assert_eq!(plain.cached(), 9);
    assert_eq!(plain.image_id, progress.image_id);
}

#[test]
fn a_failed_step_keeps_its_error_and_its_output() {
    let progress = read_all(MODERN_FAILED);
    assert_eq!(
        progress.errors(),
        [
            r#"[work 2/2] RUN test "1" = 0 || (echo boom; exit 3): process "/bin/sh -c test \"$FAIL\" = 0 || (echo boom; exit 3)" did not complete successfully: exit code: 3"#
        ]
    );
    assert_eq!(progress.failed_stage().as_deref(), Some("work"));
    assert_eq!(progress.cached(), 3);
    // Known to have run: the step that succeeded; the failed one only once the build ended.
    assert_eq!(
        names(progress.ran_so_far()),
        [r#"[work 1/2] RUN echo "working 2" && echo "second line""#]
    );
    assert_eq!(progress.ran().len(), 2);
    let text = readable(MODERN_FAILED);
    let line = |end: &str| text.lines().any(|l| l.ends_with(end));
    assert!(
        line(" working 2") && line(" second line") && line(" boom"),
        "{text}"
    );
    assert!(line("ERROR: process \"/bin/sh -c test \\\"$FAIL\\\" = 0 || (echo boom; exit 3)\" did not complete successfully: exit code: 3"), "{text}");
    // The CLI's own summary comes through as the text it is.
    assert!(
        text.ends_with("ERROR: failed to solve: process \"/bin/sh -c test \\\"$FAIL\\\" = 0 || (echo boom; exit 3)\" did not complete successfully: exit code: 3\n"),
        "{text}"
    );
}

#[test]
fn a_from_is_never_known_to_have_run_before_the_build_ends() {
    // Its image is resolved uncached, and its result was never loaded; the steps after it
    // came from the cache, which were made on that very image: so it counts as from the cache
    // too, and it changed nothing.
    let progress = read_all(MODERN_FROM_IMAGE);
    assert_eq!((progress.step_count(), progress.cached()), (3, 3));
    assert!(progress.ran_so_far().is_empty());
    assert!(progress.ran().is_empty());
    assert!(progress.stages_that_ran("stage-0").is_empty());
}

#[test]
fn a_from_counts_as_from_a_cache_when_a_later_step_of_its_stage_came_from_one() {
    let plain = |lines: &[&str]| read_all(&lines.join("\n"));
    let stages = |p: &BuildProgress| p.stages_that_ran("runtime").into_iter().collect::<Vec<_>>();
    // dockerd 20.10's plain printer on a fresh agent: `chef`'s FROM resolved, its WORKDIR a
    // hit; the runtime's FROM alone, with nothing after it from a cache.
    let progress = plain(&[
        "#5 [chef 1/2] FROM 127.0.0.1:5000/library/rust@sha256:4418",
        "#5 DONE 0.0s",
        "#6 [runtime 1/2] FROM 127.0.0.1:5000/library/debian@sha256:7524",
        "#6 DONE 2.4s",
        "#7 [chef 2/2] WORKDIR /app",
        "#7 CACHED",
        "#8 [runtime 2/2] COPY --from=chef /app /app",
        "#8 DONE 0.1s",
    ]);
    assert_eq!(stages(&progress), ["runtime"]);
    // The counts say so too (chef's FROM and WORKDIR), as the report and the events print them.
    assert_eq!((progress.cached(), progress.step_count()), (2, 4));
    assert_eq!(
        progress.ran(),
        [
            "[runtime 1/2] FROM 127.0.0.1:5000/library/debian@sha256:7524",
            "[runtime 2/2] COPY --from=chef /app /app"
        ]
    );
    // A hit of the same stage on another platform proves nothing about this platform's image.
    let progress = plain(&[
        "#5 [linux/amd64 chef 1/2] FROM 127.0.0.1:5000/library/rust@sha256:4418",
        "#5 DONE 0.0s",
        "#6 [linux/arm64 chef 1/2] FROM 127.0.0.1:5000/library/rust@sha256:4418",
        "#6 DONE 0.0s",
        "#7 [linux/amd64 chef 2/2] WORKDIR /app",
        "#7 CACHED",
        "#8 [linux/arm64 chef 2/2] WORKDIR /app",
        "#8 DONE 0.0s",
    ]);
    assert_eq!(stages(&progress), ["chef"]);
    assert_eq!((progress.cached(), progress.step_count()), (2, 4));
    let progress = plain(&[
        "#5 [linux/amd64 chef 1/2] FROM 127.0.0.1:5000/library/rust@sha256:4418",
        "#5 DONE 0.0s",
        "#7 [linux/amd64 chef 2/2] WORKDIR /app",
        "#7 CACHED",
    ]);
    assert!(stages(&progress).is_empty());
    // In a Dockerfile of one unnamed stage too.
    let progress = plain(&[
        "#5 [1/2] FROM 127.0.0.1:5000/library/bb:1",
        "#5 DONE 0.0s",
        "#7 [2/2] RUN true",
        "#7 CACHED",
    ]);
    assert!(stages(&progress).is_empty());
}

#[test]
fn plain_progress_cannot_tell_a_downloaded_hit_and_counts_it_as_run() {
    // The Docker 28 CLI's plain printer on dockerd 26: `#14 ... done` download lines, then
    // `DONE 0.1s`, no `CACHED`, for the hit the rawjson captures show as one.
    let progress = read_all(MODERN_PLAIN_LOST);
    assert_eq!(progress.step_count(), 9);
    assert_eq!(
        progress.ran(),
        ["[runtime 2/2] COPY --from=compile-b /out/b /app/b"]
    );
    assert_eq!(names(progress.ran_so_far()), progress.ran());
    // The 20.10 CLI on dockerd 26 loses it too: `base 1/3` came from the inline cache (its one
    // layer downloaded), the rest ran (that engine's keys differ from the 20.10 engine's).
    let progress = read_all(CLI20_ON_MODERN);
    assert_eq!((progress.step_count(), progress.cached()), (9, 0));
    assert!(
        CLI20_ON_MODERN.contains("#11 [base 1/3] COPY busybox /bin/busybox\n#11 sha256:2965e56e")
    );
}

/// rawjson messages for one vertex, as BuildKit's solver sends them (moby/buildkit
/// solver/jobs.go `notifyStarted`, util/progress/controller): none of the engines here printed
/// these sequences, so they are written by hand.
fn vertex(digest: &str, fields: &str) -> String {
    format!(
        "{{\"vertexes\": [{{\"digest\": \"sha256:{digest}\", \"name\": \"[compile 2/2] RUN make\"{fields}}}]}}"
    )
}

const INPUTS: &str = ", \"inputs\": [\"sha256:0\"]";
const START: &str = ", \"started\": \"2026-12-02T05:47:13.4Z\"";
const END: &str = ", \"completed\": \"2026-12-02T05:47:13.6Z\"";

#[test]
fn a_failed_cache_load_then_an_execution_counts_as_run() {
    // solver/edge.go: a failed load drops the cache record, and the op is executed.
    let mut progress = BuildProgress::default();
    let cached = ", \"cached\": true";
    for fields in [
        format!("{INPUTS}{START}{cached}"),
        format!("{INPUTS}{START}{END}{cached}, \"error\": \"failed to load cache: not found\""),
    ] {
        assert!(!progress.read(&vertex("a", &fields)).ran);
    }
    assert!(progress
        .read(&vertex("a", &format!("{INPUTS}{START}")))
        .text
        .is_empty());
    assert!(
        progress
            .read(&vertex("a", &format!("{INPUTS}{START}{END}")))
            .ran
    );
    assert_eq!(progress.ran(), ["[compile 2/2] RUN make"]);
    assert!(
        progress.errors().is_empty(),
        "the load's error is not the build's"
    );
}

#[test]
fn a_download_round_is_no_execution() {
    let mut progress = BuildProgress::default();
    let reading = progress.read(&vertex(
        "b",
        &format!("{INPUTS}{START}{END}, \"cached\": true"),
    ));
    assert_eq!(reading.text, ["#1 [compile 2/2] RUN make", "#1 CACHED"]);
    // The downloads' controller sends no inputs.
    let reading = progress.read(&vertex("b", &format!("{START}{END}")));
    assert_eq!(reading.text, ["#1 DONE 0.2s"]);
    assert!(!reading.ran);
    assert_eq!(progress.cached(), 1);
    // Without a load before it, an uncached completion without inputs tells nothing yet.
    let mut progress = BuildProgress::default();
    assert!(!progress.read(&vertex("c", &format!("{START}{END}"))).ran);
    assert_eq!((progress.step_count(), progress.cached()), (1, 0));
}

#[test]
fn a_canceled_vertex_beside_another_of_its_step_is_no_step_of_its_own() {
    // dockerd 26, the workspace's two images built at once on one agent (tests/rust.rs): the
    // api build's progress showed the worker's `[deps 3/3]` started and canceled (#12), then
    // its own vertex of that step loaded from the cache (#19).
    let canceled = ", \"error\": \"context canceled\"";
    let mut progress = BuildProgress::default();
    for line in [
        vertex("w", &format!("{INPUTS}{START}")),
        vertex("w", &format!("{INPUTS}{START}{END}{canceled}")),
        vertex("a", &format!("{INPUTS}{START}{END}, \"cached\": true")),
    ] {
        assert!(!progress.read(&line).ran);
    }
    assert_eq!((progress.step_count(), progress.cached()), (1, 1));
    assert!(progress.stages_that_ran("runtime").is_empty());

    // Alone, a canceled step counts as run: nothing says it came from a cache.
    let mut alone = BuildProgress::default();
    alone.read(&vertex("w", &format!("{INPUTS}{START}{END}{canceled}")));
    assert_eq!((alone.step_count(), alone.cached()), (1, 0));

    // The plain printer's words for the same.
    let plain = read_all(
        "#12 [deps 3/3] RUN cargo chef cook\n#12 CANCELED\n#19 [deps 3/3] RUN cargo chef cook\n#19 CACHED\n",
    );
    assert_eq!((plain.step_count(), plain.cached()), (1, 1));
    let plain = read_all("#12 [deps 3/3] RUN cargo chef cook\n#12 CANCELED\n");
    assert_eq!((plain.step_count(), plain.cached()), (1, 0));
}

#[test]
fn a_run_known_during_the_build_is_not_taken_back() {
    // Neither form prints a hit after its execution; should one ever, the decision made on the
    // way stands.
    let mut progress = BuildProgress::default();
    assert!(
        progress
            .read(&vertex("d", &format!("{INPUTS}{START}{END}")))
            .ran
    );
    progress.read(&vertex(
        "d",
        &format!("{INPUTS}{START}{END}, \"cached\": true"),
    ));
    assert_eq!(progress.cached(), 0);
    let mut progress = BuildProgress::default();
    for line in ["#9 [compile 2/2] RUN make", "#9 DONE 0.5s", "#9 CACHED"] {
        progress.feed(line);
    }
    assert_eq!(progress.ran(), ["[compile 2/2] RUN make"]);
    // A plain `FROM` is resolved (`DONE`) before its image may be loaded (`CACHED`).
    let mut progress = BuildProgress::default();
    for line in [
        "#5 [base 1/3] FROM docker.io/library/rust:1.82",
        "#5 DONE 0.1s",
    ] {
        assert!(!progress.read(line).ran, "{line}");
    }
    progress.feed("#5 CACHED");
    assert_eq!(progress.cached(), 1);
}

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
    let names =
        |p: &BuildProgress| -> Vec<String> { p.ran_so_far().into_iter().map(|s| s.name).collect() };
    // Started: it may yet come from the cache.
    progress.feed("#9 [compile 3/5] RUN sleep 2");
    assert!(names(&progress).is_empty());
    progress.feed("#9 CACHED");
    assert!(names(&progress).is_empty());
    progress.feed("#10 [compile 4/5] COPY src ./src");
    assert!(progress.read("#10 DONE 0.0s").ran);
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
        vec!["[compile 2/2] RUN false: executor failed running [/bin/sh -c false]: exit code: 1"]
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
    assert_eq!(
        stage("[linux/arm64 compile 2/5] RUN x"),
        Some(Some("compile".into())),
        "the platform of a multi-platform build is not part of the stage"
    );
    assert_eq!(stage("[linux/arm64 2/3] RUN x"), Some(None));
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
fn reads_a_missing_registry_cache_from_rawjson() {
    // The cold build of the rebuild fixture's project on dockerd 26 (no cache yet): its one
    // message with an error, as buildx printed it (here on one line).
    let line = r#"{"vertexes": [{"digest": "sha256:493a0a0286565f34b9ccd3f60dd732282c2cb5d7bab402b72380e2690772c9a7", "name": "importing cache manifest from 127.0.0.1:5077/acme/five-stage:buildcache", "started": "2026-12-02T05:46:46.000330221Z", "completed": "2026-12-02T05:46:46.01368851Z", "error": "failed to configure registry cache importer: 127.0.0.1:5077/acme/five-stage:buildcache: not found"}, {"digest": "sha256:c0dd02679b115d95b467a13cb21c7790d18e47a56cc33627e48dcfc2970f421b", "name": "[internal] load build context", "started": "2026-12-02T05:46:46.013964931Z"}]}"#;
    let mut progress = BuildProgress::default();
    progress.feed(line);
    assert!(progress.imported().is_empty());
    assert!(progress.imports()[0]
        .error
        .as_deref()
        .unwrap()
        .ends_with(": not found"));
    assert!(progress.errors().is_empty());
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

#[test]
fn reads_the_digest_a_build_that_pushed_printed() {
    let text = readable(include_str!("fixtures/modern-rawjson-zstd-push.json"));
    assert_eq!(
        pushed_manifest(&text, "127.0.0.1:5055/x/y:mount-t-main").as_deref(),
        Some("sha256:59bb5995dbb88bf478000022f2bc1b7ceec5c48e6228e3c6c571c72f3d6f1e45")
    );
    // Another image, or a build that pushed nothing: no digest.
    assert_eq!(pushed_manifest(&text, "127.0.0.1:5055/x/y:other"), None);
    assert_eq!(
        pushed_manifest(&readable(MODERN_CHANGED), "127.0.0.1:5055/x/y:mount-t-main"),
        None
    );
}

#[test]
fn rawjson_log_lines_written_in_pieces_are_shown_whole() {
    // cargo under dockerd 26 (buildx 0.13's rawjson): `   Compiling` and ` syn v2.0.119\n`
    // came in two log messages; a last piece without a newline is shown when its step ends.
    let log = |data: &str, at: &str| {
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD.encode(data);
        format!(
            r#"{{"logs": [{{"vertex": "sha256:c", "stream": 1, "data": "{data}", "timestamp": "2026-12-02T05:46:4{at}.0Z"}}]}}"#
        )
    };
    let mut progress = BuildProgress::default();
    let started = r#"{"vertexes": [{"digest": "sha256:c", "name": "[deps 3/3] RUN cargo chef cook", "inputs": ["sha256:b"], "started": "2026-12-02T05:46:40.0Z"}]}"#;
    let mut text = progress.read(started).text;
    for (data, at) in [
        ("   Compiling", "1"),
        (" syn v2.0.119\n   Compiling serde", "2"),
        (" v1.0.228\nwarning", "3"),
    ] {
        text.extend(progress.read(&log(data, at)).text);
    }
    let done = r#"{"vertexes": [{"digest": "sha256:c", "name": "[deps 3/3] RUN cargo chef cook", "inputs": ["sha256:b"], "started": "2026-12-02T05:46:40.0Z", "completed": "2026-12-02T05:46:44.0Z"}]}"#;
    text.extend(progress.read(done).text);
    assert_eq!(
        text,
        [
            "#1 [deps 3/3] RUN cargo chef cook",
            "#1 2.000    Compiling syn v2.0.119",
            "#1 3.000    Compiling serde v1.0.228",
            "#1 warning",
            "#1 DONE 4.0s",
        ]
    );
}

//! The branch boundary end to end, on fresh agents and a real registry: a build of a branch
//! other than the default one, with `--push-cache-only` and with `--push`, leaves the digest
//! of every tag the default branch's builds read (its cache tags, its registry cache, its
//! markers) as it was, with inline cache on the classic engine and with a registry cache on
//! the modern one; with `trust-all-branches = true` it writes them. Digests are the registry's
//! own (its HTTP API), never the tool's output.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use support::{example, tool, Run};

fn ok(run: Run) -> Run {
    run.assert_ok();
    run
}

/// The example service with `table` as the last keys of its `[package.metadata.docker]` and
/// `stages` as its stages, whatever the example's own are.
fn service(
    tools: &testbed::Tools,
    registry: &testbed::Registry,
    table: &str,
    stages: &str,
) -> PathBuf {
    let manifest = example("service", tools, registry);
    let text = std::fs::read_to_string(&manifest).unwrap();
    let head = text
        .split("[package.metadata.docker.stages]")
        .next()
        .unwrap()
        .trim_end();
    std::fs::write(
        &manifest,
        format!("{head}\n{table}\n\n[package.metadata.docker.stages]\n{stages}\n"),
    )
    .unwrap();
    manifest
}

/// The digest of every tag of `acme/service` that matches `read` (the tags the default
/// branch's builds read), by tag, as the registry tells.
fn read_digests(
    registry: &testbed::Registry,
    read: impl Fn(&str) -> bool,
) -> BTreeMap<String, String> {
    registry
        .tags("acme/service")
        .unwrap()
        .into_iter()
        .filter(|t| read(t))
        .map(|t| {
            let digest = registry.manifest_digest("acme/service", &t).unwrap();
            (t, digest.expect("a tag the registry lists has a manifest"))
        })
        .collect()
}

/// A fresh agent's build of `branch` with `push` (`--push` or `--push-cache-only`).
fn build(
    tools: &testbed::Tools,
    engine: &testbed::Engine,
    manifest: &Path,
    push: &str,
    branch: &str,
) -> Run {
    ok(tool(
        &tools.cli28,
        engine,
        &[
            "build",
            "--manifest-path",
            manifest.to_str().unwrap(),
            push,
            "--branch",
            branch,
        ],
    ))
}

/// The boundary for one cache mode: `table` configures it, `shared` tells the tags the default
/// branch's builds read (markers aside), `modern` picks the engine.
fn a_feature_branch_leaves_what_the_default_branch_reads(
    tools: &testbed::Tools,
    table: &str,
    shared: &[&str],
    modern: bool,
) {
    let fresh = || {
        if modern {
            tools.modern_engine().unwrap()
        } else {
            tools.engine().unwrap()
        }
    };
    let registry = tools.registry().unwrap();
    let stages = "compile = \"compile\"\nruntime = \"dev\"";
    let manifest = service(tools, &registry, table, stages);
    let reads = |t: &str| shared.contains(&t) || t.starts_with("inputs-");

    let main = fresh();
    build(tools, &main, &manifest, "--push", "main");
    main.stop();
    let before = read_digests(&registry, reads);
    for tag in shared {
        assert!(
            before.contains_key(*tag),
            "the default branch wrote `{tag}`: {before:?}"
        );
    }
    assert_eq!(
        before.keys().filter(|t| t.starts_with("inputs-")).count(),
        1,
        "the default branch's marker: {before:?}"
    );

    // The branch changes what the compile stage makes: had it pushed the shared tags, their
    // digests would change.
    let source = manifest.with_file_name("src").join("main.rs");
    std::fs::write(&source, "fn main() { println!(\"a branch's change\"); }\n").unwrap();
    for push in ["--push-cache-only", "--push"] {
        let agent = fresh();
        let run = build(tools, &agent, &manifest, push, "feature/x");
        agent.stop();
        assert_eq!(
            read_digests(&registry, reads),
            before,
            "`{push}` on a feature branch left every tag the default branch reads as it was"
        );
        for tag in shared {
            assert!(
                run.stderr
                    .contains(&format!("`{}/acme/service:{tag}`", registry.addr())),
                "the warning names `{tag}`:\n{}",
                run.stderr
            );
        }
        assert!(run.stderr.contains("trust-all-branches"), "{}", run.stderr);
    }
    // `--push` published the branch's final tag: the job asked for it.
    let latest = registry.manifest_digest("acme/service", "latest").unwrap();
    assert_ne!(latest, None);

    // With the opt-in, the branch's build writes the shared tags.
    let trusting = service(
        tools,
        &registry,
        &format!("{table}\ntrust-all-branches = true"),
        stages,
    );
    std::fs::write(
        trusting.with_file_name("src").join("main.rs"),
        std::fs::read(&source).unwrap(),
    )
    .unwrap();
    let agent = fresh();
    build(tools, &agent, &trusting, "--push-cache-only", "feature/x");
    agent.stop();
    let after = read_digests(&registry, reads);
    for tag in shared {
        assert_ne!(
            after.get(*tag),
            before.get(*tag),
            "with `trust-all-branches`, the branch wrote `{tag}`"
        );
    }
}

#[test]
fn inline_cache_a_feature_branch_leaves_the_default_branch_s_tags_alone() {
    let Some(tools) = testbed::require() else {
        return;
    };
    a_feature_branch_leaves_what_the_default_branch_reads(&tools, "", &["compile", "dev"], false);
}

#[test]
fn registry_cache_a_feature_branch_leaves_the_default_branch_s_cache_alone() {
    let Some(tools) = testbed::require_modern() else {
        return;
    };
    a_feature_branch_leaves_what_the_default_branch_reads(
        &tools,
        "cache = \"registry\"\nprovenance = false",
        &["buildcache"],
        true,
    );
}

/// The default branch's build reads only its own tags: the shared ones, which only it writes,
/// and its own branch's; never another branch's, even one that exists in the registry.
#[test]
fn the_default_branch_reads_only_its_own_tags() {
    let Some(tools) = testbed::require() else {
        return;
    };
    let registry = tools.registry().unwrap();
    let manifest = service(
        &tools,
        &registry,
        "",
        "compile = \"compile-{branch}\"\nruntime = \"dev\"",
    );
    let agent = tools.engine().unwrap();
    build(&tools, &agent, &manifest, "--push-cache-only", "feature/x");
    agent.stop();
    assert!(registry
        .manifest_digest("acme/service", "compile-feature-x")
        .unwrap()
        .is_some());
    let agent = tools.engine().unwrap();
    let run = ok(tool(
        &tools.cli28,
        &agent,
        &[
            "build",
            "--manifest-path",
            manifest.to_str().unwrap(),
            "--push",
            "--branch",
            "main",
            "--message-format",
            "json",
        ],
    ));
    agent.stop();
    let reads: Vec<String> = support::events(&run)
        .iter()
        .filter(|e| e["reason"] == "plan")
        .flat_map(|e| e["steps"].as_array().cloned().unwrap_or_default())
        .filter(|s| s["kind"] == "build")
        .flat_map(|s| s["detail"]["reads"].as_array().cloned().unwrap_or_default())
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert!(!reads.is_empty(), "{}", run.stdout);
    for r in &reads {
        assert!(
            r.ends_with(":compile-main") || r.ends_with(":dev"),
            "the default branch read `{r}`"
        );
    }
    // And every step of its stages ran: nothing came from the branch's cache.
    for (stage, steps, cached) in support::stage_counts(&run) {
        assert!(
            cached == 0,
            "stage {stage}: {cached}/{steps} cached, from a cache the default branch must not read"
        );
    }
}

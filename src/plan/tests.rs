use std::collections::BTreeMap;

use expect_test::expect;

use super::shell::quote;
use super::*;
use crate::config::testing::config;
use crate::config::{CacheMode, Config, PushCache, Secret};

const SERVICE: &str = "\
FROM scratch AS toolchain
COPY busybox /bin/busybox
FROM toolchain AS compile
RUN make
FROM toolchain AS runtime
COPY --from=compile /out /out
";

/// The values of a build of the default branch (`main`, as `Options::new` assumes it).
fn vars() -> Vars {
    Vars {
        version: "0.3.1".into(),
        git_sha: Some("0123456789abcdef".into()),
        branch: Some("main".into()),
    }
}

/// A build of the branch `feature/x`.
fn feature(config: Config, dockerfile: &str) -> Input {
    on_branch(config, dockerfile, Some("feature/x"))
}

fn on_branch(config: Config, dockerfile: &str, branch: Option<&str>) -> Input {
    Input {
        vars: Vars {
            branch: branch.map(str::to_string),
            ..vars()
        },
        ..input(config, dockerfile)
    }
}

fn feature_shell(config: Config, dockerfile: &str, options: &Options) -> String {
    plan(&[feature(config, dockerfile)], options)
        .unwrap()
        .to_shell()
}

pub(crate) fn input(config: Config, dockerfile: &str) -> Input {
    Input {
        package: Package::resolve(config, dockerfile).unwrap(),
        vars: vars(),
        labels: BTreeMap::new(),
        sources: None,
    }
}

fn shell(config: Config, dockerfile: &str, options: &Options) -> String {
    plan(&[input(config, dockerfile)], options)
        .unwrap()
        .to_shell()
}

fn options(push: Push, pull_first: bool) -> Options {
    Options {
        push,
        pull_first,
        ..Options::new("docker")
    }
}

#[test]
fn quotes_only_what_a_shell_would_misread() {
    assert_eq!(quote("--progress=plain"), "--progress=plain");
    assert_eq!(quote("a b"), "'a b'");
    assert_eq!(quote("it's"), "'it'\\''s'");
    assert_eq!(quote(""), "''");
    assert_eq!(quote("$HOME"), "'$HOME'");
}

#[test]
fn final_target_first_then_the_stage_caches() {
    let config = config(
        &[("compile", "compile"), ("runtime", "dev")],
        &["{version}", "latest"],
    );
    expect![[r#"
        # package `service`
        docker manifest inspect -v registry.example/acme/service:dev  # whether the registry holds this cache image decides the skips below
        docker manifest inspect -v registry.example/acme/service:compile  # whether the registry holds this cache image decides the skips below
        DOCKER_BUILDKIT=1 docker build --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --target runtime --cache-from registry.example/acme/service:dev --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:dev --tag registry.example/acme/service:0.3.1 --tag registry.example/acme/service:latest -f /src/service/Dockerfile /src/service
        docker pull registry.example/acme/service:compile  # only when a step of stages `compile`, `toolchain` ran and the registry holds it: the rebuilt image keeps the cache keys of the steps that came from it (moby/buildkit#1981)
        DOCKER_BUILDKIT=1 docker build --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --target compile --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:compile -f /src/service/Dockerfile /src/service  # skipped when nothing in it ran and the registry holds its cache
        docker push registry.example/acme/service:compile  # skipped when nothing in it ran and the registry holds it
        docker push registry.example/acme/service:dev  # skipped when nothing in it ran and the registry holds it
        docker push registry.example/acme/service:0.3.1
        docker push registry.example/acme/service:latest
    "#]]
    .assert_eq(&shell(config, SERVICE, &options(Push::All, false)));
}

#[test]
fn pulls_first_when_asked_and_pushes_only_when_asked() {
    let config = config(&[("compile", "compile")], &["latest"]);
    expect![[r#"
        # package `service`
        docker pull registry.example/acme/service:compile || true  # a missing cache image means no cache yet
        docker pull registry.example/acme/service:runtime || true  # a missing cache image means no cache yet
        docker manifest inspect -v registry.example/acme/service:compile  # whether the registry holds this cache image decides the skips below
        DOCKER_BUILDKIT=1 docker build --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --target runtime --cache-from registry.example/acme/service:runtime --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:runtime --tag registry.example/acme/service:latest -f /src/service/Dockerfile /src/service
        docker pull registry.example/acme/service:compile  # only when a step of stages `compile`, `toolchain` ran and the registry holds it: the rebuilt image keeps the cache keys of the steps that came from it (moby/buildkit#1981)
        DOCKER_BUILDKIT=1 docker build --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --target compile --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:compile -f /src/service/Dockerfile /src/service  # skipped when nothing in it ran and the registry holds its cache
    "#]]
    .assert_eq(&shell(config, SERVICE, &options(Push::Nothing, true)));
}

#[test]
fn branch_caches_fall_back_to_the_default_branch() {
    let config = config(
        &[
            ("compile", "compile-{branch}"),
            ("runtime", "runtime-{branch}"),
        ],
        &["latest"],
    );
    let text = feature_shell(config.clone(), SERVICE, &options(Push::CacheOnly, false));
    expect![[r#"
        # package `service`
        docker manifest inspect -v registry.example/acme/service:runtime-feature-x  # whether the registry holds this cache image decides the skips below
        docker manifest inspect -v registry.example/acme/service:compile-feature-x  # whether the registry holds this cache image decides the skips below
        docker manifest inspect -v registry.example/acme/service:compile-main  # the default branch's cache, which this branch falls back to: a missing one is warned of
        docker manifest inspect -v registry.example/acme/service:runtime-main  # the default branch's cache, which this branch falls back to: a missing one is warned of
        DOCKER_BUILDKIT=1 docker build --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --target runtime --cache-from registry.example/acme/service:runtime-feature-x --cache-from registry.example/acme/service:runtime-main --cache-from registry.example/acme/service:compile-feature-x --cache-from registry.example/acme/service:compile-main --tag registry.example/acme/service:runtime-feature-x --tag registry.example/acme/service:latest -f /src/service/Dockerfile /src/service
        docker pull registry.example/acme/service:compile-feature-x  # only when a step of stages `compile`, `toolchain` ran and the registry holds it: the rebuilt image keeps the cache keys of the steps that came from it (moby/buildkit#1981)
        DOCKER_BUILDKIT=1 docker build --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --target compile --cache-from registry.example/acme/service:compile-feature-x --cache-from registry.example/acme/service:compile-main --tag registry.example/acme/service:compile-feature-x -f /src/service/Dockerfile /src/service  # skipped when nothing in it ran and the registry holds its cache
        docker push registry.example/acme/service:compile-feature-x  # skipped when nothing in it ran and the registry holds it
        docker push registry.example/acme/service:runtime-feature-x  # skipped when nothing in it ran and the registry holds it
    "#]]
    .assert_eq(&text);
    assert!(
        !text.contains("push registry.example/acme/service:compile-main"),
        "a feature branch never writes the default branch's cache"
    );
    assert!(
        !text.contains("push registry.example/acme/service:latest"),
        "--push-cache-only publishes no final tag"
    );

    // A detached HEAD (a tag build) reads the default branch's cache and writes no branch tag.
    let detached = Input {
        vars: Vars {
            branch: None,
            ..vars()
        },
        ..input(config, SERVICE)
    };
    let text = plan(&[detached], &options(Push::All, false))
        .unwrap()
        .to_shell();
    assert!(
        text.contains("--cache-from registry.example/acme/service:compile-main"),
        "{text}"
    );
    assert!(
        !text.contains("--target compile"),
        "no branch tag to write, so no stage build:\n{text}"
    );
    assert!(
        !text.contains("push registry.example/acme/service:compile")
            && !text.contains("push registry.example/acme/service:runtime"),
        "{text}"
    );
}

/// Every tag a plan writes to the registry: pushed, exported, or pushed by the build itself.
fn written(plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    for step in &plan.steps {
        match &step.action {
            Action::Push(p) => out.push(p.image.clone()),
            Action::Mark { marker } => out.push(marker.clone()),
            Action::Mount(m) if m.kind != MountKind::Restore => out.push(m.image.clone()),
            Action::Build(b) => {
                out.extend(b.exports.clone());
                if b.pushes {
                    out.extend(b.writes.clone());
                    out.extend(b.finals.clone());
                }
            }
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Every cache ref a plan's builds read.
fn read(plan: &Plan) -> Vec<String> {
    let mut out: Vec<String> = plan
        .steps
        .iter()
        .flat_map(|s| match &s.action {
            Action::Build(b) => b.reads.clone(),
            Action::Mount(m) if m.kind == MountKind::Restore => vec![m.image.clone()],
            _ => vec![],
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

const SHARED: &[(&str, &str)] = &[("compile", "compile"), ("runtime", "dev")];

#[test]
fn the_default_branch_reads_only_its_own_tags_and_writes_them() {
    let config = config(
        &[("compile", "compile-{branch}"), ("runtime", "dev")],
        &["latest"],
    );
    let input = Input {
        sources: Some("f00d".into()),
        ..input(config, SERVICE)
    };
    let planned = plan(&[input], &options(Push::All, false)).unwrap();
    assert_eq!(
        read(&planned),
        [
            "registry.example/acme/service:compile-main",
            "registry.example/acme/service:dev"
        ],
        "its own branch's tags and the shared ones, which only it writes"
    );
    let writes = written(&planned);
    assert!(
        writes.contains(&"registry.example/acme/service:dev".to_string())
            && writes.contains(&"registry.example/acme/service:compile-main".to_string())
            && writes.iter().any(|w| w.contains(":inputs-")),
        "{writes:?}"
    );
    assert!(planned.warnings.is_empty(), "{:?}", planned.warnings);
    // The default branch named by the key, or detected by the run (here `master`, from
    // `origin/HEAD`), is the default branch as well.
    let master = Options {
        default_branch: crate::git::DefaultBranch {
            name: "master".into(),
            source: crate::git::DefaultSource::OriginHead,
        },
        ..options(Push::All, false)
    };
    let mut keyed = crate::config::testing::config(SHARED, &["latest"]);
    let on_master = plan(
        &[on_branch(keyed.clone(), SERVICE, Some("master"))],
        &master,
    )
    .unwrap();
    assert!(on_master.warnings.is_empty(), "{:?}", on_master.warnings);
    assert!(written(&on_master).contains(&"registry.example/acme/service:compile".to_string()));
    keyed.default_branch = Some("trunk".into());
    let not_default = plan(
        &[on_branch(keyed.clone(), SERVICE, Some("master"))],
        &master,
    )
    .unwrap();
    assert!(
        !written(&not_default).contains(&"registry.example/acme/service:compile".to_string()),
        "the key wins over the run's detection"
    );
    assert!(
        not_default.warnings[0]
            .1
            .contains("`trunk` (from the `default-branch` key)"),
        "{:?}",
        not_default.warnings
    );
    let on_trunk = plan(&[on_branch(keyed, SERVICE, Some("trunk"))], &master).unwrap();
    assert!(written(&on_trunk).contains(&"registry.example/acme/service:compile".to_string()));
}

#[test]
fn a_feature_branch_writes_only_its_own_tags() {
    let config = config(SHARED, &["latest"]);
    let marked = |config: Config| Input {
        sources: Some("f00d".into()),
        ..feature(config, SERVICE)
    };
    let cache_only = plan(&[marked(config.clone())], &options(Push::CacheOnly, false)).unwrap();
    expect![[r#"
        # package `service`
        # warning: package `service`: this build (branch `feature/x`) does not push `registry.example/acme/service:compile` (stage `compile`), `registry.example/acme/service:dev` (stage `runtime`): the builds of the default branch `main` (assumed: no `default-branch` key, CI variable or `origin/HEAD` names one) read them, and only they write them
        #   note: scope each to the branch, so that this branch keeps a cache of its own: `compile = "compile-{branch}"` under `stages`, `runtime = "dev-{branch}"` under `stages`; or, if every branch's builds may write what the default branch's builds read, set `trust-all-branches = true` (see the README's Security section)
        DOCKER_BUILDKIT=1 docker build --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --target runtime --cache-from registry.example/acme/service:dev --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:latest -f /src/service/Dockerfile /src/service
    "#]]
    .assert_eq(&cache_only.to_shell());
    assert!(written(&cache_only).is_empty());
    // With `--push`: the final tag is published (the job asked for it), but no shared cache
    // tag, and no marker: the registry check is the default branch's.
    let all = plan(&[marked(config.clone())], &options(Push::All, false)).unwrap();
    assert_eq!(written(&all), ["registry.example/acme/service:latest"]);
    assert!(
        all.steps.iter().all(|s| !s.is_question()),
        "{}",
        all.to_shell()
    );
    assert_eq!(all.warnings.len(), 1);
    // A final tag that is also a tag the default branch reads is not pushed either.
    let dev = plan(
        &[marked(crate::config::testing::config(
            SHARED,
            &["dev", "latest"],
        ))],
        &options(Push::All, false),
    )
    .unwrap();
    assert_eq!(written(&dev), ["registry.example/acme/service:latest"]);
    assert!(
        dev.warnings[0]
            .1
            .contains("`registry.example/acme/service:dev` (a final tag)"),
        "{:?}",
        dev.warnings
    );
    // A branch whose name renders a tag into a marker's name writes no marker that way.
    let forged = crate::config::testing::config(&[("compile", "{branch}")], &["latest"]);
    let forged = plan(
        &[on_branch(forged, SERVICE, Some("inputs-2c6dbeacc5728269"))],
        &options(Push::All, false),
    )
    .unwrap();
    assert!(
        written(&forged).iter().all(|w| !w.contains(":inputs-")),
        "{:?}",
        written(&forged)
    );
    // A run that pushes nothing writes nothing to the registry: it tags as before.
    let local = plan(&[marked(config)], &options(Push::Nothing, false)).unwrap();
    assert!(local.warnings.is_empty());
    assert!(local
        .to_shell()
        .contains("--tag registry.example/acme/service:compile"));
}

#[test]
fn a_detached_head_writes_no_shared_tag_and_no_branch_tag() {
    let config = config(
        &[("compile", "compile-{branch}"), ("runtime", "dev")],
        &["latest"],
    );
    let options = Options {
        no_branch: Some(crate::git::NoBranch::Detached),
        ..options(Push::All, false)
    };
    let detached = Input {
        sources: Some("f00d".into()),
        ..on_branch(config.clone(), SERVICE, None)
    };
    let planned = plan(&[detached], &options).unwrap();
    expect![[r##"
        # package `service`
        # warning: package `service`: this build (no branch: a detached HEAD) does not push `registry.example/acme/service:dev` (stage `runtime`): the builds of the default branch `main` (assumed: no `default-branch` key, CI variable or `origin/HEAD` names one) read it, and only they write it
        #   note: scope it to the branch, so that this branch keeps a cache of its own: `runtime = "dev-{branch}"` under `stages`; or, if every branch's builds may write what the default branch's builds read, set `trust-all-branches = true` (see the README's Security section); a build of the default branch names it with `--branch`
        # warning: package `service`: this build has no branch (git is on a detached HEAD, and neither `--branch` nor a CI variable names a branch), so it does not write `registry.example/acme/service:compile-{branch}` (stage `compile`): it is read from the default branch `main` (assumed: no `default-branch` key, CI variable or `origin/HEAD` names one) only
        #   note: pass `--branch NAME` to build as a branch, or build from a branch's checkout
        docker manifest inspect -v registry.example/acme/service:compile-main  # the default branch's cache, which this branch falls back to: a missing one is warned of
        DOCKER_BUILDKIT=1 docker build --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --target runtime --cache-from registry.example/acme/service:dev --cache-from registry.example/acme/service:compile-main --tag registry.example/acme/service:latest -f /src/service/Dockerfile /src/service
        docker push registry.example/acme/service:latest
    "##]]
    .assert_eq(&planned.to_shell());
    let no_commit = Options {
        no_branch: Some(crate::git::NoBranch::NoCommit),
        ..options
    };
    let planned = plan(&[on_branch(config, SERVICE, None)], &no_commit).unwrap();
    assert!(
        planned.warnings[1]
            .1
            .contains("git names no commit (not a git checkout, or no commit yet)"),
        "{:?}",
        planned.warnings
    );
}

#[test]
fn trust_all_branches_lets_a_feature_branch_write_the_shared_tags() {
    let mut config = config(SHARED, &["latest"]);
    config.trust_all_branches = true;
    let marked = Input {
        sources: Some("f00d".into()),
        ..feature(config.clone(), SERVICE)
    };
    let planned = plan(&[marked], &options(Push::All, false)).unwrap();
    let writes = written(&planned);
    for tag in ["compile", "dev", "latest"] {
        let image = format!("registry.example/acme/service:{tag}");
        assert!(writes.contains(&image), "{image}: {writes:?}");
    }
    assert!(writes.iter().any(|w| w.contains(":inputs-")), "{writes:?}");
    assert!(planned.warnings.is_empty(), "{:?}", planned.warnings);
    // The registry cache and the cache mounts alike.
    let mut registry = config.clone();
    registry.cache = CacheMode::Registry;
    for (trust, exported) in [(true, true), (false, false)] {
        registry.trust_all_branches = trust;
        let text = feature_shell(registry.clone(), SERVICE, &options(Push::CacheOnly, false));
        assert_eq!(
            text.contains("--cache-to type=registry,ref=registry.example/acme/service:buildcache"),
            exported,
            "{text}"
        );
    }
}

#[test]
fn a_cache_mount_whose_tag_is_shared_is_exported_only_by_the_default_branch() {
    let dockerfile = "\
FROM rust@sha256:0000000000000000000000000000000000000000000000000000000000000000 AS build
RUN --mount=type=cache,id=target,target=/app/target --mount=type=cache,id=reg,target=/reg cargo build
";
    let mut config = config(&[("build", "build-{branch}")], &["latest"]);
    let tag = Template::parse("shared-target", Placeholder::FOR_CACHE_TAGS).unwrap();
    config.cache_mounts = crate::config::CacheMounts::Chosen(
        [("target".to_string(), Some(tag)), ("reg".to_string(), None)].into(),
    );
    let exports = |input: Input| -> Vec<String> {
        plan(&[input], &options(Push::CacheOnly, false))
            .unwrap()
            .steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Mount(m) if m.kind == MountKind::Export => Some(m.image.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        exports(feature(config.clone(), dockerfile)),
        ["registry.example/acme/service:mount-reg-feature-x"]
    );
    assert_eq!(
        exports(input(config.clone(), dockerfile)),
        [
            "registry.example/acme/service:shared-target",
            "registry.example/acme/service:mount-reg-main"
        ]
    );
    let warnings = plan(
        &[feature(config, dockerfile)],
        &options(Push::CacheOnly, false),
    )
    .unwrap()
    .warnings;
    assert!(
        warnings[0]
            .1
            .contains("`registry.example/acme/service:shared-target` (cache mount `target`)")
            && warnings[0]
                .1
                .contains(r#"`cache-mounts = { "target" = "shared-target-{branch}" }`"#),
        "{warnings:?}"
    );
}

#[test]
fn command_line_args_network_platform_secrets_labels_and_quoting() {
    let mut config = config(&[], &["{git_short_sha}"]);
    config.build_args.insert("NOTE".into(), "two words".into());
    config.build_args.insert("MODE".into(), "debug".into());
    config.network = Some("none".into());
    config.platforms = vec!["linux/amd64".into()];
    config.target = Some("compile".into());
    config.context = "/src/my service".into();
    config
        .secrets
        .insert("npm".into(), Secret::Env("NPM_TOKEN".into()));
    config.secrets.insert(
        "git".into(),
        Secret::File("/home/me/.git-credentials".into()),
    );
    let mut input = input(config, SERVICE);
    input
        .labels
        .insert("org.opencontainers.image.title".into(), "service".into());
    let options = Options {
        build_args: [("MODE".to_string(), "release".to_string())].into(),
        tags: vec!["extra".into()],
        no_cache: true,
        ..Options::new("docker")
    };
    expect![[r#"
        # package `service`
        DOCKER_BUILDKIT=1 docker build --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --no-cache --build-arg MODE=release --build-arg 'NOTE=two words' --network none --platform linux/amd64 --secret id=git,src=/home/me/.git-credentials --secret id=npm,env=NPM_TOKEN --target compile --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:compile --tag registry.example/acme/service:0123456 --tag registry.example/acme/service:extra --label org.opencontainers.image.title=service -f /src/service/Dockerfile '/src/my service'
    "#]]
    .assert_eq(&plan(&[input], &options).unwrap().to_shell());
}

#[test]
fn registry_cache_is_one_buildx_build() {
    let mut config = config(&[], &["latest"]);
    config.cache = CacheMode::Registry;
    config.cache_tag = Template::parse("cache-{branch}", Placeholder::FOR_CACHE_TAGS).unwrap();
    config.platforms = vec!["linux/amd64".into(), "linux/arm64".into()];
    config.provenance = Some("false".into());
    let pushed = feature_shell(config.clone(), SERVICE, &options(Push::All, false));
    expect![[r#"
        # package `service`
        docker manifest inspect -v registry.example/acme/service:cache-main  # the default branch's cache, which this branch falls back to: a missing one is warned of
        docker manifest inspect -v registry.example/acme/service:cache-feature-x  # whether the registry holds this cache image decides the skips below
        docker buildx build --progress=rawjson --platform linux/amd64,linux/arm64 --target runtime --cache-from type=registry,ref=registry.example/acme/service:cache-feature-x --cache-from type=registry,ref=registry.example/acme/service:cache-main --tag registry.example/acme/service:latest --provenance=false --push -f /src/service/Dockerfile /src/service
        docker manifest inspect -v registry.example/acme/service:latest  # the layers of the image just pushed: with the registry cache's, they decide whether the export below runs
        docker buildx build --progress=rawjson --platform linux/amd64,linux/arm64 --target runtime --cache-from type=registry,ref=registry.example/acme/service:cache-feature-x --cache-from type=registry,ref=registry.example/acme/service:cache-main --cache-to type=registry,ref=registry.example/acme/service:cache-feature-x,mode=max,image-manifest=true,oci-mediatypes=true --output type=cacheonly -f /src/service/Dockerfile /src/service  # exports the registry cache; skipped when no step ran and the registry cache holds every layer of `registry.example/acme/service:latest`; may start once a step is seen to run
    "#]]
    .assert_eq(&pushed);
    config.platforms.clear();
    config.push_cache = PushCache::BestEffort;
    let local = feature_shell(
        config,
        SERVICE,
        &Options {
            builder: Some("remote".into()),
            ..options(Push::CacheOnly, false)
        },
    );
    expect![[r#"
        # package `service`
        docker manifest inspect -v registry.example/acme/service:cache-main  # the default branch's cache, which this branch falls back to: a missing one is warned of
        docker buildx build --builder remote --progress=rawjson --target runtime --cache-from type=registry,ref=registry.example/acme/service:cache-feature-x --cache-from type=registry,ref=registry.example/acme/service:cache-main --cache-to type=registry,ref=registry.example/acme/service:cache-feature-x,mode=max,image-manifest=true,oci-mediatypes=true,ignore-error=true --tag registry.example/acme/service:latest --provenance=false --load -f /src/service/Dockerfile /src/service
        docker manifest inspect -v registry.example/acme/service:cache-feature-x  # whether the best-effort cache export wrote the cache
    "#]]
    .assert_eq(&local);
}

#[test]
fn the_registry_cache_export_waits_for_the_build_where_a_step_uses_a_cache_mount() {
    let mut config = config(&[], &["latest"]);
    config.cache = CacheMode::Registry;
    let mounted = SERVICE.replacen("RUN ", "RUN --mount=type=cache,target=/root/.cache ", 1);
    assert_ne!(mounted, SERVICE);
    let export_line = |dockerfile: &str| {
        shell(config.clone(), dockerfile, &options(Push::All, false))
            .lines()
            .find(|l| l.contains("--output type=cacheonly"))
            .map(|l| l.split_once("  # ").unwrap().1.to_string())
            .unwrap()
    };
    assert!(
        export_line(SERVICE).ends_with("may start once a step is seen to run"),
        "{}",
        export_line(SERVICE)
    );
    assert!(
        export_line(&mounted).ends_with(
            "starts once the build has ended: a step of it uses a cache mount, which a second run would change"
        ),
        "{}",
        export_line(&mounted)
    );
}

#[test]
fn a_build_the_registry_may_hold_is_checked_first_and_marked_last() {
    let marked = |config: Config, options: &Options| {
        let input = Input {
            sources: Some("f00d".into()),
            ..input(config, SERVICE)
        };
        plan(&[input], options).unwrap()
    };
    let config = config(&[("compile", "compile")], &["latest"]);
    let all = options(Push::All, false);
    let inline = marked(config.clone(), &all);
    expect![[r#"
        # package `service`
        docker manifest inspect -v registry.example/acme/service:inputs-2c6dbeacc5728269224877564410c2ca9dab2eebdf92ba311f44e4a292b8f5e2  # the registry check: when it and every final tag hold the same image, no other step of the package runs
        docker manifest inspect -v registry.example/acme/service:latest  # a final tag, which must hold the marker's image
        docker manifest inspect -v registry.example/acme/service:runtime  # whether the registry holds this cache image decides the skips below
        docker manifest inspect -v registry.example/acme/service:compile  # whether the registry holds this cache image decides the skips below
        DOCKER_BUILDKIT=1 docker build --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --target runtime --cache-from registry.example/acme/service:runtime --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:runtime --tag registry.example/acme/service:latest --tag registry.example/acme/service:inputs-2c6dbeacc5728269224877564410c2ca9dab2eebdf92ba311f44e4a292b8f5e2 -f /src/service/Dockerfile /src/service
        docker pull registry.example/acme/service:compile  # only when a step of stages `compile`, `toolchain` ran and the registry holds it: the rebuilt image keeps the cache keys of the steps that came from it (moby/buildkit#1981)
        DOCKER_BUILDKIT=1 docker build --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --target compile --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:compile -f /src/service/Dockerfile /src/service  # skipped when nothing in it ran and the registry holds its cache
        docker push registry.example/acme/service:compile  # skipped when nothing in it ran and the registry holds it
        docker push registry.example/acme/service:runtime  # skipped when nothing in it ran and the registry holds it
        docker push registry.example/acme/service:latest
        docker push registry.example/acme/service:inputs-2c6dbeacc5728269224877564410c2ca9dab2eebdf92ba311f44e4a292b8f5e2
    "#]]
    .assert_eq(&inline.to_shell());
    // The package's steps wait for the registry check's questions (the marker and the final
    // tag); the questions that decide single skips wait for nothing; the marker's push waits
    // for every step.
    let role_of = |step: &Step| match &step.action {
        Action::Inspect(inspect) => Some(inspect.role),
        _ => None,
    };
    assert_eq!(
        inline.steps[..2].iter().map(role_of).collect::<Vec<_>>(),
        [Some(Role::Marker), Some(Role::Final)]
    );
    let last = inline.steps.len() - 1;
    for step in &inline.steps[2..last] {
        match role_of(step) {
            Some(role) => assert!(role == Role::Cache && step.after.is_empty(), "{step:?}"),
            None => assert!(
                step.after.contains(&0) && step.after.contains(&1),
                "{step:?}"
            ),
        }
    }
    assert_eq!(inline.steps[last].after, (2..last).collect::<Vec<_>>());
    let marker_of = |plan: &Plan| {
        plan.steps
            .iter()
            .find_map(|s| match &s.action {
                Action::Inspect(i) if i.role == Role::Marker => Some(i.image.clone()),
                _ => None,
            })
            .unwrap_or_default()
    };
    let first = marker_of(&inline);
    // Pinned, outside the snapshot that `UPDATE_EXPECT` rewrites: a change here changes every
    // user's marker, so that every registry check misses once. Make it on purpose (the
    // `build v2` field of the hash says which rules made a marker), never by renaming a
    // display name.
    assert_eq!(
        first,
        "registry.example/acme/service:inputs-2c6dbeacc5728269224877564410c2ca9dab2eebdf92ba311f44e4a292b8f5e2"
    );
    // How the CLI prints progress is for display: a CLI without rawjson names the same build.
    // The client that builds is not: an older CLI builds through the classic client, which
    // leaves out buildx's defaults, so its marker is another; every other question stays.
    let cli = |build_through_buildx, rawjson| Options {
        cli: Cli {
            build_through_buildx,
            rawjson,
            containerd_store: false,
        },
        ..all.clone()
    };
    let plain = marked(config.clone(), &cli(true, false));
    assert_eq!(marker_of(&plain), first);
    assert!(plain.to_shell().contains("--progress=plain") && !plain.to_shell().contains("rawjson"));
    let classic = marked(config.clone(), &cli(false, false));
    assert_ne!(marker_of(&classic), first);
    let questions = |plan: &Plan| -> Vec<(usize, Vec<String>)> {
        plan.steps
            .iter()
            .filter(|s| s.is_question() && !s.args.iter().any(|a| a.contains(":inputs-")))
            .map(|s| (s.id, s.args.clone()))
            .collect()
    };
    assert_eq!(questions(&plain), questions(&inline));
    assert_eq!(questions(&classic), questions(&inline));

    // What builds: another engine, a named builder, a CLI setting, each another marker; the
    // same facts, the same marker.
    let with_facts = |facts: Facts| Options {
        facts,
        ..all.clone()
    };
    let engine = |fact: &str| Facts {
        engine: Some(fact.into()),
        ..Facts::default()
    };
    let amd64 = marker_of(&marked(
        config.clone(),
        &with_facts(engine("linux/amd64 20.10.24")),
    ));
    assert_ne!(amd64, first, "a known engine against none");
    assert_eq!(
        marker_of(&marked(
            config.clone(),
            &with_facts(engine("linux/amd64 20.10.24"))
        )),
        amd64
    );
    for other in [
        engine("linux/arm64 20.10.24"),
        engine("linux/amd64 26.1.5"),
        Facts {
            builder: Some(None),
            ..engine("linux/amd64 20.10.24")
        },
        Facts {
            builder: Some(Some("docker-container v0.13.2 linux/amd64".into())),
            ..engine("linux/amd64 20.10.24")
        },
        Facts {
            env: vec![("SOURCE_DATE_EPOCH".into(), "1700000000".into())],
            ..engine("linux/amd64 20.10.24")
        },
    ] {
        let marker = marker_of(&marked(config.clone(), &with_facts(other.clone())));
        assert_ne!(marker, amd64, "{other:?} is not in the marker");
    }

    // Another checkout folder is the same build; other sources, args or tags are not.
    let mut moved = config.clone();
    moved.dockerfile = "/elsewhere/service/Dockerfile".into();
    moved.context = "/elsewhere/service".into();
    moved.manifest_dir = "/elsewhere/service".into();
    assert_eq!(marker_of(&marked(moved, &all)), first);
    let mut arg = config.clone();
    arg.build_args.insert("PROFILE".into(), "release".into());
    assert_ne!(marker_of(&marked(arg, &all)), first);
    let tagged = Options {
        tags: vec!["v2".into()],
        ..all.clone()
    };
    assert_ne!(marker_of(&marked(config.clone(), &tagged)), first);
    let other_sources = Input {
        sources: Some("beef".into()),
        ..input(config.clone(), SERVICE)
    };
    let other = plan(&[other_sources], &all).unwrap();
    assert_ne!(marker_of(&other), first);

    // No check where the run must build: no final push, an image wanted in the engine, or
    // every step asked for.
    for options in [
        options(Push::CacheOnly, false),
        Options {
            load: true,
            ..all.clone()
        },
        Options {
            no_cache: true,
            ..all.clone()
        },
    ] {
        let plan = marked(config.clone(), &options);
        assert!(plan.steps.iter().all(|s| !matches!(
            s.action,
            Action::Inspect(Inspect {
                role: Role::Marker,
                ..
            }) | Action::Mark { .. }
        )));
    }

    // `--rebuild`: no check, the same marker pushed at the end.
    let rebuilt = marked(
        config.clone(),
        &Options {
            rebuild: true,
            ..all.clone()
        },
    );
    assert!(rebuilt
        .steps
        .iter()
        .all(|s| !matches!(&s.action, Action::Inspect(i) if i.role.is_lookup())));
    assert!(
        matches!(&rebuilt.steps.last().unwrap().action, Action::Mark { marker } if *marker == first)
    );

    // A build that pushes by itself pushes the marker with the image, and the check asks for
    // the registry cache too.
    let mut registry = config.clone();
    registry.cache = CacheMode::Registry;
    let plan = marked(registry, &all);
    // The check's three questions, the cache's layers, the final build, the pushed image's
    // layers, the export-only build.
    assert_eq!(plan.steps.len(), 7, "{}", plan.to_shell());
    assert!(matches!(
        &plan.steps[2].action,
        Action::Inspect(Inspect { role: Role::Export, image, .. }) if image.ends_with(":buildcache")
    ));
    assert!(matches!(
        &plan.steps[3].action,
        Action::Inspect(Inspect { role: Role::Cache, image, .. }) if image.ends_with(":buildcache")
    ));
    let build = plan.steps[4].to_shell();
    assert!(
        build.contains(
            "--tag registry.example/acme/service:latest --tag registry.example/acme/service:inputs-"
        ) && build.contains(" --push ")
            && !build.contains("--cache-to"),
        "{build}"
    );
    assert!(matches!(
        &plan.steps[5].action,
        Action::Inspect(Inspect { role: Role::Built, image, .. }) if image.ends_with(":latest")
    ));
    assert!(
        plan.steps[5].after.contains(&4),
        "{:?}",
        plan.steps[5].after
    );
    let export = &plan.steps[6];
    assert!(
        matches!(&export.action, Action::Build(b) if b.export_only.as_deref() == Some("registry.example/acme/service:latest") && !b.pushes && b.finals.is_empty()),
        "{}",
        export.to_shell()
    );
    assert!(
        export.after.contains(&4) && export.after.contains(&5),
        "{:?}",
        export.after
    );
    let export = export.to_shell();
    assert!(
        export.contains(
            "--cache-to type=registry,ref=registry.example/acme/service:buildcache,mode=max"
        ) && export.contains("--output type=cacheonly")
            && !export.contains("--tag")
            && !export.contains("--push"),
        "{export}"
    );
    // `--no-cache` keeps the export in the one build: a second build would run every step again.
    let no_cache = marked(
        {
            let mut c = config.clone();
            c.cache = CacheMode::Registry;
            c
        },
        &Options {
            no_cache: true,
            ..all.clone()
        },
    );
    assert_eq!(no_cache.steps.len(), 1, "{}", no_cache.to_shell());
    assert!(no_cache.steps[0].to_shell().contains("--cache-to"));
}

#[test]
fn a_failed_command_names_its_stage() {
    let plan = plan(
        &[input(
            config(&[("compile", "compile")], &["latest"]),
            SERVICE,
        )],
        &options(Push::Nothing, false),
    )
    .unwrap();
    let Some(runtime) = plan.steps.iter().find_map(|s| match &s.action {
        Action::Build(b) if b.is_final => Some(b),
        _ => None,
    }) else {
        panic!("a final build")
    };
    // BuildKit v0.8's and v0.13's words for a failed `RUN make` of `compile`.
    for error in [
        "ERROR: failed to solve: executor failed running [/bin/sh -c make]: exit code: 2",
        "ERROR: failed to solve: process \"/bin/sh -c make\" did not complete successfully: exit code: 2",
    ] {
        assert_eq!(runtime.stage_of_failed_command(error), Some("compile"));
    }
    assert_eq!(runtime.stage_of_failed_command("ERROR: no such file"), None);
}

#[test]
fn a_builder_of_its_own_pushes_from_the_build() {
    let config = config(&[("compile", "compile")], &["latest"]);
    let options = Options {
        builder: Some("k8s".into()),
        ..options(Push::All, false)
    };
    expect![[r#"
        # package `service`
        DOCKER_BUILDKIT=1 docker buildx build --builder k8s --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --target compile --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:compile --push -f /src/service/Dockerfile /src/service
        DOCKER_BUILDKIT=1 docker buildx build --builder k8s --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --target runtime --cache-from registry.example/acme/service:runtime --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:runtime --tag registry.example/acme/service:latest --push -f /src/service/Dockerfile /src/service
    "#]]
    .assert_eq(&shell(config.clone(), SERVICE, &options));

    // The marker goes with the final build's push, so that build must be the last: a stage
    // build that failed after it would leave the marker behind.
    let marked = |config: Config, dockerfile: &str| {
        let input = Input {
            sources: Some("f00d".into()),
            ..input(config, dockerfile)
        };
        plan(&[input], &options).unwrap()
    };
    let plan = marked(config.clone(), SERVICE);
    let builds: Vec<&Step> = plan
        .steps
        .iter()
        .filter(|s| matches!(s.action, Action::Build(_)))
        .collect();
    assert_eq!(builds.len(), 2);
    assert!(builds[1].args.iter().any(|a| a.contains(":inputs-")));
    assert!(builds[1].after.contains(&builds[0].id));
    // Where a cached stage needs the final target, a build follows it: no marker, no skip.
    let mut needs_final = config;
    needs_final.target = Some("runtime".into());
    needs_final.stages.insert(
        "extra".into(),
        Template::parse("extra", Placeholder::FOR_CACHE_TAGS).unwrap(),
    );
    let plan = marked(needs_final, &format!("{SERVICE}FROM runtime AS extra\n"));
    assert!(
        plan.steps
            .iter()
            .all(|s| !s.args.iter().any(|a| a.contains(":inputs-"))),
        "{}",
        plan.to_shell()
    );
}

#[test]
fn steps_wait_for_the_stages_they_need() {
    let five = "\
FROM scratch AS base
FROM base AS compile-a
FROM base AS compile-b
FROM scratch AS tools
FROM base AS runtime
COPY --from=compile-a /a /a
COPY --from=compile-b /b /b
";
    let config = config(
        &[("base", "base"), ("compile-b", "b"), ("compile-a", "a")],
        &["latest"],
    );
    let plan = plan(&[input(config, five)], &options(Push::All, false)).unwrap();
    let summary: Vec<String> = plan
        .steps
        .iter()
        .map(|s| {
            let what = match &s.action {
                Action::Build(b) => format!("build {}", b.stage),
                Action::Push(push) => {
                    format!("push {}", push.image.rsplit(':').next().unwrap())
                }
                Action::Pull(pull) => format!("pull {}", pull.image.rsplit(':').next().unwrap()),
                Action::Mount(m) => format!("{:?} {}", m.kind, m.id),
                Action::Inspect(inspect) => {
                    format!("inspect {}", inspect.image.rsplit(':').next().unwrap())
                }
                Action::Mark { .. } => "mark".to_string(),
            };
            format!("{} {what} after {:?}", s.id, s.after)
        })
        .collect();
    expect![[r#"
        [
            "0 inspect runtime after []",
            "1 inspect base after []",
            "2 inspect a after []",
            "3 inspect b after []",
            "4 build runtime after [0, 1, 2, 3]",
            "5 pull base after [4, 1]",
            "6 build base after [4, 1, 5]",
            "7 push base after [6, 1]",
            "8 pull a after [4, 2]",
            "9 build compile-a after [4, 2, 8]",
            "10 push a after [9, 2]",
            "11 pull b after [4, 3]",
            "12 build compile-b after [4, 3, 11]",
            "13 push b after [12, 3]",
            "14 push runtime after [4, 0]",
            "15 push latest after [4, 14]",
        ]
    "#]]
    .assert_debug_eq(&summary);
    // Every step comes after the steps it needs.
    for step in &plan.steps {
        assert!(step.after.iter().all(|&a| a < step.id));
    }
}

#[test]
fn a_tag_that_cannot_be_filled_names_package_and_stage() {
    let config = config(&[], &["{git_sha}"]);
    let no_git = Input {
        vars: Vars {
            git_sha: None,
            ..vars()
        },
        ..input(config, SERVICE)
    };
    let error = plan(&[no_git], &options(Push::Nothing, false)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "package `service`, key `tags`: `{git_sha}` needs the commit sha, and this is not a git checkout"
    );
}

#[test]
fn an_export_that_can_push_pushes_its_mount_zstd_compressed_with_no_push_step() {
    let dockerfile = "\
FROM rust@sha256:0000000000000000000000000000000000000000000000000000000000000000 AS build
RUN --mount=type=cache,id=target,target=/app/target cargo build --release
";
    let mut config = config(&[], &["latest"]);
    config.cache_mounts =
        crate::config::CacheMounts::Chosen([("target".to_string(), None)].into_iter().collect());
    let exports = |cli: Cli, builder: Option<&str>| -> Vec<(Vec<String>, bool, bool)> {
        let options = Options {
            cli,
            builder: builder.map(str::to_string),
            ..options(Push::All, false)
        };
        let planned = plan(&[feature(config.clone(), dockerfile)], &options).unwrap();
        planned
            .steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Mount(m) if m.kind != MountKind::Restore => {
                    Some((s.args.clone(), m.kind == MountKind::Push, m.pushes))
                }
                _ => None,
            })
            .collect()
    };
    let containerd = Cli {
        containerd_store: true,
        ..Cli::CURRENT
    };
    let output = "type=image,name=registry.example/acme/service:mount-target-feature-x,push=true,compression=zstd,compression-level=1,oci-mediatypes=true";
    for (cli, builder) in [(containerd, None), (Cli::CURRENT, Some("ci"))] {
        let steps = exports(cli, builder);
        assert_eq!(steps.len(), 1, "{builder:?}: no push step: {steps:?}");
        let (args, _, pushes) = &steps[0];
        assert!(pushes);
        let at = args.iter().position(|a| a == "--output").expect("--output");
        assert_eq!(args[at + 1], output);
        assert!(
            !args.iter().any(|a| a == "--tag" || a == "--push"),
            "{args:?}"
        );
    }
    // The classic image store, or the classic client: into the store, then `docker push`.
    let classic_client = Cli {
        build_through_buildx: false,
        ..containerd
    };
    for cli in [Cli::CURRENT, classic_client] {
        let steps = exports(cli, None);
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert!(!steps[0].2 && steps[1].1);
        assert!(steps[0].0.iter().any(|a| a == "--tag"));
        assert!(!steps[0].0.iter().any(|a| a.contains("zstd")));
    }
}

#[test]
fn travelling_cache_mounts_are_restored_before_the_builds_and_exported_after() {
    let dockerfile = "\
FROM rust@sha256:0000000000000000000000000000000000000000000000000000000000000000 AS build
RUN --mount=type=cache,target=/usr/local/cargo/registry,uid=1000 --mount=type=cache,id=target,target=/app/target cargo build --release
FROM debian AS runtime
COPY --from=build /app/bin /bin
";
    let mut config = config(&[], &["latest"]);
    config.cache_mounts =
        crate::config::CacheMounts::Chosen([("target".to_string(), None)].into_iter().collect());
    let text = feature_shell(config.clone(), dockerfile, &options(Push::All, false));
    expect![[r##"
        # package `service`
        # warning: package `service`: this build (branch `feature/x`) does not push `registry.example/acme/service:runtime` (stage `runtime`): the builds of the default branch `main` (assumed: no `default-branch` key, CI variable or `origin/HEAD` names one) read it, and only they write it
        #   note: scope it to the branch, so that this branch keeps a cache of its own: `runtime = "runtime-{branch}"` under `stages`; or, if every branch's builds may write what the default branch's builds read, set `trust-all-branches = true` (see the README's Security section)
        docker manifest inspect -v registry.example/acme/service:mount-target-feature-x  # whether the registry holds this cache image decides the skips below
        DOCKER_BUILDKIT=1 docker build --progress=rawjson --provenance=false --network none --build-arg XTD_RUN=run -f - /src/service <<'XTD'  # the cache mount `target`: only when the engine lacks it and the registry holds this image (the first of its refs it holds)
        FROM rust@sha256:0000000000000000000000000000000000000000000000000000000000000000 AS restore
        ARG BUILDPLATFORM
        ARG TARGETPLATFORM
        ARG TARGETOS
        ARG TARGETARCH
        ARG TARGETVARIANT
        ARG XTD_RUN
        RUN --mount=type=cache,id=target,target=/xtd-mount,sharing=locked --mount=type=cache,id=target-xtask-docker-record,target=/xtd-record,sharing=locked --mount=type=bind,from=registry.example/acme/service:mount-target-feature-x,target=/xtd-seed \
            : 'xtask-docker mount target'; if [ -z "$(ls -A /xtd-mount)" ]; then owner=$(stat -c %u:%g /xtd-mount); mode=$(stat -c %a /xtd-mount); cp -a /xtd-seed/. /xtd-mount/; chown "$owner" /xtd-mount; chmod "$mode" /xtd-mount; rm -f /xtd-record/run; if (cd /xtd-mount && find . -print > /xtd-record/found) && LC_ALL=C sort /xtd-record/found > /xtd-record/files && touch /xtd-record/stamp /xtd-record/tick && find /xtd-record/tick -maxdepth 0 -cnewer /xtd-record/stamp > /dev/null && tar -cf /dev/null --no-recursion --no-unquote --verbatim-files-from -T /dev/null && command -v comm > /dev/null; then until [ -n "$(find /xtd-record/tick -newer /xtd-record/stamp)" ]; do touch /xtd-record/tick; done; echo "$XTD_RUN" > /xtd-record/run; echo xtask-docker-mount-""copied; fi; fi; echo "xtask-docker-mount $(du -sk /xtd-mount | cut -f1) KiB"
        XTD
        docker manifest inspect -v registry.example/acme/service:mount-target-main  # whether the registry holds this cache image decides the skips below
        DOCKER_BUILDKIT=1 docker build --progress=rawjson --provenance=false --network none --build-arg XTD_RUN=run -f - /src/service <<'XTD'  # the cache mount `target`: only when the engine lacks it and the registry holds this image (the first of its refs it holds)
        FROM rust@sha256:0000000000000000000000000000000000000000000000000000000000000000 AS restore
        ARG BUILDPLATFORM
        ARG TARGETPLATFORM
        ARG TARGETOS
        ARG TARGETARCH
        ARG TARGETVARIANT
        ARG XTD_RUN
        RUN --mount=type=cache,id=target,target=/xtd-mount,sharing=locked --mount=type=cache,id=target-xtask-docker-record,target=/xtd-record,sharing=locked --mount=type=bind,from=registry.example/acme/service:mount-target-main,target=/xtd-seed \
            : 'xtask-docker mount target'; if [ -z "$(ls -A /xtd-mount)" ]; then owner=$(stat -c %u:%g /xtd-mount); mode=$(stat -c %a /xtd-mount); cp -a /xtd-seed/. /xtd-mount/; chown "$owner" /xtd-mount; chmod "$mode" /xtd-mount; rm -f /xtd-record/run; if (cd /xtd-mount && find . -print > /xtd-record/found) && LC_ALL=C sort /xtd-record/found > /xtd-record/files && touch /xtd-record/stamp /xtd-record/tick && find /xtd-record/tick -maxdepth 0 -cnewer /xtd-record/stamp > /dev/null && tar -cf /dev/null --no-recursion --no-unquote --verbatim-files-from -T /dev/null && command -v comm > /dev/null; then until [ -n "$(find /xtd-record/tick -newer /xtd-record/stamp)" ]; do touch /xtd-record/tick; done; echo "$XTD_RUN" > /xtd-record/run; echo xtask-docker-mount-""copied; fi; fi; echo "xtask-docker-mount $(du -sk /xtd-mount | cut -f1) KiB"
        XTD
        DOCKER_BUILDKIT=1 docker build --progress=rawjson --build-arg BUILDKIT_INLINE_CACHE=1 --target runtime --cache-from registry.example/acme/service:runtime --tag registry.example/acme/service:latest -f /src/service/Dockerfile /src/service
        docker push registry.example/acme/service:latest
        DOCKER_BUILDKIT=1 docker build --progress=rawjson --provenance=false --network none --build-arg XTD_RUN=run --build-arg XTD_BASE=scratch --tag registry.example/acme/service:mount-target-feature-x -f - /src/service <<'XTD'  # the cache mount `target`: only when a step that uses it ran; where a restore of this run copied it in, only what changed, on top of the copy it read (`XTD_BASE=IMAGE@DIGEST`), else the whole mount; an empty image (a reset) when it is over `cache-mount-limit`
        ARG XTD_BASE=scratch
        FROM rust@sha256:0000000000000000000000000000000000000000000000000000000000000000 AS export
        ARG BUILDPLATFORM
        ARG TARGETPLATFORM
        ARG TARGETOS
        ARG TARGETARCH
        ARG TARGETVARIANT
        ARG XTD_RUN
        ARG XTD_BASE
        RUN --mount=type=cache,id=target,target=/xtd-mount,sharing=locked --mount=type=cache,id=target-xtask-docker-record,target=/xtd-record,sharing=locked \
            : 'xtask-docker mount target'; kib=$(du -sk /xtd-mount | cut -f1); echo "xtask-docker-mount $kib KiB"; mkdir -p /xtd-out /xtd-work; whole() { echo "xtask-docker-mount-""whole: $1"; exit 3; }; if [ "$XTD_BASE" = scratch ]; then if [ "$kib" -le 4194304 ]; then cp -a /xtd-mount/. /xtd-out/; fi; else [ "$kib" -le 4194304 ] || whole 'the mount is past its limit'; [ "$(cat /xtd-record/run 2>/dev/null)" = "$XTD_RUN" ] || whole 'the mount was not restored in this run'; cd /xtd-mount || whole 'no mount'; nl=$(printf '\nx'); nl=${nl%x}; [ -z "$(find . -name "*$nl*" -print)" ] || whole 'a file name holds a line break'; { find . -print > /xtd-work/found && LC_ALL=C sort /xtd-work/found > /xtd-work/files; } || whole 'cannot list the files'; [ -z "$(LC_ALL=C comm -23 /xtd-record/files /xtd-work/files)" ] || whole 'a file was deleted since the restore'; { find . -type d -print && find . ! -type d -cnewer /xtd-record/stamp -print; } > /xtd-work/added || whole 'cannot list what changed'; tar -cf /xtd-work/added.tar --no-recursion --no-unquote --verbatim-files-from -T /xtd-work/added && tar -xf /xtd-work/added.tar -C /xtd-out || whole 'cannot copy what changed'; added=$(du -sk /xtd-out | cut -f1); [ $((added * 2)) -le "$kib" ] || [ "$added" -le 1024 ] || whole 'what changed is more than half of the mount'; echo "xtask-docker-mount-added $added KiB"; fi
        FROM ${XTD_BASE}
        COPY --from=export /xtd-out /
        XTD
        docker push registry.example/acme/service:mount-target-feature-x  # the cache mount `target`: after its export
    "##]]
    .assert_eq(&text);
    let input = || feature(config.clone(), dockerfile);
    let planned = plan(&[input()], &options(Push::All, false)).unwrap();
    let ids = |kind: MountKind| -> Vec<usize> {
        planned
            .steps
            .iter()
            .filter(|s| matches!(&s.action, Action::Mount(m) if m.kind == kind))
            .map(|s| s.id)
            .collect()
    };
    let (restores, exports, pushes) = (
        ids(MountKind::Restore),
        ids(MountKind::Export),
        ids(MountKind::Push),
    );
    assert_eq!((restores.len(), exports.len(), pushes.len()), (2, 1, 1));
    assert!(
        planned.steps[restores[1]].after.contains(&restores[0]),
        "the default branch's copy only after the branch's"
    );
    for step in &planned.steps {
        if matches!(step.action, Action::Build(_)) {
            assert!(
                restores.iter().all(|r| step.after.contains(r)),
                "builds wait for the restores"
            );
            assert!(
                planned.steps[exports[0]].after.contains(&step.id),
                "the export waits for every build"
            );
        }
    }
    assert_eq!(planned.steps[pushes[0]].after, exports);
    // `--no-cache` brings no cache in; a run that pushes nothing writes none; a detached HEAD
    // has no branch to write the branch-scoped tag under.
    let no_cache = Options {
        no_cache: true,
        ..options(Push::All, false)
    };
    let kinds = |plan: &Plan| -> Vec<MountKind> {
        plan.steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Mount(m) => Some(m.kind),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        kinds(&plan(&[input()], &no_cache).unwrap()),
        [MountKind::Export, MountKind::Push]
    );
    assert_eq!(
        kinds(&plan(&[input()], &options(Push::Nothing, false)).unwrap()),
        [MountKind::Restore, MountKind::Restore]
    );
    let detached = Input {
        vars: Vars {
            branch: None,
            ..vars()
        },
        ..input()
    };
    assert_eq!(
        kinds(&plan(&[detached], &options(Push::All, false)).unwrap()),
        [MountKind::Restore]
    );
}

#[test]
fn check_tells_what_the_default_branch_reads_and_what_another_branch_may_write() {
    let mut config = config(
        &[("compile", "compile-{branch}"), ("runtime", "dev")],
        &["latest"],
    );
    let detected = crate::git::DefaultBranch {
        name: "master".into(),
        source: crate::git::DefaultSource::OriginHead,
    };
    let package = Package::resolve(config.clone(), SERVICE).unwrap();
    expect![[r#"
        branch boundary: the default branch is `master` (from `origin/HEAD`)
        the default branch's builds read `registry.example/acme/service:compile-master` (stage `compile`), `registry.example/acme/service:dev` (stage `runtime`), and its markers `registry.example/acme/service:inputs-*`
        a build of another branch writes `registry.example/acme/service:compile-{branch}` (stage `compile`); with `--push` its final tags `registry.example/acme/service:latest` (but none that is a tag above); never a marker
        shared by all branches, so written by the default branch's builds only: `registry.example/acme/service:dev` (stage `runtime`)
    "#]]
    .assert_eq(&trimmed(&describe_boundary(&package, &detected)));
    config.trust_all_branches = true;
    config.default_branch = Some("trunk".into());
    let text = describe_boundary(&Package::resolve(config, SERVICE).unwrap(), &detected);
    assert!(
        text.contains("`trunk` (from the `default-branch` key)")
            && text.contains(
                "`trust-all-branches = true`: a build of any branch writes every one of them"
            ),
        "{text}"
    );
}

/// Each line without its indent (which a snapshot cannot keep at the start).
fn trimmed(text: &str) -> String {
    text.lines().map(|l| format!("{}\n", l.trim())).collect()
}

#[test]
fn a_missing_default_branch_cache_is_told_by_its_pull_or_by_a_question() {
    let config = config(&[("compile", "compile-{branch}")], &["latest"]);
    let fallback_of = |options: &Options| -> (Vec<String>, Vec<String>) {
        let planned = plan(&[feature(config.clone(), SERVICE)], options).unwrap();
        let mut pulls = Vec::new();
        let mut questions = Vec::new();
        for step in &planned.steps {
            match &step.action {
                Action::Pull(p) if p.default_branch.is_some() => pulls.push(p.image.clone()),
                Action::Inspect(i) if i.role == Role::Fallback => {
                    assert!(i.default_branch.as_deref().unwrap().contains("`main`"));
                    questions.push(i.image.clone());
                }
                _ => {}
            }
        }
        (pulls, questions)
    };
    let main = "registry.example/acme/service:compile-main".to_string();
    assert_eq!(
        fallback_of(&options(Push::CacheOnly, false)),
        (vec![], vec![main.clone()])
    );
    assert_eq!(
        fallback_of(&options(Push::CacheOnly, true)),
        (vec![main], vec![]),
        "the pull tells, so no question"
    );
    assert_eq!(
        fallback_of(&options(Push::Nothing, false)),
        (vec![], vec![]),
        "a run that pushes nothing asks nothing"
    );
    // The default branch's own build falls back to nothing.
    let on_main = plan(
        &[input(config.clone(), SERVICE)],
        &options(Push::CacheOnly, true),
    )
    .unwrap();
    assert!(on_main.steps.iter().all(|s| !matches!(
        &s.action,
        Action::Inspect(Inspect {
            role: Role::Fallback,
            ..
        })
    ) && !matches!(&s.action, Action::Pull(p) if p.default_branch.is_some())));
}

//! The steps that carry a package's travelling cache mounts (see `package::TravellingMount`):
//! before its builds, a restore into the engine's mount from the registry; after them, an
//! export of the mount into an image, and its push.
//!
//! Each restore and export is a build of a small generated Dockerfile, given on stdin, that
//! runs in the image the mount's stage starts from, with `--network none`:
//! - the restore mounts the cache (as the package's steps do, by id) and the mount image
//!   (`--mount=type=bind,from=IMAGE`), and copies the image's files into the cache only when
//!   the cache is empty, so that a warm mount is never replaced by an older copy;
//! - the export mounts the cache and copies its files into a `FROM scratch` image, unless they
//!   are more than `cache-mount-limit`: then the image it makes is empty, and its push resets
//!   the travelling copy (the next agent starts the mount empty, and its export is small again).
//!
//! A build argument that names the run (`XTD_RUN`) keeps BuildKit from taking either build's
//! step from its cache: the mount's content is not part of the step's cache key.
//!
//! An export after a restore in the same run adds only what changed: the restore leaves a
//! record in a second cache mount (the files it copied, and a time stamp), and the export puts
//! the files whose status changed since then in a layer on top of the restored copy, named by
//! digest in the build argument `XTD_BASE` (`scratch` in the plan; the run names the copy the
//! restore read, see `exec`). Where that copy cannot be the base (a file was deleted since the
//! restore, what changed is more than half of the mount, the mount is past its limit), the
//! build says so and the run exports the whole mount instead; where the image lacks GNU `find`
//! and `tar`, the copy is of several platforms or has [`MAX_LAYERS`] layers already, it exports
//! the whole mount at once.
//!
//! Where the builder can push from the build (a builder of its own, or the engine's on the
//! containerd image store), the export pushes its image itself, its layer compressed with zstd
//! at level 1: most of an export's time is compression, and gzip's default level took twice as
//! long for rlibs (see the README's cache-mount figures). Else the export goes into the
//! engine's store and `docker push` sends it, with the engine's gzip.

use super::shell::quote;
use super::{Action, Boundary, Input, Options, Plan, Push};
use crate::config::PushCache;
use crate::package::TravellingMount;

/// A step of a travelling cache mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountStep {
    /// The cache's id.
    pub id: String,
    /// Its image: read from (a restore) or written (an export, a push).
    pub image: String,
    /// What the step does.
    pub kind: MountKind,
    /// Where the package's steps see the mount (how the engine's list of mounts names it).
    pub target: String,
    /// The steps that use it: `(stage, the RUN's command)`. An export runs only when one of
    /// them ran.
    pub uses: Vec<(String, String)>,
    /// For an export: the size past which the mount is not exported, in bytes.
    pub limit: u64,
    /// For a push, and an export that pushes: a refused push is a warning.
    pub best_effort: bool,
    /// For an export: it pushes its image itself (no push step follows).
    pub pushes: bool,
}

/// The image output of an export that pushes: one layer compressed with zstd at level 1 (even
/// where the builder would keep another compression), in OCI media types, which zstd needs.
/// Not `force-compression`: an export on top of a restored copy keeps that copy's layers as
/// they are in the registry, whatever their compression.
pub const ZSTD_PUSH: &str = "push=true,compression=zstd,compression-level=1,oci-mediatypes=true";

/// The layers a copy may have (its first, the whole mount, and what later exports added) before
/// an export writes the whole mount again: every restore downloads each layer, and a file that
/// changed in two of them twice.
pub const MAX_LAYERS: usize = 5;

/// The build argument of an export in the plan: its base, `scratch` (the whole mount).
pub const SCRATCH_BASE: &str = "XTD_BASE=scratch";

/// What an export on top of a restored copy prints where that copy cannot be its base, before
/// the reason; the run then exports the whole mount. (The scripts write these words split by
/// `""`, so that the command, which the engine's output shows too, does not hold them.)
pub const WHOLE: &str = "xtask-docker-mount-whole: ";

/// What a restore prints where it copied the image into the mount and left the record an
/// export needs to add only what changed.
pub const COPIED: &str = "xtask-docker-mount-copied";

/// The line a run tells where an export of the mount `id` takes the whole mount, and why.
pub fn exporting_whole(id: &str, why: &str) -> String {
    format!("exporting the whole cache mount `{id}`: {why}")
}

/// The argv of an export with its base named `base` (`IMAGE@sha256:...`) instead of `scratch`.
pub fn on_base(args: &[String], base: &str) -> Vec<String> {
    args.iter()
        .map(|arg| match arg.as_str() {
            SCRATCH_BASE => format!("XTD_BASE={base}"),
            _ => arg.clone(),
        })
        .collect()
}

/// The argv of an export that exports the whole mount (its base `scratch`).
pub fn on_scratch(args: &[String]) -> Vec<String> {
    args.iter()
        .map(|arg| match arg.strip_prefix("XTD_BASE=") {
            Some(_) => SCRATCH_BASE.to_string(),
            None => arg.clone(),
        })
        .collect()
}

/// What a [`MountStep`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    /// Copies the image's files into the engine's mount, if the engine lacks the mount and the
    /// registry holds the image (of the refs read in order, the first it holds).
    Restore,
    /// Copies the mount's files into an image, after a build in which a step that uses it ran.
    Export,
    /// Pushes that image.
    Push,
}

/// The restores of `input`'s travelling mounts (with the questions that decide them), before
/// its builds: returns the steps every build of the package waits for.
pub(super) fn restores(
    plan: &mut Plan,
    input: &Input,
    options: &Options,
    boundary: &Boundary,
) -> anyhow::Result<Vec<usize>> {
    let package = &input.package;
    let config = &package.config;
    let name = &config.package;
    // `--no-cache` trusts no cache, and so brings none in.
    if options.no_cache {
        return Ok(Vec::new());
    }
    let mut restores = Vec::new();
    for mount in &package.mounts {
        let refs = refs(input, mount, boundary)?;
        let mut earlier: Vec<usize> = Vec::new();
        for image in &refs.read {
            let asked = plan.inspect(name, &options.docker, image, super::Role::Cache, vec![]);
            let step = MountStep {
                id: mount.id.clone(),
                image: image.clone(),
                kind: MountKind::Restore,
                target: mount.options.target.clone(),
                uses: uses(input, mount),
                limit: config.cache_mount_limit,
                best_effort: false,
                pushes: false,
            };
            let (args, stdin) = build_args(input, options, &restore_dockerfile(mount, image));
            // A later ref is tried only once the earlier ones are decided.
            let mut after = vec![asked];
            after.extend(&earlier);
            let id = plan.add_with_stdin(name, Action::Mount(step), options, args, stdin, after);
            earlier.push(id);
            restores.push(id);
        }
    }
    Ok(restores)
}

/// The exports of `input`'s travelling mounts and their pushes, after every build planned so
/// far; only where the run writes caches, and only under a tag `boundary` lets it write.
pub(super) fn exports(
    plan: &mut Plan,
    input: &Input,
    options: &Options,
    boundary: &Boundary,
) -> anyhow::Result<()> {
    let package = &input.package;
    let config = &package.config;
    let name = &config.package;
    if options.push == Push::Nothing {
        return Ok(());
    }
    let builds: Vec<usize> = plan
        .steps
        .iter()
        .filter(|s| matches!(s.action, Action::Build(_)))
        .map(|s| s.id)
        .collect();
    let best_effort = options.push == Push::CacheOnly || config.push_cache == PushCache::BestEffort;
    // The classic client (`DOCKER_BUILDKIT=1`) has no image output that pushes.
    let pushes = options.builder.is_some()
        || (options.cli.containerd_store && options.cli.build_through_buildx);
    for mount in &package.mounts {
        let Some(image) = refs(input, mount, boundary)?.write else {
            // A branch-scoped tag without a branch (a detached HEAD) is not written, nor a
            // tag the default branch reads, on another branch.
            continue;
        };
        let step = |kind| MountStep {
            id: mount.id.clone(),
            image: image.clone(),
            kind,
            target: mount.options.target.clone(),
            uses: uses(input, mount),
            limit: config.cache_mount_limit,
            best_effort,
            pushes: pushes && kind == MountKind::Export,
        };
        let (mut args, stdin) = build_args(
            input,
            options,
            &export_dockerfile(mount, config.cache_mount_limit),
        );
        let at = args.len() - 3; // before `-f - CONTEXT`
        args.splice(
            at..at,
            ["--build-arg".to_string(), SCRATCH_BASE.to_string()],
        );
        let at = args.len() - 3;
        let output = if pushes {
            [
                "--output".to_string(),
                format!("type=image,name={image},{ZSTD_PUSH}"),
            ]
        } else {
            ["--tag".to_string(), image.clone()]
        };
        args.splice(at..at, output);
        let export = plan.add_with_stdin(
            name,
            Action::Mount(step(MountKind::Export)),
            options,
            args,
            stdin,
            builds.clone(),
        );
        if !pushes {
            let args = vec!["push".to_string(), image.clone()];
            plan.add(
                name,
                Action::Mount(step(MountKind::Push)),
                &options.docker,
                args,
                vec![],
                vec![export],
            );
        }
    }
    Ok(())
}

/// The refs of `mount`'s image: written under the current branch (where the boundary lets
/// it), read from it and then from the default branch.
fn refs(
    input: &Input,
    mount: &TravellingMount,
    boundary: &Boundary,
) -> anyhow::Result<super::CacheRefs> {
    let config = &input.package.config;
    boundary
        .refs(&mount.tag, &config.cache_image, &input.vars)
        .map_err(|e| {
            anyhow::anyhow!(
                "package `{}`, cache mount `{}`: {e}",
                config.package,
                mount.id
            )
        })
}

fn uses(input: &Input, mount: &TravellingMount) -> Vec<(String, String)> {
    mount
        .uses
        .iter()
        .map(|(stage, command, _)| (input.package.graph.name(*stage), command.clone()))
        .collect()
}

/// The argv of a restore or export build and its stdin: `docker build` (the classic client
/// needs `DOCKER_BUILDKIT=1`, given by `add_with_stdin`), or `docker buildx build` with the
/// builder asked for; `--network none`; the package's platforms, so that the platform args in
/// a mount's id expand as in the package's builds; the Dockerfile on stdin; the package's
/// context, which the generated Dockerfile does not read (BuildKit sends none of it).
fn build_args(input: &Input, options: &Options, dockerfile: &str) -> (Vec<String>, String) {
    let config = &input.package.config;
    let mut args: Vec<String> = match &options.builder {
        Some(builder) => vec![
            "buildx".into(),
            "build".into(),
            "--builder".into(),
            builder.clone(),
        ],
        None => vec!["build".into()],
    };
    args.push(options.cli.progress(options.builder.is_some()).into());
    // buildx would add a provenance attestation to the mount's image: nobody reads it.
    if options.builder.is_some() || options.cli.build_through_buildx {
        args.push("--provenance=false".into());
    }
    args.extend(["--network".into(), "none".into()]);
    if !config.platforms.is_empty() {
        args.extend(["--platform".into(), config.platforms.join(",")]);
    }
    args.extend(["--build-arg".into(), format!("XTD_RUN={}", options.run_id)]);
    args.extend(["-f".into(), "-".into(), super::path(&config.context)]);
    (args, dockerfile.to_string())
}

/// Where the generated builds mount the cache: a path of their own, so that no quoting of the
/// package's target is needed.
pub const MOUNTED: &str = "/xtd-mount";

/// Where they mount the record of the last restore (a cache of its own, see [`record_option`]):
/// `files`, the sorted list of what it copied; `stamp`, a file written after the copy, whose
/// time the export compares with the status change times; `run`, the run's name.
const RECORD: &str = "/xtd-record";

/// The `--mount` option that mounts `mount`'s cache, with the first use's `uid`, `gid` and
/// `mode` (which apply when the cache is created: a restore may create it).
fn cache_option(mount: &TravellingMount) -> String {
    let o = &mount.options;
    let mut fields = vec![
        "type=cache".to_string(),
        csv(&format!("id={}", mount.id)),
        format!("target={MOUNTED}"),
        "sharing=locked".to_string(),
    ];
    for (key, value) in [("uid", &o.uid), ("gid", &o.gid), ("mode", &o.mode)] {
        if let Some(value) = value {
            fields.push(csv(&format!("{key}={value}")));
        }
    }
    fields.join(",")
}

/// The `--mount` option of the record of `mount`'s last restore: a cache of its own, named after
/// the mount's, so that the package's steps never see it.
fn record_option(mount: &TravellingMount) -> String {
    [
        "type=cache".to_string(),
        csv(&format!("id={}-xtask-docker-record", mount.id)),
        format!("target={RECORD}"),
        "sharing=locked".to_string(),
    ]
    .join(",")
}

/// One field of BuildKit's CSV-quoted mount options.
fn csv(field: &str) -> String {
    if field.contains([',', '"']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// The first lines of both generated Dockerfiles: the mount's stage's first image, the
/// platform args a mount's id may use, and the run's name.
fn preamble(mount: &TravellingMount, alias: &str) -> String {
    let platform = match &mount.base_platform {
        Some(platform) => format!("--platform={platform} "),
        None => String::new(),
    };
    format!(
        "FROM {platform}{} AS {alias}\nARG BUILDPLATFORM\nARG TARGETPLATFORM\nARG TARGETOS\nARG TARGETARCH\nARG TARGETVARIANT\nARG XTD_RUN\n",
        mount.base
    )
}

/// `: 'xtask-docker mount ID'`: a no-op that names the mount in the step's command, which the
/// engine's list of mounts shows.
fn named(mount: &TravellingMount) -> String {
    format!(": {}", quote(&format!("xtask-docker mount {}", mount.id)))
}

/// The restore of `mount` from `image`. `cp -a` of the seed's `.` would also give the mount's
/// own folder the owner and mode of the image's root: they are put back as BuildKit made them
/// (with the mount's `uid`, `gid` and `mode`), so that a non-root step can still write.
///
/// After the copy it writes the record (see [`RECORD`]), where the image has what an export
/// needs to add only what changed (GNU `find -cnewer` and `tar -T`, `comm`):
/// the list of files, then the stamp, then it waits until the clock has passed the stamp's
/// time (a few milliseconds at most: file times tick coarsely), so that every later change has
/// a later status change time than the stamp.
fn restore_dockerfile(mount: &TravellingMount, image: &str) -> String {
    let record = [
        format!("rm -f {RECORD}/run"),
        format!("if (cd {MOUNTED} && find . -print > {RECORD}/found) && LC_ALL=C sort {RECORD}/found > {RECORD}/files && touch {RECORD}/stamp {RECORD}/tick && find {RECORD}/tick -maxdepth 0 -cnewer {RECORD}/stamp > /dev/null && tar -cf /dev/null --no-recursion --no-unquote --verbatim-files-from -T /dev/null && command -v comm > /dev/null"),
        format!("then until [ -n \"$(find {RECORD}/tick -newer {RECORD}/stamp)\" ]; do touch {RECORD}/tick; done"),
        format!("echo \"$XTD_RUN\" > {RECORD}/run; echo xtask-docker-mount-\"\"copied; fi"),
    ]
    .join("; ");
    format!(
        "{}RUN --mount={} --mount={} --mount=type=bind,{},target=/xtd-seed \\\n    {}; if [ -z \"$(ls -A {MOUNTED})\" ]; then owner=$(stat -c %u:%g {MOUNTED}); mode=$(stat -c %a {MOUNTED}); cp -a /xtd-seed/. {MOUNTED}/; chown \"$owner\" {MOUNTED}; chmod \"$mode\" {MOUNTED}; {record}; fi; echo \"xtask-docker-mount $(du -sk {MOUNTED} | cut -f1) KiB\"\n",
        preamble(mount, "restore"),
        cache_option(mount),
        record_option(mount),
        csv(&format!("from={image}")),
        named(mount),
    )
}

/// The export of `mount`, unless it is more than `limit` bytes: on `scratch`, the whole mount;
/// on a restored copy (`XTD_BASE`), the files whose status changed since the restore's stamp,
/// with every folder (so that each keeps its owner and mode in the new layer). Where the copy
/// cannot be the base, it prints [`WHOLE`] and a reason, and fails.
fn export_dockerfile(mount: &TravellingMount, limit: u64) -> String {
    let limit = limit / 1024;
    let whole = "whole() { echo \"xtask-docker-mount-\"\"whole: $1\"; exit 3; }";
    let added = [
        format!("[ \"$(cat {RECORD}/run 2>/dev/null)\" = \"$XTD_RUN\" ] || whole 'the mount was not restored in this run'"),
        format!("cd {MOUNTED} || whole 'no mount'"),
        "nl=$(printf '\\nx'); nl=${nl%x}".to_string(),
        "[ -z \"$(find . -name \"*$nl*\" -print)\" ] || whole 'a file name holds a line break'".to_string(),
        "{ find . -print > /xtd-work/found && LC_ALL=C sort /xtd-work/found > /xtd-work/files; } || whole 'cannot list the files'".to_string(),
        format!("[ -z \"$(LC_ALL=C comm -23 {RECORD}/files /xtd-work/files)\" ] || whole 'a file was deleted since the restore'"),
        format!("{{ find . -type d -print && find . ! -type d -cnewer {RECORD}/stamp -print; }} > /xtd-work/added || whole 'cannot list what changed'"),
        "tar -cf /xtd-work/added.tar --no-recursion --no-unquote --verbatim-files-from -T /xtd-work/added && tar -xf /xtd-work/added.tar -C /xtd-out || whole 'cannot copy what changed'".to_string(),
        "added=$(du -sk /xtd-out | cut -f1)".to_string(),
        "[ $((added * 2)) -le \"$kib\" ] || [ \"$added\" -le 1024 ] || whole 'what changed is more than half of the mount'".to_string(),
        "echo \"xtask-docker-mount-added $added KiB\"".to_string(),
    ]
    .join("; ");
    format!(
        "ARG XTD_BASE=scratch\n{}ARG XTD_BASE\nRUN --mount={} --mount={} \\\n    {}; kib=$(du -sk {MOUNTED} | cut -f1); echo \"xtask-docker-mount $kib KiB\"; mkdir -p /xtd-out /xtd-work; {whole}; if [ \"$XTD_BASE\" = scratch ]; then if [ \"$kib\" -le {limit} ]; then cp -a {MOUNTED}/. /xtd-out/; fi; else [ \"$kib\" -le {limit} ] || whole 'the mount is past its limit'; {added}; fi\nFROM ${{XTD_BASE}}\nCOPY --from=export /xtd-out /\n",
        preamble(mount, "export"),
        cache_option(mount),
        record_option(mount),
        named(mount),
    )
}

/// The size a restore or export printed, in bytes.
pub fn printed_size(output: &str) -> Option<u64> {
    printed(output, "xtask-docker-mount ")
}

/// What an export on top of a restored copy added to it, in bytes.
pub fn printed_added(output: &str) -> Option<u64> {
    printed(output, "xtask-docker-mount-added ")
}

fn printed(output: &str, what: &str) -> Option<u64> {
    output.lines().rev().find_map(|line| {
        let rest = &line[line.find(what)? + what.len()..];
        let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024)
    })
}

//! The contenders: what each one runs, as argv lists, on which engine, in which scenarios.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use clap::ValueEnum;
use serde::Serialize;
use testbed::Flavor;

use super::fixture::{self, Clone, Fixture, FixtureName, Variant};
use super::Scenario;

/// One way of getting the fixture's final image built and pushed (or, for the floors, fetched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Contender {
    /// The hand-written script on the classic engine.
    SeedClassic,
    /// The hand-written script on the modern engine.
    SeedModern,
    /// `xtask-docker docker build --push`, inline cache, classic engine.
    ToolClassic,
    /// The same with `cache = "registry"` and `provenance = false`, modern engine.
    ToolRegistry,
    /// `tool-registry` with `cache-mounts = true`, on the fixture's cache-mount Dockerfile
    /// (`target/` and cargo's registry in `RUN --mount=type=cache`), modern engine.
    ToolMounts,
    /// `tool-classic` with `--rebuild`: through a build even where the registry holds it (as
    /// after a commit that changes only the image's revision label).
    ToolClassicRebuild,
    /// `tool-registry` with `--rebuild`.
    ToolRegistryRebuild,
    /// One `docker buildx build --push` reading the tool's inline caches, classic engine.
    BestClassic,
    /// One `docker buildx build --push` reading the tool's registry cache, modern engine.
    BestModern,
    /// `docker pull` of the final image on a fresh classic engine.
    Floor,
    /// `docker manifest inspect` of the final tag: the registry round trips alone.
    FloorManifest,
    /// One `docker buildx build --push` of the final target, no cache: the cold lower bound.
    SingleBuildkit,
    /// The same on the modern engine, against which the tool with a registry cache is measured.
    SingleModern,
    /// `single-modern` that also reads and writes a registry cache, as the tool's build does: the
    /// best hand-written command for the tool's cold result, so the tool's own cost shows.
    SingleModernCache,
    /// One `docker buildx bake --push` of every service of a workspace, each target reading
    /// every service's registry cache and writing its own: the best hand-written command for a
    /// workspace's images, modern engine.
    BakeModern,
}

/// Every contender, in report order.
pub const ALL: [Contender; 15] = [
    Contender::SeedClassic,
    Contender::SeedModern,
    Contender::ToolClassic,
    Contender::ToolRegistry,
    Contender::ToolMounts,
    Contender::ToolClassicRebuild,
    Contender::ToolRegistryRebuild,
    Contender::BestClassic,
    Contender::BestModern,
    Contender::SingleBuildkit,
    Contender::SingleModern,
    Contender::SingleModernCache,
    Contender::BakeModern,
    Contender::Floor,
    Contender::FloorManifest,
];

/// `--contender` values; some name a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContenderArg {
    /// The hand-written script on both engines.
    SeedScript,
    /// The hand-written script on the classic engine.
    SeedClassic,
    /// The hand-written script on the modern engine.
    SeedModern,
    /// The tool, inline cache, classic engine.
    ToolClassic,
    /// The tool, registry cache, modern engine.
    ToolRegistry,
    /// The tool, registry cache and travelling cache mounts, modern engine (Rust fixtures).
    ToolMounts,
    /// The tool on both engines with `--rebuild` (warm only).
    ToolRebuild,
    /// The best one-command BuildKit build on both engines.
    BestBuildkit,
    /// The best one-command BuildKit build on the classic engine.
    BestClassic,
    /// The best one-command BuildKit build on the modern engine.
    BestModern,
    /// `docker pull` of the final image, and `docker manifest inspect` of its tag.
    Floor,
    /// One BuildKit build of the final target without caches, on both engines (cold,
    /// five-stage only).
    SingleBuildkit,
    /// One `docker buildx bake` of a workspace's services with registry caches, modern engine.
    Bake,
    /// The tool's own overhead: `--dry-run` against `cargo metadata`.
    Overhead,
}

impl ContenderArg {
    /// The contenders it names (none for `overhead`).
    pub fn expand(self) -> &'static [Contender] {
        match self {
            ContenderArg::SeedScript => &[Contender::SeedClassic, Contender::SeedModern],
            ContenderArg::SeedClassic => &[Contender::SeedClassic],
            ContenderArg::SeedModern => &[Contender::SeedModern],
            ContenderArg::ToolClassic => &[Contender::ToolClassic],
            ContenderArg::ToolRegistry => &[Contender::ToolRegistry],
            ContenderArg::ToolMounts => &[Contender::ToolMounts],
            ContenderArg::ToolRebuild => &[
                Contender::ToolClassicRebuild,
                Contender::ToolRegistryRebuild,
            ],
            ContenderArg::BestBuildkit => &[Contender::BestClassic, Contender::BestModern],
            ContenderArg::BestClassic => &[Contender::BestClassic],
            ContenderArg::BestModern => &[Contender::BestModern],
            ContenderArg::Floor => &[Contender::Floor, Contender::FloorManifest],
            ContenderArg::SingleBuildkit => &[
                Contender::SingleBuildkit,
                Contender::SingleModern,
                Contender::SingleModernCache,
            ],
            ContenderArg::Bake => &[Contender::BakeModern],
            ContenderArg::Overhead => &[],
        }
    }
}

impl Contender {
    /// Its short name, also the registry namespace of its images.
    pub fn id(self) -> &'static str {
        match self {
            Contender::SeedClassic => "seed-classic",
            Contender::SeedModern => "seed-modern",
            Contender::ToolClassic => "tool-classic",
            Contender::ToolRegistry => "tool-registry",
            Contender::ToolMounts => "tool-mounts",
            Contender::ToolClassicRebuild => "tool-classic-rebuild",
            Contender::ToolRegistryRebuild => "tool-registry-rebuild",
            Contender::BestClassic => "best-classic",
            Contender::BestModern => "best-modern",
            Contender::Floor => "floor",
            Contender::FloorManifest => "floor-manifest",
            Contender::SingleBuildkit => "single-buildkit",
            Contender::SingleModern => "single-modern",
            Contender::SingleModernCache => "single-modern-cache",
            Contender::BakeModern => "bake-modern",
        }
    }

    /// Its name in the tables.
    pub fn label(self) -> &'static str {
        match self {
            Contender::SeedClassic => "seed-script (classic)",
            Contender::SeedModern => "seed-script (modern)",
            Contender::ToolClassic => "tool-classic",
            Contender::ToolRegistry => "tool-registry (modern)",
            Contender::ToolMounts => "tool-registry + cache-mounts (modern)",
            Contender::ToolClassicRebuild => "tool-classic --rebuild",
            Contender::ToolRegistryRebuild => "tool-registry --rebuild (modern)",
            Contender::BestClassic => "best-buildkit (classic)",
            Contender::BestModern => "best-buildkit (modern)",
            Contender::Floor => "floor: docker pull (classic)",
            Contender::FloorManifest => "floor: manifest inspect",
            Contender::SingleBuildkit => "single-buildkit (classic)",
            Contender::SingleModern => "single-buildkit (modern)",
            Contender::SingleModernCache => "single-buildkit + registry cache (modern)",
            Contender::BakeModern => "buildx bake + registry caches (modern)",
        }
    }

    /// The engine it runs on (a fresh one each run); `None`: it needs none.
    pub fn engine(self) -> Option<Flavor> {
        match self {
            Contender::SeedModern
            | Contender::ToolRegistry
            | Contender::ToolMounts
            | Contender::ToolRegistryRebuild
            | Contender::BestModern
            | Contender::SingleModern
            | Contender::SingleModernCache
            | Contender::BakeModern => Some(Flavor::Modern),
            Contender::FloorManifest => None,
            _ => Some(Flavor::Classic),
        }
    }

    /// The scenarios it is measured in on `fixture`: the cold lower bounds only where their
    /// goal is (five-stage); on the Rust fixtures, which take a minute a cold build, the
    /// scenarios CI meets (no `warm`: the registry check's skip does not depend on the
    /// language) with, on the service, the best hand-written command (one build with its own
    /// registry cache) and the cache-mount route beside the seed script and the tool (the
    /// workspace has two images and no mounts Dockerfile: its best hand-written command is one
    /// `buildx bake` of both).
    pub fn scenarios(self, fixture: FixtureName) -> &'static [Scenario] {
        use Scenario::{Changed, Cold, DepBump, NextCommit, Warm};
        if fixture.is_rust() {
            return match self {
                Contender::SeedClassic
                | Contender::SeedModern
                | Contender::ToolClassic
                | Contender::ToolRegistry => &[Cold, NextCommit, Changed, DepBump],
                Contender::ToolMounts if fixture.has_mounts_variant() => {
                    &[Cold, NextCommit, Changed, DepBump]
                }
                // One build of one final image: not a workspace's.
                Contender::SingleModernCache if fixture.fixture().apps.is_empty() => {
                    &[Cold, NextCommit, Changed, DepBump]
                }
                // One bake of several images: a workspace's.
                Contender::BakeModern if !fixture.fixture().apps.is_empty() => {
                    &[Cold, NextCommit, Changed, DepBump]
                }
                _ => &[],
            };
        }
        match self {
            Contender::SeedClassic
            | Contender::SeedModern
            | Contender::ToolClassic
            | Contender::ToolRegistry => &[Cold, Warm, NextCommit, Changed],
            Contender::BestClassic
            | Contender::BestModern
            | Contender::ToolClassicRebuild
            | Contender::ToolRegistryRebuild
            | Contender::Floor
            | Contender::FloorManifest => &[Warm],
            Contender::SingleBuildkit | Contender::SingleModern | Contender::SingleModernCache
                if fixture == FixtureName::FiveStage =>
            {
                &[Cold]
            }
            Contender::SingleBuildkit
            | Contender::SingleModern
            | Contender::SingleModernCache
            | Contender::ToolMounts
            | Contender::BakeModern => &[],
        }
    }

    /// Whether it builds (and so needs a build context).
    pub fn builds(self) -> bool {
        !matches!(self, Contender::Floor | Contender::FloorManifest)
    }

    /// Whether it keeps its own copy of the fixture (its build context, edited by `changed`).
    /// The best builds use the copy of the tool whose caches they read: a copy of their own
    /// would differ in its Cargo.toml (the image's name), which the Dockerfiles copy, and miss.
    pub fn owns_copy(self) -> bool {
        self.builds() && self.reads_from().is_none()
    }

    /// What its checkout builds in place of the example's Dockerfile (`None`: that one as it is).
    pub fn dockerfile_variant(self, fixture: FixtureName) -> Option<Variant> {
        match self {
            Contender::ToolMounts if fixture.has_mounts_variant() => {
                Some(Variant::File("Dockerfile.mounts"))
            }
            Contender::BakeModern => Some(Variant::RunWithoutNetwork),
            _ => None,
        }
    }

    /// Lines its copy adds to the fixture's `[package.metadata.docker]`.
    pub fn table_extra(self) -> &'static str {
        match self {
            // No attestation manifests: the other contenders push none either.
            Contender::ToolRegistry | Contender::ToolRegistryRebuild => {
                "cache = \"registry\"\nprovenance = false"
            }
            Contender::ToolMounts => {
                "cache = \"registry\"\nprovenance = false\ncache-mounts = true"
            }
            _ => "",
        }
    }

    /// Whether it is the tool (its output is JSON events).
    pub fn is_tool(self) -> bool {
        matches!(
            self,
            Contender::ToolClassic
                | Contender::ToolRegistry
                | Contender::ToolMounts
                | Contender::ToolClassicRebuild
                | Contender::ToolRegistryRebuild
        )
    }

    /// The contender whose registry content a warm run of this one reads, when not its own.
    pub fn reads_from(self) -> Option<Contender> {
        match self {
            Contender::BestClassic
            | Contender::ToolClassicRebuild
            | Contender::Floor
            | Contender::FloorManifest => Some(Contender::ToolClassic),
            Contender::BestModern | Contender::ToolRegistryRebuild => Some(Contender::ToolRegistry),
            _ => None,
        }
    }
}

/// One program run: an argv and its environment (on top of the agent's `DOCKER_HOST` and
/// `DOCKER_CONFIG`).
#[derive(Debug, Clone)]
pub struct Cmd {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// A failure is expected and ignored (the script's `docker pull ... || true`).
    pub may_fail: bool,
    /// What it reads on stdin (`None`: nothing, stdin is closed).
    pub stdin: Option<String>,
}

impl Cmd {
    fn new(program: &Path, args: &[&str]) -> Cmd {
        Cmd {
            program: program.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            may_fail: false,
            stdin: None,
        }
    }

    /// The command as a shell line, for the report (it is never run through a shell).
    pub fn shell_line(&self) -> String {
        let quote = |s: &str| {
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c))
            {
                s.to_string()
            } else {
                format!("'{}'", s.replace('\'', "'\\''"))
            }
        };
        let mut words: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        words.push(quote(&self.program.display().to_string()));
        words.extend(self.args.iter().map(|a| quote(a)));
        let mut line = words.join(" ");
        if self.may_fail {
            line.push_str(" || true");
        }
        if let Some(stdin) = &self.stdin {
            line.push_str(&format!(" <<'EOF'\n{}\nEOF", stdin.trim_end()));
        }
        line
    }
}

/// The programs the contenders run.
#[derive(Debug, Clone)]
pub struct Programs {
    /// The Docker 28 CLI (with the buildx plugin): every contender's `docker`.
    pub docker: PathBuf,
    /// The release `xtask-docker` binary.
    pub tool: PathBuf,
}

/// The commands of one run of `contender` on `fixture`, whose build context is the clone `copy`,
/// against the registry `addr`. `verbose` adds the tool's `-v` (for the profile run).
pub fn commands(
    programs: &Programs,
    contender: Contender,
    fixture: &Fixture,
    copy: Option<&Clone>,
    addr: &str,
    build_args: &[String],
    verbose: bool,
) -> Vec<Cmd> {
    let with_args = |mut args: Vec<String>| {
        // After `build` / `buildx build`.
        let at = if args.first().map(String::as_str) == Some("buildx") {
            2
        } else {
            1
        };
        for (i, a) in build_args.iter().enumerate() {
            args.splice(
                at + 2 * i..at + 2 * i,
                ["--build-arg".to_string(), a.clone()],
            );
        }
        args
    };
    let docker = programs.docker.as_path();
    let name = fixture.name;
    let context = || {
        copy.expect("a building contender has a copy")
            .dir
            .display()
            .to_string()
    };
    let tool_image = |tag: &str| fixture::image(addr, Contender::ToolClassic.id(), name, tag);
    // The final image of a one-command build, in the contender's own repository.
    let own = fixture::image(addr, contender.id(), name, "latest");
    match contender {
        Contender::SeedClassic | Contender::SeedModern => {
            // A workspace's script does the same for each service in turn.
            let apps: Vec<Option<&str>> = if fixture.apps.is_empty() {
                vec![None]
            } else {
                fixture.apps.iter().copied().map(Some).collect()
            };
            apps.into_iter()
                .flat_map(|app| {
                    seed_script(
                        docker,
                        contender,
                        fixture,
                        app,
                        addr,
                        &context(),
                        &with_args,
                    )
                })
                .collect()
        }
        Contender::ToolClassic
        | Contender::ToolRegistry
        | Contender::ToolMounts
        | Contender::ToolClassicRebuild
        | Contender::ToolRegistryRebuild => {
            let copy = copy.expect("the tool has a copy");
            let manifest = copy.manifest.display().to_string();
            let mut args = vec!["docker", "build"];
            if verbose {
                args.push("-v");
            }
            // As a build of the default branch: the copy is no git checkout, and a build
            // without a branch writes no shared cache tag and no marker (the branch boundary).
            args.extend([
                "--manifest-path",
                &manifest,
                "--push",
                "--branch",
                "main",
                "--message-format",
                "json",
            ]);
            if matches!(
                contender,
                Contender::ToolClassicRebuild | Contender::ToolRegistryRebuild
            ) {
                args.push("--rebuild");
            }
            let mut cmd = Cmd::new(&programs.tool, &args);
            cmd.env
                .push(("DOCKER".into(), programs.docker.display().to_string()));
            vec![cmd]
        }
        Contender::BestClassic => {
            let mut args: Vec<String> = one_build(fixture.target)
                .into_iter()
                .chain(["--build-arg", "BUILDKIT_INLINE_CACHE=1"])
                .map(String::from)
                .collect();
            for tag in fixture.cache_tags {
                args.extend(["--cache-from".into(), tool_image(tag)]);
            }
            args.extend(["--tag".into(), own, "--push".into(), context()]);
            let args = with_args(args);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            vec![Cmd::new(docker, &args)]
        }
        Contender::BestModern => {
            let cache = format!(
                "type=registry,ref={}",
                fixture::image(addr, Contender::ToolRegistry.id(), name, "buildcache")
            );
            let context = context();
            let mut args = one_build(fixture.target);
            args.extend([
                "--cache-from",
                &cache,
                "--tag",
                &own,
                "--provenance=false",
                "--push",
                &context,
            ]);
            let args = with_args(args.iter().map(|a| a.to_string()).collect());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            vec![Cmd::new(docker, &args)]
        }
        Contender::SingleBuildkit | Contender::SingleModern | Contender::SingleModernCache => {
            let context = context();
            let cache = fixture::image(addr, contender.id(), name, "buildcache");
            let from = format!("type=registry,ref={cache}");
            let to = format!(
                "type=registry,ref={cache},mode=max,image-manifest=true,oci-mediatypes=true"
            );
            let mut args = one_build(fixture.target);
            args.extend(["--tag", &own, "--push"]);
            // No attestation manifest, as for the tool with a registry cache.
            if contender != Contender::SingleBuildkit {
                args.push("--provenance=false");
            }
            if contender == Contender::SingleModernCache {
                args.extend(["--cache-from", &from, "--cache-to", &to]);
            }
            args.push(&context);
            let args = with_args(args.iter().map(|a| a.to_string()).collect());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            vec![Cmd::new(docker, &args)]
        }
        Contender::BakeModern => {
            let definition = bake_definition(fixture, addr, &context(), build_args);
            let mut cmd = Cmd::new(
                docker,
                &[
                    "buildx",
                    "bake",
                    "--file",
                    "-",
                    "--progress=plain",
                    "--provenance=false",
                    "--push",
                ],
            );
            cmd.stdin = Some(definition);
            vec![cmd]
        }
        Contender::Floor => vec![Cmd::new(docker, &["pull", &tool_image("latest")])],
        Contender::FloorManifest => vec![Cmd::new(
            docker,
            // The CLI, unlike the engine, speaks HTTPS to a loopback registry unless told.
            &["manifest", "inspect", "--insecure", &tool_image("latest")],
        )],
    }
}

/// The hand-written script for one image (of the workspace's service `app`, built with
/// `--build-arg APP=<app>`): pull every stage image (a missing one is no cache yet), build each
/// stage with `--cache-from` its own image and those of the stages before it, push them all.
fn seed_script(
    docker: &Path,
    contender: Contender,
    fixture: &Fixture,
    app: Option<&str>,
    addr: &str,
    context: &str,
    with_args: &dyn Fn(Vec<String>) -> Vec<String>,
) -> Vec<Cmd> {
    let images: Vec<String> = fixture
        .seed_stages
        .iter()
        .map(|stage| {
            let tag = format!("seed-{stage}");
            match app {
                Some(app) => fixture::app_image(addr, contender.id(), app, &tag),
                None => fixture::image(addr, contender.id(), fixture.name, &tag),
            }
        })
        .collect();
    let mut cmds = Vec::new();
    for image in &images {
        let mut pull = Cmd::new(docker, &["pull", image]);
        pull.may_fail = true;
        cmds.push(pull);
    }
    let app_arg = app.map(|app| format!("APP={app}"));
    for (i, stage) in fixture.seed_stages.iter().enumerate() {
        let mut args = vec![
            "build",
            "--progress=plain",
            "--build-arg",
            "BUILDKIT_INLINE_CACHE=1",
            "--network",
            "none",
            "--target",
            stage,
        ];
        if let Some(arg) = &app_arg {
            args.extend(["--build-arg", arg.as_str()]);
        }
        // Its own image first, then the earlier stages'.
        args.extend(["--cache-from", images[i].as_str()]);
        for earlier in &images[..i] {
            args.extend(["--cache-from", earlier.as_str()]);
        }
        args.extend(["--tag", images[i].as_str(), context]);
        let args = with_args(args.iter().map(|a| a.to_string()).collect());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut build = Cmd::new(docker, &args);
        build.env.push(("DOCKER_BUILDKIT".into(), "1".into()));
        cmds.push(build);
    }
    for image in &images {
        cmds.push(Cmd::new(docker, &["push", image]));
    }
    cmds
}

/// The bake definition (JSON) of a workspace's services: one target per service, built from
/// the one Dockerfile with `APP=<service>` and `build_args`, tagged `latest` in the bake
/// contender's namespace, reading every service's registry cache (they share the cooked
/// dependencies) and writing its own with every stage (`mode=max`).
fn bake_definition(fixture: &Fixture, addr: &str, context: &str, build_args: &[String]) -> String {
    let id = Contender::BakeModern.id();
    let caches: Vec<String> = fixture
        .apps
        .iter()
        .map(|app| fixture::app_image(addr, id, app, "buildcache"))
        .collect();
    let targets: serde_json::Map<String, serde_json::Value> = fixture
        .apps
        .iter()
        .zip(&caches)
        .map(|(app, cache)| {
            let mut args: serde_json::Map<String, serde_json::Value> = build_args
                .iter()
                .filter_map(|a| a.split_once('='))
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect();
            args.insert("APP".into(), (*app).into());
            let target = serde_json::json!({
                "context": context,
                "dockerfile": "Dockerfile",
                "target": fixture.target,
                "args": args,
                "tags": [fixture::app_image(addr, id, app, "latest")],
                "cache-from": caches
                    .iter()
                    .map(|c| format!("type=registry,ref={c}"))
                    .collect::<Vec<_>>(),
                "cache-to": [format!(
                    "type=registry,ref={cache},mode=max,image-manifest=true,oci-mediatypes=true"
                )],
            });
            (app.to_string(), target)
        })
        .collect();
    let definition = serde_json::json!({
        "group": { "default": { "targets": fixture.apps } },
        "target": targets,
    });
    serde_json::to_string_pretty(&definition).expect("a JSON value prints")
}

/// The start of every one-command BuildKit build: `docker buildx build` of `target`, plain
/// progress, no network.
fn one_build(target: &str) -> Vec<&str> {
    vec![
        "buildx",
        "build",
        "--progress=plain",
        "--network",
        "none",
        "--target",
        target,
    ]
}

/// What one program printed.
#[derive(Debug, Clone, Default)]
pub struct Printed {
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// A timed run of a command list.
#[derive(Debug, Clone)]
pub struct Timed {
    /// Wall time from the first program's start to the last one's exit.
    pub seconds: f64,
    /// What each program printed, in order.
    pub printed: Vec<Printed>,
    /// The first failure (`may_fail` commands never fail the run).
    pub error: Option<String>,
    /// When the first program started.
    pub started: std::time::SystemTime,
}

/// Runs `cmds` one after another against an agent (`host` is its `DOCKER_HOST`; `None` for
/// none) whose client configuration is `config`, stopping at the first failure.
pub fn execute(cmds: &[Cmd], host: Option<&str>, config: &Path) -> Timed {
    let started = std::time::SystemTime::now();
    let start = Instant::now();
    let mut printed = Vec::new();
    let mut error = None;
    for cmd in cmds {
        let mut command = Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .env_remove("DOCKER")
            .env_remove("DOCKER_BUILDKIT")
            .env("DOCKER_CONFIG", config)
            .envs(cmd.env.iter().map(|(k, v)| (k, v)));
        match host {
            Some(host) => command.env("DOCKER_HOST", host),
            None => command.env_remove("DOCKER_HOST"),
        };
        match output_of(&mut command, cmd.stdin.as_deref()) {
            Ok(output) => {
                let out = Printed {
                    stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                };
                let failed = !output.status.success() && !cmd.may_fail;
                if failed {
                    error = Some(format!(
                        "`{}` failed ({}):\n{}",
                        cmd.shell_line(),
                        output.status,
                        tail(&out.stderr, 25)
                    ));
                }
                printed.push(out);
                if failed {
                    break;
                }
            }
            Err(e) => {
                error = Some(format!("cannot run `{}`: {e}", cmd.program.display()));
                break;
            }
        }
    }
    Timed {
        seconds: start.elapsed().as_secs_f64(),
        printed,
        error,
        started,
    }
}

/// Runs `command` to its end, writing `stdin` to it (its whole input; then closed).
fn output_of(command: &mut Command, stdin: Option<&str>) -> std::io::Result<std::process::Output> {
    let Some(input) = stdin else {
        return command.output();
    };
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn()?;
    let mut pipe = child.stdin.take().expect("stdin is piped");
    // From a thread of its own: a program that prints much before it has read all its input
    // would otherwise wait on us while we wait on it.
    let input = input.to_string();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        pipe.write_all(input.as_bytes())
    });
    let output = child.wait_with_output()?;
    writer.join().expect("the stdin writer does not panic")?;
    Ok(output)
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_s_seed_script_builds_each_service_with_its_own_tags() {
        let programs = Programs {
            docker: "docker".into(),
            tool: "xtask-docker".into(),
        };
        // Never created: the commands only name it.
        let copy = Clone {
            dir: "/nonexistent/bench-clone".into(),
            manifest: "/nonexistent/bench-clone/Cargo.toml".into(),
        };
        let lines: Vec<String> = commands(
            &programs,
            Contender::SeedModern,
            &FixtureName::RustWorkspace.fixture(),
            Some(&copy),
            "127.0.0.1:5999",
            &["RUST_IMAGE=r@sha256:1".to_string()],
            false,
        )
        .iter()
        .map(Cmd::shell_line)
        .collect();
        // Per service: 3 pulls, 3 builds, 3 pushes.
        assert_eq!(lines.len(), 18, "{lines:#?}");
        assert_eq!(
            lines[0],
            "docker pull 127.0.0.1:5999/seed-modern/api:seed-deps || true"
        );
        assert_eq!(
            lines[5],
            "DOCKER_BUILDKIT=1 docker build --build-arg RUST_IMAGE=r@sha256:1 --progress=plain --build-arg BUILDKIT_INLINE_CACHE=1 --network none --target runtime --build-arg APP=api --cache-from 127.0.0.1:5999/seed-modern/api:seed-runtime --cache-from 127.0.0.1:5999/seed-modern/api:seed-deps --cache-from 127.0.0.1:5999/seed-modern/api:seed-compile --tag 127.0.0.1:5999/seed-modern/api:seed-runtime /nonexistent/bench-clone"
        );
        assert_eq!(
            lines[17],
            "docker push 127.0.0.1:5999/seed-modern/worker:seed-runtime"
        );
        assert!(lines[9..]
            .iter()
            .all(|l| !l.contains("/api:") && !l.contains("APP=api")));
    }

    #[test]
    fn the_bake_builds_every_service_once_reading_every_service_s_cache() {
        let programs = Programs {
            docker: "docker".into(),
            tool: "xtask-docker".into(),
        };
        let copy = Clone {
            dir: "/nonexistent/bench-clone".into(),
            manifest: "/nonexistent/bench-clone/Cargo.toml".into(),
        };
        let cmds = commands(
            &programs,
            Contender::BakeModern,
            &FixtureName::RustWorkspace.fixture(),
            Some(&copy),
            "127.0.0.1:5999",
            &["RUST_IMAGE=r@sha256:1".to_string()],
            false,
        );
        assert_eq!(cmds.len(), 1);
        assert_eq!(
            cmds[0].args,
            [
                "buildx",
                "bake",
                "--file",
                "-",
                "--progress=plain",
                "--provenance=false",
                "--push"
            ]
        );
        let definition: serde_json::Value =
            serde_json::from_str(cmds[0].stdin.as_deref().expect("the definition on stdin"))
                .expect("JSON");
        assert_eq!(
            definition["group"]["default"]["targets"],
            serde_json::json!(["api", "worker"])
        );
        let api = &definition["target"]["api"];
        assert_eq!(api["context"], "/nonexistent/bench-clone");
        assert_eq!(api["target"], "runtime");
        assert_eq!(
            api["args"],
            serde_json::json!({"APP": "api", "RUST_IMAGE": "r@sha256:1"})
        );
        assert_eq!(
            api["tags"],
            serde_json::json!(["127.0.0.1:5999/bake-modern/api:latest"])
        );
        assert_eq!(
            api["cache-from"],
            serde_json::json!([
                "type=registry,ref=127.0.0.1:5999/bake-modern/api:buildcache",
                "type=registry,ref=127.0.0.1:5999/bake-modern/worker:buildcache"
            ])
        );
        assert_eq!(
            definition["target"]["worker"]["cache-to"],
            serde_json::json!(["type=registry,ref=127.0.0.1:5999/bake-modern/worker:buildcache,mode=max,image-manifest=true,oci-mediatypes=true"])
        );
        assert_eq!(definition["target"]["worker"]["args"]["APP"], "worker");
        assert!(cmds[0].shell_line().starts_with(
            "docker buildx bake --file - --progress=plain --provenance=false --push <<'EOF'\n{"
        ));
    }

    #[test]
    fn a_command_s_input_reaches_it() {
        let cmd = Cmd {
            stdin: Some("from stdin\n".into()),
            ..Cmd::new(Path::new("cat"), &[])
        };
        let timed = execute(&[cmd], None, Path::new("/nonexistent"));
        assert_eq!(timed.error, None);
        assert_eq!(timed.printed[0].stdout, "from stdin\n");
    }
}

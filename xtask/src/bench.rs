//! `cargo xtask bench`: the tool against the hand-written script and plain BuildKit, on fresh
//! engines (new CI agents) and real registries, with the results in `target/bench/`.
//!
//! For each fixture (`examples/{service,five-stage,heavy}`) and scenario (`cold`: empty
//! registry; `warm`: nothing changed since the contender's last push; `changed`: one source file
//! edited), every contender runs `--runs` times, alternating run by run (the order rotates each
//! round) so that drift on the machine hits all of them alike. Every timed run starts on a new,
//! empty engine; what the warm and changed runs need in the registry is put there first, by an
//! untimed cold run of the same contender. Each run records its wall time, the agent's disk
//! growth, the registry's access log (bytes served, requests) and how many Dockerfile steps ran
//! and came from the cache.

mod contender;
mod fingerprint;
mod fixture;
mod measure;
mod overhead;
mod profile;
mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use testbed::{Engine, Flavor, Registry, Tools};

use contender::{Contender, ContenderArg, Programs};
use fixture::{Checkout, Fixture, FixtureName};
use measure::{StageSteps, Traffic};

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Timed runs of each (fixture, scenario, contender), each on a fresh engine; the tables
    /// show the median.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// A fixture to run (repeatable); default: all.
    #[arg(long = "fixture", value_enum, value_name = "NAME")]
    pub fixtures: Vec<FixtureName>,
    /// A scenario to run (repeatable); default: all.
    #[arg(long = "scenario", value_enum, value_name = "NAME")]
    pub scenarios: Vec<Scenario>,
    /// A contender to run (repeatable); default: all, and the overhead measurement.
    #[arg(long = "contender", value_enum, value_name = "NAME")]
    pub contenders: Vec<ContenderArg>,
    /// One run of each: a smoke check.
    #[arg(long)]
    pub quick: bool,
    /// Only the fingerprint's throughput, in the profiles a user's xtask may have (no engine).
    #[arg(long)]
    pub fingerprint: bool,
}

/// The state of the registry and the fixture when a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// The registry is empty.
    Cold,
    /// Nothing changed since the contender's last push.
    Warm,
    /// One source file changed since then.
    Changed,
    /// The next commit, which changes no file the images are made of (only their revision
    /// label): what most CI runs on a branch look like.
    NextCommit,
    /// One dependency bumped in `Cargo.lock` (and its vendored sources), as a dependency bot's
    /// pull request does (Rust fixtures).
    DepBump,
}

impl Scenario {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Cold => "cold",
            Scenario::Warm => "warm",
            Scenario::Changed => "changed",
            Scenario::NextCommit => "next-commit",
            Scenario::DepBump => "dep-bump",
        }
    }

    /// Its name in the tables.
    pub fn title(self) -> &'static str {
        match self {
            Scenario::Cold => "cold",
            Scenario::Warm => "warm (same commit)",
            Scenario::Changed => "source edit",
            Scenario::NextCommit => "next commit (no layer changed)",
            Scenario::DepBump => "dependency bump",
        }
    }
}

/// Every scenario, in order.
const SCENARIOS: [Scenario; 5] = [
    Scenario::Cold,
    Scenario::Warm,
    Scenario::NextCommit,
    Scenario::Changed,
    Scenario::DepBump,
];

/// The contenders of each scenario of one fixture.
type PerScenario = Vec<(Scenario, Vec<Contender>)>;

/// One timed run.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// Which round of the alternation it was in (0-based).
    pub round: u32,
    /// Wall time of the contender's commands, seconds.
    pub seconds: f64,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Growth of the agent's disk (data root, and containerd's root on the modern engine),
    /// bytes; `None` without an agent.
    pub agent_bytes: Option<u64>,
    /// What the registry's access log says of the run.
    pub traffic: Traffic,
    /// Growth of the registry's storage, bytes.
    pub pushed_bytes: i64,
    /// Dockerfile steps per stage (the tool's JSON event; BuildKit's plain progress for the
    /// others); `None` where nothing was built.
    pub stages: Option<Vec<StageSteps>>,
    /// The tool's steps as they ran (its JSON events).
    pub timeline: Vec<measure::Span>,
    /// The slowest BuildKit vertices (plain progress; the tool's with `-v`, which the Rust
    /// fixtures' runs have).
    pub vertices: Vec<measure::Vertex>,
}

impl RunRecord {
    /// Steps in all, and of them from the cache.
    pub fn steps(&self) -> Option<(u64, u64)> {
        self.stages.as_ref().map(|stages| {
            stages
                .iter()
                .fold((0, 0), |(s, c), st| (s + st.steps, c + st.cached))
        })
    }
}

/// Every run of one contender in one scenario of one fixture.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// The fixture.
    pub fixture: FixtureName,
    /// The scenario.
    pub scenario: Scenario,
    /// The contender.
    pub contender: Contender,
    /// The contender's table name.
    pub label: &'static str,
    /// Its commands in the first run, as shell lines (they run as argv, not through a shell).
    pub commands: Vec<String>,
    /// The runs.
    pub runs: Vec<RunRecord>,
}

/// Everything a benchmark run found, as written to `results.json`.
#[derive(Debug, Serialize)]
pub struct Results {
    /// Timed runs per cell.
    pub runs: u32,
    /// Versions of what ran.
    pub versions: BTreeMap<String, String>,
    /// The measurements.
    pub cells: Vec<Cell>,
    /// The tool's own overhead.
    pub overhead: Option<overhead::Overhead>,
    /// Where the time goes in the tool's warm runs of the heavy fixture.
    pub profiles: Vec<profile::Profile>,
    /// The goals, checked.
    pub goals: Vec<report::Goal>,
    /// Wall time of the whole benchmark, seconds.
    pub total_seconds: f64,
}

/// Runs the benchmark.
pub fn run(args: &BenchArgs) -> Result<()> {
    let runs = if args.quick { 1 } else { args.runs };
    if args.fingerprint {
        return fingerprint::run(runs);
    }
    testbed::install::install_all()?;
    let tools = testbed::require().context("the engine's tools are missing")?;
    let modern = testbed::require_modern().is_some();
    let tool = build_tool()?;
    // Taken now: the repository may move on while the benchmark runs.
    let versions = versions(&tools);
    let programs = Programs {
        docker: tools.cli28.clone(),
        tool,
    };

    let mut fixtures: Vec<FixtureName> = if args.fixtures.is_empty() {
        fixture::ALL.to_vec()
    } else {
        dedup(&args.fixtures)
    };
    if testbed::rust::find().is_none() && fixtures.iter().any(|f| f.is_rust()) {
        println!(
            "bench: the Rust images are not made (`cargo xtask engine install` makes them); skipping the Rust fixtures"
        );
        fixtures.retain(|f| !f.is_rust());
    }
    let scenarios: Vec<Scenario> = if args.scenarios.is_empty() {
        SCENARIOS.to_vec()
    } else {
        dedup(&args.scenarios)
    };
    let (mut contenders, with_overhead) = if args.contenders.is_empty() {
        (contender::ALL.to_vec(), true)
    } else {
        let set: BTreeSet<Contender> = args
            .contenders
            .iter()
            .flat_map(|c| c.expand().iter().copied())
            .collect();
        let order: Vec<Contender> = contender::ALL
            .iter()
            .copied()
            .filter(|c| set.contains(c))
            .collect();
        (order, args.contenders.contains(&ContenderArg::Overhead))
    };
    if !modern {
        let skipped: Vec<&str> = contenders
            .iter()
            .filter(|c| c.engine() == Some(Flavor::Modern))
            .map(|c| c.id())
            .collect();
        if !skipped.is_empty() {
            println!(
                "bench: the modern engine is not installed; skipping {}",
                skipped.join(", ")
            );
        }
        contenders.retain(|c| c.engine() != Some(Flavor::Modern));
    }

    let out_dir = crate::test::root().join("target/bench");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create `{}`", out_dir.display()))?;
    // Logs of an earlier benchmark would mix with this one's.
    let _ = std::fs::remove_dir_all(out_dir.join("logs"));
    let mut bench = Bench {
        tools: tools.clone(),
        programs,
        runs,
        cells: Vec::new(),
        profiles: Vec::new(),
        done: 0,
        total: 0,
        started: Instant::now(),
        stopping: None,
        pending: None,
        out_dir: out_dir.clone(),
        rust: testbed::rust::find(),
        build_args: Vec::new(),
    };
    let plan: Vec<(Fixture, PerScenario)> = fixtures
        .iter()
        .map(|f| {
            let per_scenario = scenarios
                .iter()
                .map(|&s| {
                    let cs: Vec<Contender> = contenders
                        .iter()
                        .copied()
                        .filter(|c| c.scenarios(*f).contains(&s))
                        .collect();
                    (s, cs)
                })
                .filter(|(_, cs)| !cs.is_empty())
                .collect();
            (f.fixture(), per_scenario)
        })
        .collect();
    bench.total = plan
        .iter()
        .flat_map(|(_, ss)| ss.iter().map(|(_, cs)| cs.len() * runs as usize))
        .sum();
    println!(
        "bench: {} timed runs ({runs} per fixture, scenario and contender), each on a fresh engine; docker CLI `{}`, tool `{}`",
        bench.total,
        bench.programs.docker.display(),
        bench.programs.tool.display()
    );

    let mut result = Ok(());
    for (fixture, per_scenario) in &plan {
        result = bench.fixture(fixture, per_scenario);
        if result.is_err() {
            break;
        }
    }
    bench.join_stopping();
    let overhead = match (&result, with_overhead) {
        (Ok(()), true) => Some(overhead::measure(
            &bench.programs.tool,
            // A run is ~30 ms and its spread a few ms: it takes a few hundred for a median
            // that a 1.2x goal can be read from.
            if args.quick { 5 } else { 200 },
        )?),
        _ => None,
    };
    let results = Results {
        runs,
        versions,
        goals: report::goals(&bench.cells, overhead.as_ref()),
        cells: bench.cells,
        overhead,
        profiles: bench.profiles,
        total_seconds: bench.started.elapsed().as_secs_f64(),
    };
    // Whatever was measured is written, also when a step failed.
    let text = report::write(&out_dir, &results)?;
    println!("\n{text}");
    println!(
        "bench: wrote {}, {} and {} in {:.0} s",
        out_dir.join("results.md").display(),
        out_dir.join("results.json").display(),
        out_dir.join("chart.svg").display(),
        results.total_seconds
    );
    result
}

/// Builds the release `xtask-docker` (the overhead goal is about the release binary) and
/// returns its path.
fn build_tool() -> Result<PathBuf> {
    let root = crate::test::root();
    let cargo = crate::test::cargo();
    println!("bench: cargo build --release --bin xtask-docker");
    let status = std::process::Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--bin",
            "xtask-docker",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .status()
        .with_context(|| format!("cannot run `{cargo}`"))?;
    if !status.success() {
        bail!("`cargo build --release --bin xtask-docker` failed ({status})");
    }
    Ok(root.join("target/release/xtask-docker"))
}

/// `--version` of the programs that ran.
fn versions(tools: &Tools) -> BTreeMap<String, String> {
    let mut programs = vec![
        ("docker CLI".to_string(), tools.cli28.clone()),
        ("dockerd (classic)".to_string(), tools.dockerd.clone()),
        ("docker-registry".to_string(), tools.registry.clone()),
    ];
    if let Some(modern) = &tools.modern {
        programs.push(("dockerd (modern)".to_string(), modern.dockerd.clone()));
        programs.push(("containerd (modern)".to_string(), modern.containerd.clone()));
    }
    let mut versions = BTreeMap::new();
    for (name, path) in programs {
        let version = std::process::Command::new(&path)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        versions.insert(name, format!("{version} ({})", path.display()));
    }
    // The tool changes often: name the commit it was built from, and whether its source
    // differed from that commit.
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(crate::test::root())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = git(&[
        "status",
        "--porcelain",
        "--",
        "src",
        "Cargo.toml",
        "Cargo.lock",
    ]);
    versions.insert(
        "xtask-docker".to_string(),
        format!(
            "commit {commit}{}",
            if dirty.is_empty() {
                ""
            } else {
                " with uncommitted changes"
            }
        ),
    );
    let buildx = std::process::Command::new(&tools.cli28)
        .args(["buildx", "version"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    versions.insert("buildx".to_string(), buildx);
    versions
}

fn dedup<T: Ord + std::marker::Copy>(items: &[T]) -> Vec<T> {
    let mut seen = BTreeSet::new();
    items.iter().copied().filter(|i| seen.insert(*i)).collect()
}

/// `items` rotated left by `round`: each round starts with the next contender, so that none
/// always runs right after the same other one.
fn rotate(items: &[Contender], round: u32) -> Vec<Contender> {
    let mut items = items.to_vec();
    if !items.is_empty() {
        let n = round as usize % items.len();
        items.rotate_left(n);
    }
    items
}

/// A run whose registry traffic is read once the registry is quiet: the registry writes an
/// access-log line after it answered, so it is read at the next run's start (or once the
/// registry stopped), not right when the client exits.
struct Pending {
    cell: usize,
    run: usize,
    offset: usize,
}

/// The benchmark's state.
struct Bench {
    tools: Tools,
    programs: Programs,
    runs: u32,
    cells: Vec<Cell>,
    profiles: Vec<profile::Profile>,
    /// Timed runs done and planned, for the progress lines.
    done: usize,
    total: usize,
    started: Instant,
    /// The engine of the last run, being stopped (and deleted) while the next one starts.
    stopping: Option<JoinHandle<()>>,
    pending: Option<Pending>,
    out_dir: PathBuf,
    /// The Rust images, where they are made.
    rust: Option<testbed::rust::RustImages>,
    /// The build arguments of the current registry's fixture (`KEY=VALUE`).
    build_args: Vec<String>,
}

impl Bench {
    /// Runs every scenario of one fixture.
    fn fixture(
        &mut self,
        fixture: &Fixture,
        per_scenario: &[(Scenario, Vec<Contender>)],
    ) -> Result<()> {
        let name = fixture.name.as_str();
        let of = |s: Scenario| -> Vec<Contender> {
            per_scenario
                .iter()
                .find(|(sc, _)| *sc == s)
                .map(|(_, cs)| cs.clone())
                .unwrap_or_default()
        };

        // Cold: every run gets a new, empty registry.
        let cold = of(Scenario::Cold);
        if !cold.is_empty() {
            let mut copies = self.copies(fixture, &cold)?;
            for round in 0..self.runs {
                for c in rotate(&cold, round) {
                    let mut registry = self.tools.registry()?;
                    self.serve(fixture, &registry)?;
                    let copy = copies.get_mut(&c.reads_from().unwrap_or(c));
                    if let Some(copy) = copy {
                        copy.point_at(&registry.addr(), &self.build_args)?;
                    }
                    let copy = copies.get(&c.reads_from().unwrap_or(c));
                    self.measure(fixture, Scenario::Cold, c, copy, &registry, round)?;
                    registry.stop();
                    self.settle(&registry);
                }
            }
        }

        // The other scenarios: one registry, filled first by each contender's own cold run;
        // each scenario's change (a commit) starts from where the one before left.
        let warm = of(Scenario::Warm);
        let next = of(Scenario::NextCommit);
        let changed = of(Scenario::Changed);
        let bumped = of(Scenario::DepBump);
        if warm.is_empty() && next.is_empty() && changed.is_empty() && bumped.is_empty() {
            return Ok(());
        }
        let mut needed: BTreeSet<Contender> = warm
            .iter()
            .chain(&next)
            .chain(&changed)
            .chain(&bumped)
            .copied()
            .collect();
        // The best builds and the floors read what a tool contender pushed.
        let read: Vec<Contender> = needed.iter().filter_map(|c| c.reads_from()).collect();
        needed.extend(read);
        let needed: Vec<Contender> = needed.into_iter().collect();
        let mut registry = self.tools.registry()?;
        self.serve(fixture, &registry)?;
        let mut copies = self.copies(fixture, &needed)?;
        for copy in copies.values_mut() {
            copy.point_at(&registry.addr(), &self.build_args)?;
        }
        // Seed and tool contenders fill their own tags with a cold run; the best builds then
        // push their own final image once, so that their timed runs, like the tool's, push
        // layers the registry already holds.
        for c in needed
            .iter()
            .filter(|c| c.scenarios(fixture.name).contains(&Scenario::Cold))
            .chain(
                needed
                    .iter()
                    .filter(|c| matches!(c, Contender::BestClassic | Contender::BestModern)),
            )
        {
            self.setup(
                fixture,
                *c,
                copies.get(&c.reads_from().unwrap_or(*c)),
                &registry,
            )?;
        }
        for round in 0..self.runs {
            for c in rotate(&warm, round) {
                let context = copies.get(&c.reads_from().unwrap_or(c));
                self.measure(fixture, Scenario::Warm, c, context, &registry, round)?;
            }
        }
        if fixture.name == FixtureName::Heavy && !warm.is_empty() {
            self.settle(&registry);
            for c in [Contender::ToolClassic, Contender::ToolRegistry] {
                if let (true, Some(copy)) = (warm.contains(&c), copies.get(&c)) {
                    println!(
                        "bench: {name} warm {}: profile run (-v, not in the table)",
                        c.id()
                    );
                    self.join_stopping();
                    let profile = profile::run(
                        &self.tools,
                        &self.programs,
                        c,
                        fixture,
                        copy,
                        &registry,
                        &self.out_dir,
                    )?;
                    self.profiles.push(profile);
                }
            }
        }
        for round in 0..self.runs {
            for c in rotate(&next, round) {
                let copy = copies.get_mut(&c).context("a contender has a copy")?;
                copy.commit("the next commit")?;
                self.measure(
                    fixture,
                    Scenario::NextCommit,
                    c,
                    copies.get(&c),
                    &registry,
                    round,
                )?;
            }
        }
        for round in 0..self.runs {
            for c in rotate(&changed, round) {
                let copy = copies
                    .get_mut(&c)
                    .context("a changed contender has a copy")?;
                copy.edit(fixture)?;
                self.measure(
                    fixture,
                    Scenario::Changed,
                    c,
                    copies.get(&c),
                    &registry,
                    round,
                )?;
            }
        }
        if let Some(krate) = fixture.bumped {
            for round in 0..self.runs {
                for c in rotate(&bumped, round) {
                    let copy = copies.get_mut(&c).context("a contender has a copy")?;
                    let version = copy.bump(krate)?;
                    println!("bench: {name} dep-bump {}: `{krate}` {version}", c.id());
                    self.measure(
                        fixture,
                        Scenario::DepBump,
                        c,
                        copies.get(&c),
                        &registry,
                        round,
                    )?;
                }
            }
        }
        registry.stop();
        self.settle(&registry);
        Ok(())
    }

    /// Puts the Rust images into `registry` where `fixture` builds from them, as an image hub
    /// would serve them, and keeps their build arguments for the commands.
    fn serve(&mut self, fixture: &Fixture, registry: &Registry) -> Result<()> {
        self.build_args = if fixture.name.is_rust() {
            let images = self.rust.as_ref().context(
                "the Rust images are missing; make them with `cargo xtask engine install`",
            )?;
            images.serve(registry)?.build_args().to_vec()
        } else {
            Vec::new()
        };
        Ok(())
    }

    /// A copy of the fixture for each of `contenders` that builds.
    fn copies(
        &self,
        fixture: &Fixture,
        contenders: &[Contender],
    ) -> Result<BTreeMap<Contender, Checkout>> {
        contenders
            .iter()
            .filter(|c| c.owns_copy())
            .map(|&c| {
                Ok((
                    c,
                    Checkout::new(
                        fixture.name,
                        &self.tools.busybox,
                        c.id(),
                        c.table_extra(),
                        c.dockerfile_variant(fixture.name),
                    )?,
                ))
            })
            .collect()
    }

    /// A fresh agent of `flavor` (none for `None`). The previous run's engine is stopped
    /// meanwhile, and is gone when this returns.
    fn agent(&mut self, flavor: Option<Flavor>) -> Result<Option<Engine>> {
        let engine = match flavor {
            None => None,
            Some(Flavor::Modern) => Some(self.tools.modern_engine()?),
            Some(_) => Some(self.tools.engine()?),
        };
        self.join_stopping();
        Ok(engine)
    }

    /// Stops `engine` in the background (the next agent starts meanwhile).
    fn retire(&mut self, engine: Option<Engine>) {
        self.join_stopping();
        if let Some(engine) = engine {
            self.stopping = Some(std::thread::spawn(move || engine.stop()));
        }
    }

    fn join_stopping(&mut self) {
        if let Some(handle) = self.stopping.take() {
            let _ = handle.join();
        }
    }

    /// Reads the pending run's registry traffic.
    fn settle(&mut self, registry: &Registry) {
        if let Some(p) = self.pending.take() {
            let log = registry.log();
            let slice = log.get(p.offset..).unwrap_or("");
            self.cells[p.cell].runs[p.run].traffic = measure::traffic(slice);
        }
    }

    /// An untimed run that fills the registry for the warm and changed runs; tried twice, as
    /// a failed setup would end the whole benchmark.
    fn setup(
        &mut self,
        fixture: &Fixture,
        contender: Contender,
        copy: Option<&Checkout>,
        registry: &Registry,
    ) -> Result<()> {
        self.settle(registry);
        let name = fixture.name.as_str();
        let mut attempt = 1;
        loop {
            let offset = registry.log().len();
            let clone = copy.map(Checkout::clone_fresh).transpose()?;
            let engine = self
                .agent(contender.engine())?
                .context("a building contender has an engine")?;
            let cmds = contender::commands(
                &self.programs,
                contender,
                fixture,
                clone.as_ref(),
                &registry.addr(),
                &self.build_args,
                false,
            );
            let timed = contender::execute(&cmds, Some(&engine.host()), &engine.docker_config());
            self.retire(Some(engine));
            let Some(error) = timed.error else {
                println!(
                    "bench: {name} setup: {} filled the registry in {:.1} s (untimed)",
                    contender.id(),
                    timed.seconds
                );
                return Ok(());
            };
            let error = format!("{error}{}", registry_errors(registry, offset));
            if attempt == 2 {
                bail!(
                    "{name} setup run of {} failed twice: {error}",
                    contender.id()
                );
            }
            println!(
                "bench: {name} setup: {} failed, trying once more: {error}",
                contender.id()
            );
            attempt += 1;
        }
    }

    /// One timed run of `contender`, recorded in its cell.
    fn measure(
        &mut self,
        fixture: &Fixture,
        scenario: Scenario,
        contender: Contender,
        copy: Option<&Checkout>,
        registry: &Registry,
        round: u32,
    ) -> Result<()> {
        self.settle(registry);
        let clone = copy.map(Checkout::clone_fresh).transpose()?;
        let offset = registry.log().len();
        let stored_before = registry.storage_bytes();
        let engine = self.agent(contender.engine())?;
        let scratch = match &engine {
            Some(_) => None,
            None => Some(testbed::temp_dir("bench-config")?),
        };
        let config = match (&engine, &scratch) {
            (Some(e), _) => e.docker_config(),
            (None, Some(dir)) => dir.clone(),
            (None, None) => unreachable!("a scratch config exists without an engine"),
        };
        let disk_before = engine.as_ref().map(testbed::Engine::disk_usage);
        let cmds = contender::commands(
            &self.programs,
            contender,
            fixture,
            clone.as_ref(),
            &registry.addr(),
            &self.build_args,
            // With `-v` the tool prints BuildKit's progress: where a Rust build's time went.
            fixture.name.is_rust(),
        );
        let host = engine.as_ref().map(|e| e.host());

        let timed = contender::execute(&cmds, host.as_deref(), &config);

        let disk_after = engine.as_ref().map(testbed::Engine::disk_usage);
        let stored_after = registry.storage_bytes();
        self.retire(engine);
        if let Some(dir) = scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
        let mut timed = timed;
        if let Some(error) = &mut timed.error {
            error.push_str(&registry_errors(registry, offset));
        }
        self.save_log(fixture, scenario, contender, round, &cmds, &timed);
        let stages = if contender.is_tool() {
            timed
                .printed
                .first()
                .and_then(|p| measure::tool_steps(&p.stdout))
        } else if contender.builds() {
            let outputs: Vec<&str> = timed.printed.iter().map(|p| p.stderr.as_str()).collect();
            Some(measure::plain_progress_steps(&outputs))
        } else {
            None
        };
        let record = RunRecord {
            round,
            seconds: timed.seconds,
            error: timed.error.clone(),
            agent_bytes: match (disk_before, disk_after) {
                (Some(b), Some(a)) => Some(a.saturating_sub(b)),
                _ => None,
            },
            traffic: Traffic::default(),
            pushed_bytes: stored_after as i64 - stored_before as i64,
            stages,
            timeline: if contender.is_tool() {
                timed
                    .printed
                    .first()
                    .map(|p| measure::timeline(&p.stdout))
                    .unwrap_or_default()
            } else {
                Vec::new()
            },
            vertices: {
                let outputs: Vec<&str> = timed.printed.iter().map(|p| p.stderr.as_str()).collect();
                let mut v = measure::vertices(&outputs);
                v.truncate(8);
                v
            },
        };
        let cell = match self.cells.iter().position(|c| {
            c.fixture == fixture.name && c.scenario == scenario && c.contender == contender
        }) {
            Some(i) => i,
            None => {
                self.cells.push(Cell {
                    fixture: fixture.name,
                    scenario,
                    contender,
                    label: contender.label(),
                    commands: cmds.iter().map(|c| c.shell_line()).collect(),
                    runs: Vec::new(),
                });
                self.cells.len() - 1
            }
        };
        self.done += 1;
        let steps = match record.steps() {
            Some((steps, cached)) => format!("  steps ran/cached {}/{cached}", steps - cached),
            None => String::new(),
        };
        let disk = record
            .agent_bytes
            .map(|b| format!("  agent +{:.1} MiB", mib(b)))
            .unwrap_or_default();
        let elapsed = self.started.elapsed().as_secs();
        println!(
            "[{:>3}/{} {:>2}m{:02}s] {} {} {} #{}: {:.2} s{disk}{steps}{}",
            self.done,
            self.total,
            elapsed / 60,
            elapsed % 60,
            fixture.name.as_str(),
            scenario.as_str(),
            contender.id(),
            round + 1,
            record.seconds,
            if record.error.is_some() {
                "  FAILED"
            } else {
                ""
            }
        );
        if let Some(error) = &record.error {
            println!("{error}");
        }
        self.cells[cell].runs.push(record);
        self.pending = Some(Pending {
            cell,
            run: self.cells[cell].runs.len() - 1,
            offset,
        });
        Ok(())
    }
}

impl Bench {
    /// Keeps what a timed run printed in `target/bench/logs/`, for reading after the fact (the
    /// tool's JSON events carry each step's start and end).
    fn save_log(
        &self,
        fixture: &Fixture,
        scenario: Scenario,
        contender: Contender,
        round: u32,
        cmds: &[contender::Cmd],
        timed: &contender::Timed,
    ) {
        let dir = self.out_dir.join("logs");
        let mut text = String::new();
        for (i, cmd) in cmds.iter().enumerate() {
            text.push_str(&format!("$ {}\n", cmd.shell_line()));
            if let Some(p) = timed.printed.get(i) {
                text.push_str(&p.stderr);
                if !p.stdout.is_empty() {
                    text.push_str("--- stdout ---\n");
                    text.push_str(&p.stdout);
                }
            }
        }
        let name = format!(
            "{}-{}-{}-{}.log",
            fixture.name.as_str(),
            scenario.as_str(),
            contender.id(),
            round + 1
        );
        if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join(&name), text))
        {
            eprintln!("warning: cannot keep the log `{name}`: {e}");
        }
    }
}

/// The registry's error lines since `offset` (its answers of 500 name their cause only
/// there), as an addition to a failure's message.
fn registry_errors(registry: &Registry, offset: usize) -> String {
    let log = registry.log();
    let errors: Vec<&str> = log
        .get(offset..)
        .unwrap_or("")
        .lines()
        .filter(|l| l.contains("level=error"))
        .take(5)
        .collect();
    if errors.is_empty() {
        String::new()
    } else {
        format!("\nregistry log:\n{}", errors.join("\n"))
    }
}

/// Bytes as MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

//! The walk over a parsed Dockerfile's instructions: stage names, bases, and the references
//! (`FROM <stage>`, `COPY --from`, `RUN --mount=...,from=`) that make the graph's edges, plus
//! what a stage reads from outside (images, `ADD` from the network) and its `RUN` commands.

use std::collections::{BTreeMap, HashMap};

use parse_dockerfile::{Dockerfile, Instruction};

use super::args::{declare_stage_args, expand, global_args, Var};
use super::graph::find_cycle;
use super::{collapse_whitespace, DockerfileError, LineIndex, MountUse, Stage, StageGraph};

/// Validates and lowercases the `AS` names; rejects duplicates, naming both lines.
pub(super) fn stage_names<'a, 'b: 'a>(
    froms: impl Iterator<Item = &'a parse_dockerfile::FromInstruction<'b>>,
    lines: &LineIndex,
) -> Result<Vec<Option<String>>, DockerfileError> {
    let mut names = Vec::new();
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    for from in froms {
        let line = lines.line(from.from.span.start);
        let Some((_, written)) = &from.as_ else {
            names.push(None);
            continue;
        };
        let name = written.value.to_lowercase();
        if !is_stage_name(&name) {
            return Err(DockerfileError::at(
                line,
                format!(
                    "invalid stage name `{}`: a stage name starts with a letter and holds only \
                     letters, digits, `-`, `_` and `.`",
                    written.value
                ),
            ));
        }
        if let Some(first) = first_seen.get(&name) {
            return Err(DockerfileError::at(
                line,
                format!("duplicate stage name `{name}` (lines {first} and {line})"),
            ));
        }
        first_seen.insert(name.clone(), line);
        names.push(Some(name));
    }
    Ok(names)
}

/// BuildKit's rule for stage names, `^[a-z][a-z0-9-_.]*$`, applied after lowercasing.
fn is_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// A stage before its `COPY --from` and mount references are resolved.
struct Partial {
    name: Option<String>,
    base: String,
    base_stage: Option<usize>,
    platform: Option<String>,
    line: usize,
}

/// Whether an `ADD` source may be fetched from the network rather than read from the context.
///
/// A superset of BuildKit's rule (`gitutil.ParseGitRef` and `isHTTPSource`): any `scheme://`
/// (`http`, `https`, `git`, `ssh`, in any case), git's scp form `[user@]host:path` with any user
/// or none, and any source that names a variable: BuildKit expands `ARG`s and `ENV`s in `ADD`
/// sources, and this walk does not follow a stage's variables, so `ADD ${URL} /x` may be a URL.
/// A local file whose name looks like one of these only costs the fingerprint.
pub(super) fn is_remote(source: &str) -> bool {
    if source.contains('$') || source.contains("://") {
        return true;
    }
    // scp form: `^(?:([a-zA-Z0-9-_]+)@)?([a-zA-Z0-9-.]+):` in BuildKit's sshutil; a `/` before
    // the first `:` makes it a path.
    source.split_once(':').is_some_and(|(before, _)| {
        !before.is_empty()
            && before
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    })
}

/// The frontend image BuildKit runs instead of its built-in Dockerfile frontend: the first word
/// of the `BUILDKIT_SYNTAX` build argument, which wins, else the `# syntax=` directive.
///
/// The directive is looked for in every comment line before the first instruction, in any case
/// and spacing: a superset of where BuildKit reads it, so that none is missed.
fn frontend(text: &str, build_args: &BTreeMap<String, String>) -> Option<String> {
    if let Some(value) = build_args.get("BUILDKIT_SYNTAX") {
        if let Some(image) = value.split_whitespace().next() {
            return Some(image.to_string());
        }
    }
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some(comment) = line.strip_prefix('#') else {
            break;
        };
        let Some((key, value)) = comment.split_once('=') else {
            continue;
        };
        if key.trim().eq_ignore_ascii_case("syntax") {
            if let Some(image) = value.split_whitespace().next() {
                return Some(image.to_string());
            }
        }
    }
    None
}

/// What a stage reads, gathered from its instructions and from the `ONBUILD` triggers of the
/// stage it is based on, and its `RUN` commands and cache mounts (see [`Stage`]).
#[derive(Default)]
struct Reads {
    /// dep -> line of the first instruction needing it, to point cycle errors at.
    deps: BTreeMap<usize, usize>,
    images: Vec<String>,
    remote: Vec<String>,
    runs: Vec<String>,
    mounts: Vec<MountUse>,
    /// The variables the stage's own instructions see: only those it declares (`ARG`).
    stage_vars: HashMap<String, Var>,
}

/// What resolving an instruction's references needs.
struct Scope<'a> {
    lines: &'a LineIndex,
    escape: char,
    vars: &'a HashMap<String, Var>,
    build_args: &'a BTreeMap<String, String>,
    by_name: &'a HashMap<String, usize>,
    count: usize,
}

impl Scope<'_> {
    /// Adds what `instruction` reads to `reads`. An `ONBUILD` instruction reads nothing here: it
    /// runs in a stage that uses this one as its base (see [`Scope::triggers`]).
    fn read(
        &self,
        instruction: &Instruction<'_>,
        reads: &mut Reads,
    ) -> Result<(), DockerfileError> {
        let lines = self.lines;
        match instruction {
            Instruction::Arg(arg) => {
                let line = lines.line(arg.arg.span.start);
                declare_stage_args(
                    &arg.arguments.value,
                    self.escape,
                    self.build_args,
                    self.vars,
                    &mut reads.stage_vars,
                )
                .map_err(|e| DockerfileError::at(line, e))?;
            }
            Instruction::Copy(copy) => {
                let line = lines.line(copy.copy.span.start);
                for flag in copy.options.iter().filter(|f| f.name.value == "from") {
                    let from = self.flag_value(flag, line)?;
                    // `--from=` with an empty value copies from the build context.
                    if from.is_empty() {
                        continue;
                    }
                    self.reference(from, "--from=", line, reads)?;
                }
            }
            Instruction::Add(add) => {
                for source in &add.src {
                    if let parse_dockerfile::Source::Path(path) = source {
                        if is_remote(&path.value) {
                            reads.remote.push(path.value.to_string());
                        }
                    }
                }
            }
            Instruction::Run(run) => {
                reads.runs.push(collapse_whitespace(&match &run.arguments {
                    parse_dockerfile::Command::Shell(text) => text.value.to_string(),
                    parse_dockerfile::Command::Exec(args) => args
                        .value
                        .iter()
                        .map(|a| a.value.as_ref())
                        .collect::<Vec<_>>()
                        .join(" "),
                    // The enum is non-exhaustive; a form it adds names no command here.
                    _ => String::new(),
                }));
                let line = lines.line(run.run.span.start);
                let (mut cached, mut with_secret) = (Vec::new(), false);
                for flag in run.options.iter().filter(|f| f.name.value == "mount") {
                    let mount = self.flag_value(flag, line)?;
                    with_secret |= super::mounts::is_secret(&mount);
                    // A cache mount's id is what the stage's own variables make of it (the
                    // platform args it declares kept as written, for the builder).
                    let raw = flag.value.as_ref().map_or("", |v| v.value.as_ref());
                    let in_scope = expand(raw, self.escape, &reads.stage_vars).map_err(|e| {
                        DockerfileError::at(line, format!("in `--mount={raw}`: {e}"))
                    })?;
                    if let Some(found) = super::mounts::cache_mount(&in_scope) {
                        cached.push(found.map_err(|e| DockerfileError::at(line, e))?);
                    }
                    if let Some(from) = mount_from(&mount) {
                        self.reference(from, "from=", line, reads)?;
                    }
                }
                let command = reads.runs.last().cloned().unwrap_or_default();
                reads
                    .mounts
                    .extend(cached.into_iter().map(|mount| MountUse {
                        mount,
                        command: command.clone(),
                        line,
                        with_secret,
                    }));
            }
            _ => {}
        }
        Ok(())
    }

    /// The value of `flag` (`--from`, `--mount`) on `line`, global `ARG`s expanded.
    fn flag_value(
        &self,
        flag: &parse_dockerfile::Flag<'_>,
        line: usize,
    ) -> Result<String, DockerfileError> {
        let name = &flag.name.value;
        let Some(value) = &flag.value else {
            return Err(DockerfileError::at(
                line,
                format!("`--{name}` needs a value"),
            ));
        };
        expand(&value.value, self.escape, self.vars)
            .map_err(|e| DockerfileError::at(line, format!("in `--{name}={}`: {e}", value.value)))
    }

    /// Adds a `--from` or mount `from=` value (`flag`) on `line`: a stage it names is a
    /// dependency, anything else an image from outside.
    fn reference(
        &self,
        from: String,
        flag: &str,
        line: usize,
        reads: &mut Reads,
    ) -> Result<(), DockerfileError> {
        match resolve(&from, flag, self.by_name, self.count, line)? {
            Some(dep) => {
                reads.deps.entry(dep).or_insert(line);
            }
            None => reads.images.push(from),
        }
        Ok(())
    }

    /// Adds what the `ONBUILD` triggers among `instructions` (a base stage's) read to `reads`:
    /// BuildKit runs them at the start of the stage built `FROM` that stage (and not in the
    /// stages built from that one: triggers are cleared once they ran). Their `COPY --from` and
    /// `--mount=from=` name stages since BuildKit 0.17; before that a stage name there is
    /// read as an image. Either way the edge errs toward the safe side: the stage is built first
    /// and its chain is part of the image's.
    fn triggers(
        &self,
        instructions: &[Instruction<'_>],
        reads: &mut Reads,
    ) -> Result<(), DockerfileError> {
        for instruction in instructions {
            if let Instruction::Onbuild(onbuild) = instruction {
                self.read(&onbuild.instruction, reads)?;
            }
        }
        Ok(())
    }
}

pub(super) fn build(
    dockerfile: &Dockerfile<'_>,
    text: &str,
    lines: &LineIndex,
    build_args: &BTreeMap<String, String>,
) -> Result<StageGraph, DockerfileError> {
    let names = stage_names(dockerfile.stages().map(|stage| stage.from), lines)?;
    let escape = dockerfile
        .parser_directives
        .escape
        .as_ref()
        .map_or('\\', |e| e.value.value);
    let vars = global_args(dockerfile, lines, build_args, escape)?;

    // First the stages themselves: `FROM` only sees the stages above it (BuildKit registers a
    // stage's name after resolving its base), so `FROM node AS node` means the image.
    let mut partials: Vec<Partial> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (index, (stage, name)) in dockerfile.stages().zip(names).enumerate() {
        let from = stage.from;
        let line = lines.line(from.from.span.start);
        let base = expand(&from.image.value, escape, &vars)
            .map_err(|e| DockerfileError::at(line, format!("in `{}`: {e}", from.image.value)))?;
        if base.is_empty() {
            return Err(DockerfileError::at(
                line,
                format!(
                    "base image `{}` expands to an empty string",
                    from.image.value
                ),
            ));
        }
        let mut platform = None;
        for flag in &from.options {
            let flag_name = &flag.name.value;
            if flag_name != "platform" {
                return Err(DockerfileError::at(
                    line,
                    format!("unknown flag `--{flag_name}` on `FROM`"),
                ));
            }
            let Some(value) = &flag.value else {
                return Err(DockerfileError::at(line, "`--platform` needs a value"));
            };
            let value = expand(&value.value, escape, &vars).map_err(|e| {
                DockerfileError::at(line, format!("in `--platform={}`: {e}", value.value))
            })?;
            platform = Some(value);
        }
        let base_stage = by_name.get(&base.to_lowercase()).copied();
        if let Some(name) = &name {
            by_name.insert(name.clone(), index);
        }
        partials.push(Partial {
            name,
            base,
            base_stage,
            platform,
            line,
        });
    }

    // Then the references, which see every stage, even later ones: BuildKit resolves them
    // across the whole file, which is how cycles can arise.
    let count = partials.len();
    let scope = Scope {
        lines,
        escape,
        vars: &vars,
        build_args,
        by_name: &by_name,
        count,
    };
    let stages: Vec<_> = dockerfile.stages().collect();
    let mut all_reads: Vec<Reads> = Vec::with_capacity(count);
    for (stage, partial) in stages.iter().zip(&partials) {
        let mut reads = Reads::default();
        if let Some(base) = partial.base_stage {
            reads.deps.insert(base, partial.line);
            if let Some(base) = stages.get(base) {
                scope.triggers(base.instructions, &mut reads)?;
            }
        } else if partial.base != "scratch" {
            reads.images.push(partial.base.clone());
        }
        for instruction in stage.instructions {
            scope.read(instruction, &mut reads)?;
        }
        all_reads.push(reads);
    }
    let edges: Vec<BTreeMap<usize, usize>> = all_reads.iter().map(|r| r.deps.clone()).collect();

    let graph = StageGraph {
        stages: partials
            .into_iter()
            .zip(all_reads)
            .enumerate()
            .map(|(index, (p, reads))| Stage {
                index,
                name: p.name,
                base: p.base,
                base_stage: p.base_stage,
                platform: p.platform,
                deps: reads.deps.keys().copied().collect(),
                line: p.line,
                images: reads.images,
                remote: reads.remote,
                runs: reads.runs,
                cache_mounts: reads.mounts,
            })
            .collect(),
        frontend: frontend(text, build_args),
    };
    if let Some(cycle) = find_cycle(&graph) {
        let first = cycle.first().copied().unwrap_or(0);
        let second = cycle.get(1).copied().unwrap_or(first);
        let line = edges.get(first).and_then(|deps| deps.get(&second)).copied();
        let message = if cycle.len() <= 2 {
            format!("stage `{}` depends on itself", graph.name(first))
        } else {
            let path: Vec<String> = cycle
                .iter()
                .map(|&i| format!("`{}`", graph.name(i)))
                .collect();
            format!("dependency cycle between stages {}", path.join(" -> "))
        };
        return Err(DockerfileError { line, message });
    }
    Ok(graph)
}

/// The stage a `COPY --from` or mount `from=` value names, if it names one; `flag` is what
/// precedes the value (`--from=`, `from=`), for the error.
fn resolve(
    value: &str,
    flag: &str,
    by_name: &HashMap<String, usize>,
    count: usize,
    line: usize,
) -> Result<Option<usize>, DockerfileError> {
    if !is_integer(value) {
        // Anything that is not a stage name is an image or a named build context.
        return Ok(by_name.get(&value.to_lowercase()).copied());
    }
    match value.parse::<usize>() {
        Ok(index) if index < count => Ok(Some(index)),
        _ => {
            let stages = if count == 1 { "stage" } else { "stages" };
            let message = format!(
                "`{flag}{value}` names stage index {value}, but the Dockerfile has {count} {stages}"
            );
            Err(DockerfileError::at(line, message))
        }
    }
}

/// `^[+-]?[0-9]+$`: what Go's `strconv.Atoi` takes, so what BuildKit reads as a stage index.
pub(super) fn is_integer(value: &str) -> bool {
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The `from=` of one `--mount` value, unless the mount cannot take one.
///
/// The value is comma-separated `key=value` options in CSV quoting, keys case-insensitive.
pub(super) fn mount_from(mount: &str) -> Option<String> {
    let mut from = None;
    let mut tmpfs = false;
    for field in csv_fields(mount) {
        let (key, value) = field.split_once('=').unwrap_or((field.as_str(), ""));
        match key.trim().to_ascii_lowercase().as_str() {
            "from" => from = Some(value.to_string()),
            // A tmpfs mount has no source; BuildKit ignores `from` on it.
            "type" => tmpfs = value.eq_ignore_ascii_case("tmpfs"),
            _ => {}
        }
    }
    from.filter(|from| !tmpfs && !from.is_empty())
}

/// Splits on commas outside double quotes; `""` inside quotes is a literal quote (Go's
/// `encoding/csv`, which BuildKit uses for mount options).
pub(super) fn csv_fields(text: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    fields.push(field);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::test_util::*;
    use expect_test::expect;

    #[test]
    fn two_stage_service() {
        let text = "\
FROM rust:1.82 AS build
WORKDIR /src
COPY . .
RUN cargo build --release

FROM debian:bookworm-slim
COPY --from=build /src/target/release/service /usr/local/bin/
CMD [\"service\"]
";
        expect![[r#"
            StageGraph {
                stages: [
                    Stage {
                        index: 0,
                        name: Some(
                            "build",
                        ),
                        base: "rust:1.82",
                        base_stage: None,
                        platform: None,
                        deps: [],
                        line: 1,
                        images: [
                            "rust:1.82",
                        ],
                        remote: [],
                        runs: [
                            "cargo build --release",
                        ],
                        cache_mounts: [],
                    },
                    Stage {
                        index: 1,
                        name: None,
                        base: "debian:bookworm-slim",
                        base_stage: None,
                        platform: None,
                        deps: [
                            0,
                        ],
                        line: 6,
                        images: [
                            "debian:bookworm-slim",
                        ],
                        remote: [],
                        runs: [],
                        cache_mounts: [],
                    },
                ],
                frontend: None,
            }
        "#]]
        .assert_debug_eq(&graph(text));
        let g = graph(text);
        assert_eq!(g.last(), 1);
        assert_eq!(g.name(0), "build");
        assert_eq!(g.name(1), "stage-1");
        assert_eq!(g.ancestors(1), [0]);
        assert_eq!(g.ancestors(0), Vec::<usize>::new());
        assert_eq!(g.topo_order(), [0, 1]);
        assert_eq!(g.levels(), [vec![0], vec![1]]);
    }

    const FIVE: &str = "\
FROM rust:1.82 AS base
RUN cargo install cargo-chef

FROM base AS compile-server
RUN cargo build -p server

FROM base AS compile-worker
RUN cargo build -p worker

FROM alpine:3.20 AS tools
RUN apk add curl

FROM debian:bookworm-slim AS runtime
COPY --from=tools /usr/bin/curl /usr/bin/
COPY --from=compile-server /server /usr/local/bin/
COPY --from=compile-worker /worker /usr/local/bin/
";

    #[test]
    fn five_stages() {
        check(
            FIVE,
            expect![[r#"
                0 Some("base") base="rust:1.82" base_stage=None platform=None deps=[] line=1
                1 Some("compile-server") base="base" base_stage=Some(0) platform=None deps=[0] line=4
                2 Some("compile-worker") base="base" base_stage=Some(0) platform=None deps=[0] line=7
                3 Some("tools") base="alpine:3.20" base_stage=None platform=None deps=[] line=10
                4 Some("runtime") base="debian:bookworm-slim" base_stage=None platform=None deps=[1, 2, 3] line=13
            "#]],
        );
        let g = graph(FIVE);
        assert_eq!(g.ancestors(4), [1, 2, 3, 0]);
        assert_eq!(g.ancestors(1), [0]);
        assert_eq!(g.ancestors(3), Vec::<usize>::new());
        assert_eq!(g.topo_order(), [0, 1, 2, 3, 4]);
        assert_eq!(g.levels(), [vec![0, 3], vec![1, 2], vec![4]]);
        let mut runtime = g.ancestors(4);
        runtime.push(4);
        assert_eq!(g.levels_of(&runtime), [vec![0, 3], vec![1, 2], vec![4]]);
        // Needs outside the set count as built: without `base`, both compiles start at once.
        assert_eq!(g.levels_of(&[1, 2, 4]), [vec![1, 2], vec![4]]);
        assert_eq!(g.levels_of(&[2, 99]), [vec![2]]);
        assert_eq!(g.find("compile-worker"), Some(2));
        assert_eq!(g.find("RUNTIME"), Some(4));
        assert_eq!(g.find("3"), Some(3));
        assert_eq!(g.find("5"), None);
        assert_eq!(g.find("nope"), None);
        assert_eq!(g.find(""), None);
    }

    #[test]
    fn unnamed_stages_and_numeric_from() {
        check(
            "FROM golang:1.23\nRUN go build -o /app\nFROM alpine\nCOPY --from=0 /app /app\nRUN --mount=type=bind,from=0,target=/x true\n",
            expect![[r#"
                0 None base="golang:1.23" base_stage=None platform=None deps=[] line=1
                1 None base="alpine" base_stage=None platform=None deps=[0] line=3
            "#]],
        );
        let g = graph("FROM a\nFROM b\nFROM c\nCOPY --from=1 / /\n");
        assert_eq!(g.name(2), "stage-2");
        assert_eq!(g.stages.get(2).map(|s| s.deps.clone()), Some(vec![1]));
    }

    #[test]
    fn keywords_and_names_are_case_insensitive() {
        check(
            "from alpine As Builder\nrun true\nFrOm BUILDER aS Final\ncopy --from=bUiLdEr /a /a\n",
            expect![[r#"
                0 Some("builder") base="alpine" base_stage=None platform=None deps=[] line=1
                1 Some("final") base="BUILDER" base_stage=Some(0) platform=None deps=[0] line=3
            "#]],
        );
        let g = graph("FROM alpine AS Builder\n");
        assert_eq!(g.find("BUILDER"), Some(0));
        assert_eq!(g.name(0), "builder");
    }

    #[test]
    fn from_an_image_of_the_same_name_is_the_image() {
        check(
            "FROM node AS node\nFROM node AS app\n",
            expect![[r#"
                0 Some("node") base="node" base_stage=None platform=None deps=[] line=1
                1 Some("app") base="node" base_stage=Some(0) platform=None deps=[0] line=2
            "#]],
        );
    }

    #[test]
    fn empty_base_is_an_error() {
        assert_eq!(
            error("ARG BASE\nFROM alpine\nFROM ${BASE}\n"),
            "line 3: base image `${BASE}` expands to an empty string"
        );
        assert_eq!(
            error("ARG BASE\nFROM ${BASE:?need-a-base}\n"),
            "line 2: in `${BASE:?need-a-base}`: `BASE`: need-a-base"
        );
        assert_eq!(error("FROM ${BASE\n"), "line 1: in `${BASE`: missing `}`");
        assert_eq!(
            error("FROM \"alpine\n"),
            "line 1: in `\"alpine`: missing closing `\"`"
        );
        assert_eq!(error("FROM ${}\n"), "line 1: in `${}`: bad substitution");
    }

    #[test]
    fn run_mount_from() {
        check(
            "FROM rust AS deps\nFROM rust AS vendored\nFROM alpine AS scratchpad\n\
             FROM rust AS build\n\
             RUN --mount=type=cache,target=/root/.cargo \\\n    --mount=target=/deps,FROM=deps \\\n    \
             --mount=type=bind,source=/v,from=Vendored,target=/v cargo build\n\
             RUN --mount=type=tmpfs,from=scratchpad,target=/tmp true\n\
             RUN --mount=type=bind,from=ghcr.io/acme/tools:1,target=/t true\n\
             RUN --mount=\"type=bind,from=scratchpad\" --network=none true\n",
            expect![[r#"
                0 Some("deps") base="rust" base_stage=None platform=None deps=[] line=1
                1 Some("vendored") base="rust" base_stage=None platform=None deps=[] line=2
                2 Some("scratchpad") base="alpine" base_stage=None platform=None deps=[] line=3
                3 Some("build") base="rust" base_stage=None platform=None deps=[0, 1, 2] line=4
            "#]],
        );
        check(
            "ARG TOOLS=tools\nFROM alpine AS tools\nFROM alpine\nRUN --mount=from=$TOOLS,target=/t true\n",
            expect![[r#"
                0 Some("tools") base="alpine" base_stage=None platform=None deps=[] line=2
                1 None base="alpine" base_stage=None platform=None deps=[0] line=3
            "#]],
        );
    }

    #[test]
    fn mount_fields() {
        assert_eq!(
            mount_from("type=bind,from=x,target=/t"),
            Some("x".to_string())
        );
        assert_eq!(mount_from("Type=TMPFS,from=x"), None);
        assert_eq!(mount_from("type=cache,target=/t"), None);
        assert_eq!(mount_from("from=,target=/t"), None);
        assert_eq!(mount_from("\"from=a,b\",ro"), Some("a,b".to_string()));
        assert_eq!(csv_fields("a,\"b \"\"c\"\"\",d"), ["a", "b \"c\"", "d"]);
    }

    #[test]
    fn backtick_escape_with_continuations() {
        check(
            "# escape=`\nARG WIN=mcr.microsoft.com/windows/servercore:ltsc2022\nFROM $WIN `\n  AS build\n\
             RUN dir C:\\ `\n    && echo done\nFROM `\n  build\nCOPY `\n  --from=build `\n  C:\\app C:\\app\n",
            expect![[r#"
                0 Some("build") base="mcr.microsoft.com/windows/servercore:ltsc2022" base_stage=None platform=None deps=[] line=3
                1 None base="build" base_stage=Some(0) platform=None deps=[0] line=7
            "#]],
        );
        // With the backtick as escape, a backslash is an ordinary character.
        check(
            "# escape=`\nFROM alpine AS a\nCOPY --from=a\\ /x /y\n",
            expect![[r#"
                0 Some("a") base="alpine" base_stage=None platform=None deps=[] line=2
            "#]],
        );
    }

    #[test]
    fn directives_and_comments() {
        check(
            "\u{feff}# syntax=docker/dockerfile:1\n# check=error=true\n\n# a comment\nFROM alpine \\\n# inside a continuation\n  AS base\nRUN echo \\\n  # also inside\n  done\nFROM base\n",
            expect![[r#"
                0 Some("base") base="alpine" base_stage=None platform=None deps=[] line=5
                1 None base="base" base_stage=Some(0) platform=None deps=[0] line=11
            "#]],
        );
    }

    #[test]
    fn onbuild_triggers_run_in_the_stage_built_from_theirs() {
        // The stage that declares them does not run them.
        check(
            "FROM alpine AS a\nFROM alpine AS b\nONBUILD COPY --from=a / /\n",
            expect![[r#"
                0 Some("a") base="alpine" base_stage=None platform=None deps=[] line=1
                1 Some("b") base="alpine" base_stage=None platform=None deps=[] line=2
            "#]],
        );
        let text = "FROM scratch AS tools\nFROM scratch AS base\nONBUILD COPY --from=tools / /\n\
                    ONBUILD COPY --from=nginx:latest / /\nONBUILD ADD https://example.com/a /a\n\
                    ONBUILD RUN make\nRUN true\nFROM base AS child\nRUN test\nFROM child AS grandchild\n";
        check(
            text,
            expect![[r#"
                0 Some("tools") base="scratch" base_stage=None platform=None deps=[] line=1
                1 Some("base") base="scratch" base_stage=None platform=None deps=[] line=2
                2 Some("child") base="base" base_stage=Some(1) platform=None deps=[0, 1] line=8
                3 Some("grandchild") base="child" base_stage=Some(2) platform=None deps=[2] line=10
            "#]],
        );
        let g = graph(text);
        assert!(g.stages[1].images.is_empty() && g.stages[1].remote.is_empty());
        assert_eq!(g.stages[1].runs, ["true"]);
        assert_eq!(g.stages[2].images, ["nginx:latest"]);
        assert_eq!(g.stages[2].remote, ["https://example.com/a"]);
        assert_eq!(g.stages[2].runs, ["make", "test"]);
        // Triggers run once: the grandchild reads none of them.
        assert!(g.stages[3].images.is_empty() && g.stages[3].remote.is_empty());
        assert_eq!(
            error("FROM scratch AS a\nONBUILD COPY --from=5 / /\nFROM a\n"),
            "line 2: `--from=5` names stage index 5, but the Dockerfile has 2 stages"
        );
    }

    #[test]
    fn add_sources_that_may_come_from_the_network() {
        for remote in [
            "https://example.com/a.tgz",
            "HTTP://example.com/a",
            "git://example.com/a.git",
            "ssh://git@example.com/a.git",
            "git@github.com:acme/x.git",
            "deploy@git.example.com:acme/lib.git",
            "git.example.com:acme/lib.git",
            "${URL}",
            "$SRC",
            "dir/${NAME}.txt",
        ] {
            assert!(is_remote(remote), "{remote}");
        }
        for local in [
            "local.txt",
            "src/",
            "./a:b",
            "dir/a:b",
            ".",
            "*.rs",
            "/abs/path",
        ] {
            assert!(!is_remote(local), "{local}");
        }
        let g = graph("FROM scratch\nARG URL\nADD ${URL} local.txt /x/\nADD --chmod=644 $SRC /y\n");
        assert_eq!(g.stages[0].remote, ["${URL}", "$SRC"]);
    }

    #[test]
    fn the_frontend_image() {
        let with = |text: &str, args: &[(&str, &str)]| {
            let args = args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            StageGraph::parse_with_args(text, &args).unwrap().frontend
        };
        assert_eq!(with("FROM scratch\n", &[]), None);
        let directive = "# syntax=docker/dockerfile:1\nFROM scratch\n";
        assert_eq!(with(directive, &[]).as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(
            with(
                "# escape=`\n#  SYNTAX = example.com/front:2 extra\nFROM scratch\n",
                &[]
            )
            .as_deref(),
            Some("example.com/front:2")
        );
        // Not a directive once an instruction came.
        assert_eq!(
            with("FROM scratch\n# syntax=docker/dockerfile:1\n", &[]),
            None
        );
        // The build argument wins; its first word is the image.
        assert_eq!(
            with(directive, &[("BUILDKIT_SYNTAX", "other/front:1 --flag")]).as_deref(),
            Some("other/front:1")
        );
    }

    #[test]
    fn external_images_are_not_deps() {
        check(
            "FROM alpine AS a\nCOPY --from=nginx:latest /etc/nginx /x\nCOPY --from=ghcr.io/acme/a:1 / /\n\
             COPY --from= /ctx /ctx\nCOPY --chown=1:1 --link src dst\nFROM later AS b\nFROM scratch AS later\n",
            expect![[r#"
                0 Some("a") base="alpine" base_stage=None platform=None deps=[] line=1
                1 Some("b") base="later" base_stage=None platform=None deps=[] line=6
                2 Some("later") base="scratch" base_stage=None platform=None deps=[] line=7
            "#]],
        );
    }

    #[test]
    fn images_from_outside_and_remote_sources_are_recorded() {
        let graph = StageGraph::parse(
            "ARG V=1.82\nFROM rust:${V} AS a\nCOPY --from=nginx:latest /etc/nginx /x\n\
             RUN --mount=type=bind,from=ghcr.io/acme/tools@sha256:abc,target=/t true\n\
             ADD https://example.com/a.tgz git@github.com:acme/x.git local.txt /d/\n\
             FROM a AS b\nCOPY --from=a / /\nFROM scratch\n",
        )
        .unwrap();
        assert_eq!(
            graph.stages[0].images,
            ["rust:1.82", "nginx:latest", "ghcr.io/acme/tools@sha256:abc"]
        );
        assert_eq!(
            graph.stages[0].remote,
            ["https://example.com/a.tgz", "git@github.com:acme/x.git"]
        );
        assert!(graph.stages[1].images.is_empty() && graph.stages[2].images.is_empty());
        assert_eq!(graph.stages[0].runs, ["true"]);
        let graph = StageGraph::parse(
            "FROM scratch AS a\nRUN [\"/bin/busybox\", \"--install\", \"-s\"]\nRUN make \\\n  &&  test\n",
        )
        .unwrap();
        assert_eq!(
            graph.stages[0].runs,
            ["/bin/busybox --install -s", "make && test"]
        );
    }

    #[test]
    fn stage_index_errors() {
        assert_eq!(
            error("FROM alpine\nFROM alpine\nCOPY --from=2 /x /x\n"),
            "line 3: `--from=2` names stage index 2, but the Dockerfile has 2 stages"
        );
        assert_eq!(
            error("FROM alpine\nCOPY --from=-1 /x /x\n"),
            "line 2: `--from=-1` names stage index -1, but the Dockerfile has 1 stage"
        );
        assert_eq!(
            error("FROM alpine\nRUN --mount=from=99999999999999999999999 true\n"),
            "line 2: `from=99999999999999999999999` names stage index 99999999999999999999999, but the Dockerfile has 1 stage"
        );
    }

    #[test]
    fn name_errors() {
        assert_eq!(
            error("FROM alpine AS x\nRUN true\nFROM alpine AS y\nFROM alpine AS X\n"),
            "line 4: duplicate stage name `x` (lines 1 and 4)"
        );
        assert_eq!(
            error("FROM alpine AS x\n\nFROM alpine AS x\n"),
            "line 3: duplicate stage name `x` (lines 1 and 3)"
        );
        assert_eq!(
            error("FROM alpine AS 1st\n"),
            "line 1: invalid stage name `1st`: a stage name starts with a letter and holds only letters, digits, `-`, `_` and `.`"
        );
        assert!(error("FROM alpine AS a/b\n").starts_with("line 1: invalid stage name `a/b`"));
        assert!(error("FROM alpine AS ${X}\n").starts_with("line 1: invalid stage name `${X}`"));
    }

    #[test]
    fn cache_mounts_are_read_with_their_run() {
        let g = graph(
            "ARG REG=/usr/local/cargo/registry\nFROM rust AS build\nARG REG\nRUN --mount=type=cache,target=$REG \\\n    --mount=type=cache,id=target,target=/app/target,sharing=locked cargo build\nRUN --mount=type=secret,id=npm --mount=type=cache,target=/root/.npm npm ci\nRUN --mount=type=bind,from=alpine,target=/x true\n",
        );
        let mounts = &g.stages[0].cache_mounts;
        let ids: Vec<(&str, &str, usize, bool)> = mounts
            .iter()
            .map(|u| {
                (
                    u.mount.id.as_str(),
                    u.command.as_str(),
                    u.line,
                    u.with_secret,
                )
            })
            .collect();
        assert_eq!(
            ids,
            [
                ("/usr/local/cargo/registry", "cargo build", 4, false),
                ("target", "cargo build", 4, false),
                ("/root/.npm", "npm ci", 6, true),
            ]
        );
        assert_eq!(mounts[1].mount.sharing.as_deref(), Some("locked"));
        // Inside a stage, a variable counts only once the stage declares it, as in BuildKit:
        // a platform arg it declares is left for the builder, one it does not is empty.
        let ids = |text: &str| -> Vec<String> {
            graph(text).stages[0]
                .cache_mounts
                .iter()
                .map(|u| u.mount.id.clone())
                .collect()
        };
        assert_eq!(
            ids("FROM rust\nRUN --mount=type=cache,id=c-$TARGETARCH,target=/c true\n"),
            ["c-"]
        );
        assert_eq!(
            ids("FROM rust\nARG TARGETARCH\nRUN --mount=type=cache,id=c-$TARGETARCH,target=/c true\n"),
            ["c-$TARGETARCH"]
        );
        assert_eq!(
            ids("ARG V=1\nFROM rust\nRUN --mount=type=cache,id=a$V,target=/c true\nARG V\nRUN --mount=type=cache,id=b$V,target=/c true\nARG W=2\nRUN --mount=type=cache,id=c$W,target=/c true\n"),
            ["a", "b1", "c2"]
        );
        assert_eq!(
            error("FROM rust\nRUN --mount=type=cache,id=x true\n"),
            "line 2: `--mount=type=cache,id=x`: a cache mount needs a `target`"
        );
    }
}

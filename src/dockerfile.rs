//! The stage graph of a Dockerfile: which `FROM` stages exist and which stages each one needs.
//!
//! Pure: text in, graph out. The syntax (continuations, comments, parser directives, heredocs)
//! is parse-dockerfile's job, except for the heredocs it cannot read yet (see
//! `mask_heredocs`); this module adds what BuildKit's dockerfile frontend does on top: global
//! `ARG` substitution, case-insensitive stage names, and the dependencies that `FROM <stage>`,
//! `COPY --from` and `RUN --mount=...,from=` create.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::fmt;

use parse_dockerfile::{Dockerfile, Instruction};

/// One `FROM` stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Position among the stages, from 0 (what a numeric `--from` names).
    pub index: usize,
    /// The `AS` name, lowercased: BuildKit compares stage names case-insensitively.
    pub name: Option<String>,
    /// The `FROM` image after global `ARG` substitution: `scratch`, `rust:1.82`, or an earlier
    /// stage's name as written.
    pub base: String,
    /// The earlier stage that `base` names, if any.
    pub base_stage: Option<usize>,
    /// The `--platform` value after global `ARG` substitution, if given.
    pub platform: Option<String>,
    /// Stages this stage needs (its base stage, `COPY --from`, `RUN --mount=...,from=`),
    /// sorted and without duplicates.
    pub deps: Vec<usize>,
    /// 1-based line of the stage's `FROM`.
    pub line: usize,
    /// Images from outside the Dockerfile that the stage reads, as written after `ARG`
    /// substitution: its base (unless a stage or `scratch`), `COPY --from` and mount `from=`
    /// values that name no stage.
    pub images: Vec<String>,
    /// `ADD` sources that BuildKit fetches from the network (URLs, git repositories).
    pub remote: Vec<String>,
    /// The commands of its `RUN` instructions, whitespace collapsed: BuildKit's error for a
    /// failed step quotes the command, which names the stage where the progress does not.
    pub runs: Vec<String>,
}

/// `text` with line continuations removed and each run of whitespace made one space, as
/// commands are compared.
pub fn collapse_whitespace(text: &str) -> String {
    text.replace("\\\n", " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The parsed stage graph of a Dockerfile.
///
/// A graph from [`StageGraph::parse`] has at least one stage and no dependency cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageGraph {
    /// The stages in Dockerfile order; `stages[i].index == i`.
    pub stages: Vec<Stage>,
}

/// Why a Dockerfile could not be turned into a stage graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerfileError {
    /// 1-based line the problem is on, when it is on one.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for DockerfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for DockerfileError {}

impl DockerfileError {
    fn at(line: usize, message: impl Into<String>) -> DockerfileError {
        DockerfileError {
            line: Some(line),
            message: message.into(),
        }
    }
}

/// The `ARG`s BuildKit defines by itself in the global scope. Their values depend on the
/// builder and the target, which this module does not know, so unless the caller passes them
/// a reference to them is left as written (e.g. `--platform=$BUILDPLATFORM` stays so).
const PLATFORM_ARGS: &[&str] = &[
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
];

impl StageGraph {
    /// Parses a Dockerfile, substituting global `ARG` defaults.
    pub fn parse(text: &str) -> Result<StageGraph, DockerfileError> {
        StageGraph::parse_with_args(text, &BTreeMap::new())
    }

    /// Parses a Dockerfile as `docker build --build-arg` would see it: a value in `build_args`
    /// replaces the default of a global `ARG` of that name, and may give the builder-defined
    /// platform args (`TARGETARCH`, `BUILDPLATFORM`, ...). Other names are ignored, as BuildKit
    /// ignores build args that no global `ARG` declares.
    pub fn parse_with_args(
        text: &str,
        build_args: &BTreeMap<String, String>,
    ) -> Result<StageGraph, DockerfileError> {
        // parse-dockerfile strips a BOM itself; doing it here keeps its spans and ours aligned.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let err = match parse_dockerfile::parse(text) {
            Ok(dockerfile) => return build(&dockerfile, &LineIndex::new(text), build_args),
            Err(err) => err,
        };
        // parse-dockerfile reads a heredoc only right after `RUN`'s flags or as a `COPY`/`ADD`
        // source; BuildKit also reads `RUN cat <<EOF > f` and several heredocs per `RUN`, whose
        // bodies parse-dockerfile then takes for instructions. Retry with the heredocs masked.
        let masked = mask_heredocs(text);
        let text = masked.as_deref().unwrap_or(text);
        if masked.is_some() {
            if let Ok(dockerfile) = parse_dockerfile::parse(text) {
                return build(&dockerfile, &LineIndex::new(text), build_args);
            }
        }
        // `parse` also rejects exactly repeated stage names, naming only the second line.
        // `parse_iter` does not, so if it succeeds the problem is a duplicate, which we report
        // with both lines.
        let instructions = parse_dockerfile::parse_iter(text)
            .and_then(|instructions| instructions.collect::<Result<Vec<_>, _>>());
        if let Ok(instructions) = instructions {
            let froms = instructions.iter().filter_map(|i| match i {
                Instruction::From(from) => Some(from),
                _ => None,
            });
            stage_names(froms, &LineIndex::new(text))?;
        }
        Err(from_parser(err))
    }

    /// A stage by name (case-insensitive) or by decimal index, as `--target` and `COPY --from`
    /// accept.
    pub fn find(&self, name_or_index: &str) -> Option<usize> {
        if !name_or_index.is_empty() && name_or_index.bytes().all(|b| b.is_ascii_digit()) {
            let index = name_or_index.parse::<usize>().ok()?;
            return (index < self.stages.len()).then_some(index);
        }
        let name = name_or_index.to_lowercase();
        self.stages
            .iter()
            .position(|stage| stage.name.as_deref() == Some(name.as_str()))
    }

    /// Index of the last stage, the one `docker build` builds without `--target`.
    pub fn last(&self) -> usize {
        self.stages.len().saturating_sub(1)
    }

    /// Display name: the name, or `stage-N` for unnamed ones (BuildKit's own label).
    pub fn label(&self, index: usize) -> String {
        match self.stages.get(index).and_then(|stage| stage.name.as_ref()) {
            Some(name) => name.clone(),
            None => format!("stage-{index}"),
        }
    }

    /// Every stage that `index` needs, transitively, nearest first (breadth-first from `index`;
    /// ties in Dockerfile order), without `index` itself.
    pub fn ancestors(&self, index: usize) -> Vec<usize> {
        let mut seen = BTreeSet::from([index]);
        let mut result = Vec::new();
        let mut frontier = vec![index];
        while !frontier.is_empty() {
            // A BTreeSet per distance gives "ties in Dockerfile order".
            let mut next = BTreeSet::new();
            for stage in frontier {
                for &dep in self.deps_of(stage) {
                    if dep < self.stages.len() && seen.insert(dep) {
                        next.insert(dep);
                    }
                }
            }
            result.extend(next.iter().copied());
            frontier = next.into_iter().collect();
        }
        result
    }

    /// A dependency order of all stages: every stage after those it needs; ties in Dockerfile
    /// order (Kahn's algorithm with the smallest index first).
    ///
    /// Stages on a cycle, which only a hand-built graph can have, come last in index order.
    pub fn topo_order(&self) -> Vec<usize> {
        let n = self.stages.len();
        let mut waiting_on = vec![0usize; n];
        let mut dependents = vec![Vec::new(); n];
        for stage in 0..n {
            for &dep in self.deps_of(stage) {
                if let (Some(count), Some(list)) =
                    (waiting_on.get_mut(stage), dependents.get_mut(dep))
                {
                    *count += 1;
                    list.push(stage);
                }
            }
        }
        let mut ready: BinaryHeap<Reverse<usize>> = (0..n)
            .filter(|&i| waiting_on.get(i) == Some(&0))
            .map(Reverse)
            .collect();
        let mut order = Vec::with_capacity(n);
        let mut placed = vec![false; n];
        while let Some(Reverse(stage)) = ready.pop() {
            order.push(stage);
            if let Some(slot) = placed.get_mut(stage) {
                *slot = true;
            }
            for &dependent in dependents.get(stage).into_iter().flatten() {
                if let Some(count) = waiting_on.get_mut(dependent) {
                    *count -= 1;
                    if *count == 0 {
                        ready.push(Reverse(dependent));
                    }
                }
            }
        }
        order.extend((0..n).filter(|&i| placed.get(i) == Some(&false)));
        order
    }

    /// All stages grouped in "waves": wave k holds the stages whose needs are all in earlier
    /// waves, i.e. the stages that can build in parallel once the earlier waves are done.
    pub fn levels(&self) -> Vec<Vec<usize>> {
        let all: Vec<usize> = (0..self.stages.len()).collect();
        self.levels_of(&all)
    }

    /// The stages in `set` grouped in waves like [`StageGraph::levels`]; needs outside `set`
    /// count as already built. Pass a stage and its [`StageGraph::ancestors`] for the waves that
    /// build one target. Each wave is in index order.
    pub fn levels_of(&self, set: &[usize]) -> Vec<Vec<usize>> {
        let members: BTreeSet<usize> = set
            .iter()
            .copied()
            .filter(|&i| i < self.stages.len())
            .collect();
        let mut depth = BTreeMap::new();
        let mut levels: Vec<Vec<usize>> = Vec::new();
        // Topological order means a stage's needs have their depth before it does.
        for stage in self.topo_order() {
            if !members.contains(&stage) {
                continue;
            }
            let level = self
                .deps_of(stage)
                .iter()
                .filter_map(|dep| depth.get(dep))
                .map(|&d: &usize| d + 1)
                .max()
                .unwrap_or(0);
            depth.insert(stage, level);
            while levels.len() <= level {
                levels.push(Vec::new());
            }
            if let Some(wave) = levels.get_mut(level) {
                wave.push(stage);
            }
        }
        for wave in &mut levels {
            wave.sort_unstable();
        }
        levels
    }

    fn deps_of(&self, index: usize) -> &[usize] {
        self.stages
            .get(index)
            .map_or(&[], |stage| stage.deps.as_slice())
    }
}

fn from_parser(err: parse_dockerfile::Error) -> DockerfileError {
    // Line 0 is how parse-dockerfile says "no FROM at all"; the alternate form leaves out its
    // own "at line N column M" suffix, since our Display adds the line.
    match err.line() {
        0 => DockerfileError {
            line: None,
            message: "no `FROM` instruction: a Dockerfile needs at least one stage".to_string(),
        },
        line => DockerfileError {
            line: Some(line),
            message: format!("{err:#}"),
        },
    }
}

/// Maps byte offsets to 1-based line numbers.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        LineIndex { starts }
    }

    fn line(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

/// Validates and lowercases the `AS` names; rejects duplicates, naming both lines.
fn stage_names<'a, 'b: 'a>(
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

/// Whether an `ADD` source is fetched from the network rather than read from the context.
fn is_remote(source: &str) -> bool {
    source.contains("://") || source.starts_with("git@")
}

fn build(
    dockerfile: &Dockerfile<'_>,
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
    // dep -> line of the first instruction needing it, per stage, to point cycle errors at.
    let mut edges: Vec<BTreeMap<usize, usize>> = Vec::with_capacity(count);
    let mut outside: Vec<(Vec<String>, Vec<String>, Vec<String>)> = Vec::with_capacity(count);
    for (stage, partial) in dockerfile.stages().zip(&partials) {
        let mut deps = BTreeMap::new();
        let (mut images, mut remote, mut runs) = (Vec::new(), Vec::new(), Vec::new());
        if let Some(base) = partial.base_stage {
            deps.insert(base, partial.line);
        } else if partial.base != "scratch" {
            images.push(partial.base.clone());
        }
        // ONBUILD instructions run in a later build that uses this image, not in this one.
        for instruction in stage.instructions {
            match instruction {
                Instruction::Copy(copy) => {
                    let line = lines.line(copy.copy.span.start);
                    for flag in copy.options.iter().filter(|f| f.name.value == "from") {
                        let Some(value) = &flag.value else {
                            return Err(DockerfileError::at(line, "`--from` needs a value"));
                        };
                        let from = expand(&value.value, escape, &vars).map_err(|e| {
                            DockerfileError::at(line, format!("in `--from={}`: {e}", value.value))
                        })?;
                        // `--from=` with an empty value copies from the build context.
                        if from.is_empty() {
                            continue;
                        }
                        match resolve(&from, "--from=", &by_name, count, line)? {
                            Some(dep) => {
                                deps.entry(dep).or_insert(line);
                            }
                            None => images.push(from),
                        }
                    }
                }
                Instruction::Add(add) => {
                    for source in &add.src {
                        if let parse_dockerfile::Source::Path(path) = source {
                            if is_remote(&path.value) {
                                remote.push(path.value.to_string());
                            }
                        }
                    }
                }
                Instruction::Run(run) => {
                    runs.push(collapse_whitespace(&match &run.arguments {
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
                    for flag in run.options.iter().filter(|f| f.name.value == "mount") {
                        let Some(value) = &flag.value else {
                            return Err(DockerfileError::at(line, "`--mount` needs a value"));
                        };
                        let mount = expand(&value.value, escape, &vars).map_err(|e| {
                            DockerfileError::at(line, format!("in `--mount={}`: {e}", value.value))
                        })?;
                        if let Some(from) = mount_from(&mount) {
                            match resolve(&from, "from=", &by_name, count, line)? {
                                Some(dep) => {
                                    deps.entry(dep).or_insert(line);
                                }
                                None => images.push(from),
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        edges.push(deps);
        outside.push((images, remote, runs));
    }

    let graph = StageGraph {
        stages: partials
            .into_iter()
            .zip(edges.iter().zip(outside))
            .enumerate()
            .map(|(index, (p, (deps, (images, remote, runs))))| Stage {
                index,
                name: p.name,
                base: p.base,
                base_stage: p.base_stage,
                platform: p.platform,
                deps: deps.keys().copied().collect(),
                line: p.line,
                images,
                remote,
                runs,
            })
            .collect(),
    };
    if let Some(cycle) = find_cycle(&graph) {
        let first = cycle.first().copied().unwrap_or(0);
        let second = cycle.get(1).copied().unwrap_or(first);
        let line = edges.get(first).and_then(|deps| deps.get(&second)).copied();
        let message = if cycle.len() <= 2 {
            format!("stage `{}` depends on itself", graph.label(first))
        } else {
            let path: Vec<String> = cycle
                .iter()
                .map(|&i| format!("`{}`", graph.label(i)))
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

/// A copy of `text` in which the heredocs of `RUN`, `COPY` and `ADD` (and `ONBUILD` ones) can no
/// longer be seen: each body line becomes an empty line, so line numbers stay, and `<<` on the
/// instruction becomes `__`. The stage graph needs nothing from heredocs.
///
/// `None` when there is no heredoc, or one has no closing line (the parse error then stands).
fn mask_heredocs(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let escape = escape_directive(&lines);
    let mut out = String::with_capacity(text.len());
    let mut found = false;
    let mut i = 0;
    while let Some(&line) = lines.get(i) {
        i += 1;
        let trimmed = line.trim_start();
        if trimmed.trim_end().is_empty() || trimmed.starts_with('#') {
            out.push_str(line);
            continue;
        }
        // The whole instruction: continuation lines, and comment or empty lines among them.
        let mut instruction = vec![line];
        let mut logical = String::new();
        let mut current = line;
        'instruction: while let Some(joined) = continued(current, escape) {
            logical.push_str(joined);
            logical.push(' ');
            // The next line that is not empty or a comment goes on with the instruction.
            loop {
                let Some(&next) = lines.get(i) else {
                    break 'instruction;
                };
                i += 1;
                instruction.push(next);
                let next_trimmed = next.trim_start();
                if !(next_trimmed.trim_end().is_empty() || next_trimmed.starts_with('#')) {
                    current = next;
                    break;
                }
            }
        }
        if continued(current, escape).is_none() {
            logical.push_str(current);
        }
        let delimiters = heredoc_delimiters(&logical, escape);
        if delimiters.is_empty() {
            instruction.iter().for_each(|l| out.push_str(l));
            continue;
        }
        found = true;
        instruction
            .iter()
            .for_each(|l| out.push_str(&l.replace("<<", "__")));
        for (strip_tabs, delimiter) in delimiters {
            loop {
                let body = lines.get(i)?;
                i += 1;
                out.push_str(if body.ends_with('\n') { "\n" } else { "" });
                let mut content = body.trim_end_matches(['\n', '\r']);
                if strip_tabs {
                    content = content.trim_start_matches('\t');
                }
                if content == delimiter {
                    break;
                }
            }
        }
    }
    found.then_some(out)
}

/// The line without its continuation escape, if it ends with one (before trailing whitespace).
fn continued(line: &str, escape: char) -> Option<&str> {
    line.trim_end().strip_suffix(escape)
}

/// The `# escape=` parser directive among the first lines; `\` if there is none.
fn escape_directive(lines: &[&str]) -> char {
    for line in lines {
        let Some(comment) = line.strip_prefix('#') else {
            break;
        };
        let comment = comment.trim();
        let Some(key_len) = comment
            .get(..6)
            .filter(|k| k.eq_ignore_ascii_case("escape"))
            .map(str::len)
        else {
            continue;
        };
        let value = comment.get(key_len..).unwrap_or_default().trim_start();
        if let Some(value) = value.strip_prefix('=') {
            return if value.trim() == "`" { '`' } else { '\\' };
        }
    }
    '\\'
}

/// The heredocs an instruction opens, in order, as (strip leading tabs, delimiter), if it is
/// one that takes heredocs. Like BuildKit, a heredoc is a shell word `[n]<<[-]WORD` with
/// `WORD` optionally quoted.
fn heredoc_delimiters(logical: &str, escape: char) -> Vec<(bool, String)> {
    let words = split_words(logical, escape);
    let mut words = words.iter().map(String::as_str);
    let mut keyword = words.next().unwrap_or_default().to_ascii_uppercase();
    if keyword == "ONBUILD" {
        keyword = words.next().unwrap_or_default().to_ascii_uppercase();
    }
    if !matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") {
        return Vec::new();
    }
    words
        .filter_map(|word| {
            let rest = word
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .strip_prefix("<<")?;
            let (strip_tabs, rest) = match rest.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, rest),
            };
            let delimiter: String = rest.chars().filter(|&c| c != '"' && c != '\'').collect();
            (!rest.contains('<') && !delimiter.is_empty()).then_some((strip_tabs, delimiter))
        })
        .collect()
}

/// `^[+-]?[0-9]+$`: what Go's `strconv.Atoi` takes, so what BuildKit reads as a stage index.
fn is_integer(value: &str) -> bool {
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The `from=` of one `--mount` value, unless the mount cannot take one.
///
/// The value is comma-separated `key=value` options in CSV quoting, keys case-insensitive.
fn mount_from(mount: &str) -> Option<String> {
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
fn csv_fields(text: &str) -> Vec<String> {
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

/// Finds a dependency cycle, as the stages along it with the first repeated at the end.
/// Iterative depth-first search, so a long chain of stages cannot overflow the stack.
fn find_cycle(graph: &StageGraph) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let n = graph.stages.len();
    let mut marks = vec![Mark::New; n];
    for root in 0..n {
        if marks.get(root) != Some(&Mark::New) {
            continue;
        }
        if let Some(m) = marks.get_mut(root) {
            *m = Mark::OnPath;
        }
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        while let Some((stage, next)) = path.last_mut() {
            let stage = *stage;
            let Some(&dep) = graph.deps_of(stage).get(*next) else {
                if let Some(m) = marks.get_mut(stage) {
                    *m = Mark::Done;
                }
                path.pop();
                continue;
            };
            *next += 1;
            match marks.get(dep) {
                Some(Mark::New) => {
                    if let Some(m) = marks.get_mut(dep) {
                        *m = Mark::OnPath;
                    }
                    path.push((dep, 0));
                }
                Some(Mark::OnPath) => {
                    let start = path.iter().position(|&(s, _)| s == dep)?;
                    let mut cycle: Vec<usize> = path
                        .get(start..)
                        .unwrap_or_default()
                        .iter()
                        .map(|&(s, _)| s)
                        .collect();
                    cycle.push(dep);
                    return Some(cycle);
                }
                _ => {}
            }
        }
    }
    None
}

/// A variable as `FROM` and the flags see it.
#[derive(Debug, Clone)]
enum Var {
    Value(String),
    /// Known only to the builder (the platform args): references are kept as written.
    Opaque,
}

/// The global `ARG`s (those before the first `FROM`) with their values.
fn global_args(
    dockerfile: &Dockerfile<'_>,
    lines: &LineIndex,
    build_args: &BTreeMap<String, String>,
    escape: char,
) -> Result<HashMap<String, Var>, DockerfileError> {
    let mut vars = HashMap::new();
    for &name in PLATFORM_ARGS {
        let var = build_args
            .get(name)
            .map_or(Var::Opaque, |v| Var::Value(v.clone()));
        vars.insert(name.to_string(), var);
    }
    for arg in dockerfile.global_args() {
        let line = lines.line(arg.arg.span.start);
        for word in split_words(&arg.arguments.value, escape) {
            let (name, default) = match word.split_once('=') {
                Some((name, default)) => (name.to_string(), Some(default)),
                None => (word.clone(), None),
            };
            let var = if let Some(value) = build_args.get(&name) {
                Var::Value(value.clone())
            } else if let Some(default) = default {
                // A default may use the global args declared before it.
                let value = expand(default, escape, &vars)
                    .map_err(|e| DockerfileError::at(line, format!("in `ARG {word}`: {e}")))?;
                Var::Value(value)
            } else if PLATFORM_ARGS.contains(&name.as_str()) {
                // `ARG TARGETARCH` only makes the builder's value visible; it stays what it was.
                continue;
            } else {
                // Declared without a default: set, but empty (so `${X-d}` gives "", `${X:-d}` d).
                Var::Value(String::new())
            };
            vars.insert(name, var);
        }
    }
    Ok(vars)
}

/// Splits an `ARG` line into words at whitespace outside quotes, keeping quotes and escapes
/// (BuildKit's `parseWords`); [`expand`] removes them later.
fn split_words(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                word.push(c);
                if c == q {
                    quote = None;
                } else if c == escape && q == '"' {
                    word.extend(chars.next());
                }
            }
            None if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            None => {
                word.push(c);
                if c == '"' || c == '\'' {
                    quote = Some(c);
                } else if c == escape {
                    word.extend(chars.next());
                }
            }
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Expands one word the way BuildKit's shell lexer does for `FROM` and flags: removes quotes
/// and escapes, and substitutes `$X`, `${X}`, `${X:-d}`, `${X-d}`, `${X:+a}`, `${X+a}`,
/// `${X:?m}` and `${X?m}`. An unset variable is empty. Other `${...}` forms are kept as written,
/// as are references to [`Var::Opaque`] variables.
fn expand(word: &str, escape: char, vars: &HashMap<String, Var>) -> Result<String, String> {
    let mut lexer = Lexer {
        chars: word.chars().collect(),
        pos: 0,
        nesting: 0,
        escape,
        vars,
    };
    lexer.word(None)
}

/// How deep `${X:-${Y:-...}}` may nest.
const MAX_NESTING: usize = 32;

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    nesting: usize,
    escape: char,
    vars: &'a HashMap<String, Var>,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn since(&self, start: usize) -> String {
        self.chars
            .get(start..self.pos)
            .unwrap_or_default()
            .iter()
            .collect()
    }

    /// Up to the end, or up to an unquoted `stop` (consumed).
    fn word(&mut self, stop: Option<char>) -> Result<String, String> {
        let mut out = String::new();
        loop {
            let Some(c) = self.bump() else {
                return match stop {
                    Some(stop) => Err(format!("missing `{stop}`")),
                    None => Ok(out),
                };
            };
            if Some(c) == stop {
                return Ok(out);
            }
            if c == self.escape {
                // The escaped character is literal; an escape at the very end vanishes.
                out.extend(self.bump());
            } else if c == '\'' {
                loop {
                    match self.bump() {
                        Some('\'') => break,
                        Some(c) => out.push(c),
                        None => return Err("missing closing `'`".to_string()),
                    }
                }
            } else if c == '"' {
                self.double_quoted(&mut out)?;
            } else if c == '$' {
                self.dollar(&mut out)?;
            } else {
                out.push(c);
            }
        }
    }

    fn double_quoted(&mut self, out: &mut String) -> Result<(), String> {
        loop {
            match self.bump() {
                Some('"') => return Ok(()),
                Some('$') => self.dollar(out)?,
                Some(c) if c == self.escape => match self.peek() {
                    // Inside double quotes the escape only escapes these; otherwise it is literal.
                    Some(next) if next == '"' || next == '$' || next == self.escape => {
                        self.pos += 1;
                        out.push(next);
                    }
                    _ => out.push(c),
                },
                Some(c) => out.push(c),
                None => return Err("missing closing `\"`".to_string()),
            }
        }
    }

    /// After a `$`.
    fn dollar(&mut self, out: &mut String) -> Result<(), String> {
        let start = self.pos.saturating_sub(1);
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                self.braced(start, out)
            }
            Some(c) if is_name_char(c) => {
                let name = self.name();
                match self.vars.get(&name) {
                    Some(Var::Value(value)) => out.push_str(value),
                    Some(Var::Opaque) => out.push_str(&self.since(start)),
                    None => {}
                }
                Ok(())
            }
            // A `$` that starts no variable is itself.
            _ => {
                out.push('$');
                Ok(())
            }
        }
    }

    /// After `${`.
    fn braced(&mut self, start: usize, out: &mut String) -> Result<(), String> {
        let name = self.name();
        if name.is_empty() {
            return Err("bad substitution".to_string());
        }
        let (colon, op) = match self.peek() {
            Some('}') => {
                self.pos += 1;
                (false, None)
            }
            Some(':') => match self.chars.get(self.pos + 1) {
                Some(&op @ ('-' | '+' | '?')) => {
                    self.pos += 2;
                    (true, Some(op))
                }
                _ => return self.keep_as_written(start, out),
            },
            Some(op @ ('-' | '+' | '?')) => {
                self.pos += 1;
                (false, Some(op))
            }
            Some(_) => return self.keep_as_written(start, out),
            None => return Err("missing `}`".to_string()),
        };
        let word = match op {
            Some(_) => {
                // Each level recurses; a bound keeps hostile input from exhausting the stack.
                if self.nesting >= MAX_NESTING {
                    return Err("substitutions nested too deeply".to_string());
                }
                self.nesting += 1;
                let word = self.word(Some('}'));
                self.nesting -= 1;
                word?
            }
            None => String::new(),
        };
        let value = match self.vars.get(&name) {
            Some(Var::Opaque) => {
                out.push_str(&self.since(start));
                return Ok(());
            }
            Some(Var::Value(value)) => Some(value.as_str()),
            None => None,
        };
        // With a colon, empty counts as unset.
        let set = value.filter(|v| !colon || !v.is_empty());
        match (op, set) {
            (None, _) => out.push_str(value.unwrap_or_default()),
            (Some('-'), Some(v)) => out.push_str(v),
            (Some('-'), None) => out.push_str(&word),
            (Some('+'), Some(_)) => out.push_str(&word),
            (Some('+'), None) => {}
            (Some(_), Some(v)) => out.push_str(v),
            (Some(_), None) => {
                let message = if word.is_empty() {
                    "not set"
                } else {
                    word.as_str()
                };
                return Err(format!("`{name}`: {message}"));
            }
        }
        Ok(())
    }

    /// Skips to the `}` closing a `${` at `start` (counting nested `${`) and outputs the
    /// whole reference unchanged: a form (`${X#p}`, `${X/a/b}`, ...) we do not evaluate.
    fn keep_as_written(&mut self, start: usize, out: &mut String) -> Result<(), String> {
        let mut depth = 1usize;
        while depth > 0 {
            match self.bump() {
                Some('}') => depth -= 1,
                Some('$') if self.peek() == Some('{') => {
                    self.pos += 1;
                    depth += 1;
                }
                Some(c) if c == self.escape => {
                    self.bump();
                }
                Some(_) => {}
                None => return Err("missing `}`".to_string()),
            }
        }
        out.push_str(&self.since(start));
        Ok(())
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek().filter(|&c| is_name_char(c)) {
            name.push(c);
            self.pos += 1;
        }
        name
    }
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    fn graph(text: &str) -> StageGraph {
        match StageGraph::parse(text) {
            Ok(graph) => graph,
            Err(err) => panic!("{err}"),
        }
    }

    fn error(text: &str) -> String {
        match StageGraph::parse(text) {
            Ok(graph) => panic!("expected an error, got {graph:#?}"),
            Err(err) => err.to_string(),
        }
    }

    /// One line per stage: the compact picture most tests want.
    fn check(text: &str, expect: Expect) {
        let graph = graph(text);
        let mut out = String::new();
        for stage in &graph.stages {
            out.push_str(&format!(
                "{} {:?} base={:?} base_stage={:?} platform={:?} deps={:?} line={}\n",
                stage.index,
                stage.name,
                stage.base,
                stage.base_stage,
                stage.platform,
                stage.deps,
                stage.line
            ));
        }
        expect.assert_eq(&out);
    }

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
                    },
                ],
            }
        "#]]
        .assert_debug_eq(&graph(text));
        let g = graph(text);
        assert_eq!(g.last(), 1);
        assert_eq!(g.label(0), "build");
        assert_eq!(g.label(1), "stage-1");
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
    fn topo_order_puts_later_stages_first_when_needed() {
        // `first` copies from a stage defined after it, which BuildKit allows.
        let g = graph(
            "FROM alpine AS first\nCOPY --from=second /x /x\nFROM alpine AS second\nFROM first AS third\n",
        );
        assert_eq!(
            g.stages.iter().map(|s| s.deps.clone()).collect::<Vec<_>>(),
            [vec![1], vec![], vec![0]]
        );
        assert_eq!(g.topo_order(), [1, 0, 2]);
        assert_eq!(g.levels(), [vec![1], vec![0], vec![2]]);
        assert_eq!(g.ancestors(2), [0, 1]);
    }

    #[test]
    fn ancestors_are_nearest_first_then_in_file_order() {
        let g = graph(
            "FROM a AS s0\nFROM a AS s1\nFROM s0 AS s2\nFROM a AS s3\nCOPY --from=s1 / /\n\
             FROM a AS s4\nCOPY --from=s3 / /\nCOPY --from=s2 / /\n",
        );
        assert_eq!(g.ancestors(4), [2, 3, 0, 1]);
        assert_eq!(g.ancestors(99), Vec::<usize>::new());
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
        assert_eq!(g.label(2), "stage-2");
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
        assert_eq!(g.label(0), "builder");
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
    fn global_args_in_from_and_copy_from() {
        check(
            r#"ARG RUST=1.82
ARG BASE=rust:${RUST}-slim
ARG BUILDER="build"
ARG EMPTY
ARG QUOTED='it''s'
FROM --platform=$BUILDPLATFORM ${BASE} AS build
FROM ${MISSING:-debian}:${EMPTY:-bookworm}${EMPTY-x} AS runtime
COPY --from=${BUILDER} /a /a
COPY --from=$QUOTED /b /b
FROM "${BASE}" AS plus
ARG STAGE_LOCAL=runtime
COPY --from=${STAGE_LOCAL:-tools} /c /c
FROM ${RUST:+alpine} AS alt
"#,
            expect![[r#"
                0 Some("build") base="rust:1.82-slim" base_stage=None platform=Some("$BUILDPLATFORM") deps=[] line=6
                1 Some("runtime") base="debian:bookworm" base_stage=None platform=None deps=[0] line=7
                2 Some("plus") base="rust:1.82-slim" base_stage=None platform=None deps=[] line=10
                3 Some("alt") base="alpine" base_stage=None platform=None deps=[] line=13
            "#]],
        );
    }

    #[test]
    fn build_args_override_defaults_and_give_platform_args() {
        let text = "ARG VARIANT=slim\nARG TARGETARCH\nFROM alpine AS build-amd64\nFROM alpine AS build-arm64\n\
                    FROM --platform=$TARGETPLATFORM build-${TARGETARCH} AS final\nFROM debian:${VARIANT}\n";
        check(
            text,
            expect![[r#"
                0 Some("build-amd64") base="alpine" base_stage=None platform=None deps=[] line=3
                1 Some("build-arm64") base="alpine" base_stage=None platform=None deps=[] line=4
                2 Some("final") base="build-${TARGETARCH}" base_stage=None platform=Some("$TARGETPLATFORM") deps=[] line=5
                3 None base="debian:slim" base_stage=None platform=None deps=[] line=6
            "#]],
        );
        let args = BTreeMap::from([
            ("TARGETARCH".to_string(), "arm64".to_string()),
            ("TARGETPLATFORM".to_string(), "linux/arm64".to_string()),
            ("VARIANT".to_string(), "bookworm".to_string()),
            ("UNDECLARED".to_string(), "ignored".to_string()),
        ]);
        let g = StageGraph::parse_with_args(text, &args).map_err(|e| e.to_string());
        let g = g.as_ref().map(|g| {
            g.stages
                .iter()
                .map(|s| (s.base.as_str(), s.platform.as_deref(), s.deps.clone()))
                .collect::<Vec<_>>()
        });
        assert_eq!(
            g,
            Ok(vec![
                ("alpine", None, vec![]),
                ("alpine", None, vec![]),
                ("build-arm64", Some("linux/arm64"), vec![1]),
                ("debian:bookworm", None, vec![]),
            ])
        );
        let g = StageGraph::parse_with_args("ARG X=a\nFROM ${UNDECLARED:-b}\n", &args);
        assert_eq!(
            g.map(|g| g.stages.first().map(|s| s.base.clone())),
            Ok(Some("b".to_string()))
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
    fn unsupported_substitutions_are_kept_as_written() {
        check(
            "ARG V=1.2.3\nFROM alpine:${V%.*}\nFROM alpine:${V:0:1}$\n",
            expect![[r#"
                0 None base="alpine:${V%.*}" base_stage=None platform=None deps=[] line=2
                1 None base="alpine:${V:0:1}$" base_stage=None platform=None deps=[] line=3
            "#]],
        );
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
    fn heredocs_do_not_create_stages() {
        check(
            "FROM alpine AS build\nRUN <<EOF\nFROM evil AS y\nCOPY --from=y / /\nEOF\n\
             COPY <<EOT /etc/motd\nFROM x AS z\nEOT\nCOPY <<-\"EOF\" /x\n\tFROM q AS r\n\tEOF\nFROM build\n",
            expect![[r#"
                0 Some("build") base="alpine" base_stage=None platform=None deps=[] line=1
                1 None base="build" base_stage=Some(0) platform=None deps=[0] line=12
            "#]],
        );
    }

    #[test]
    fn heredocs_parse_dockerfile_does_not_read() {
        // A heredoc after a command word, and two in one `RUN`: BuildKit reads both.
        check(
            "FROM alpine AS a\nRUN cat <<EOF > /x\nFROM evil AS y\nEOF\n\
             RUN <<ONE bash && cat <<-'TWO' \\\n  > /y\nFROM x\nONE\n\t\tFROM z\n\tTWO\n\
             ONBUILD RUN cat <<EOF\nFROM w\nEOF\nFROM a\nCOPY --from=a <<X /dst\nFROM q\nX\n",
            expect![[r#"
                0 Some("a") base="alpine" base_stage=None platform=None deps=[] line=1
                1 None base="a" base_stage=Some(0) platform=None deps=[0] line=14
            "#]],
        );
        // Line numbers after masked heredocs still match the file.
        assert_eq!(
            error("FROM alpine AS a\nRUN cat <<EOF\nx\nEOF\nFROM alpine AS A\n"),
            "line 5: duplicate stage name `a` (lines 1 and 5)"
        );
        assert_eq!(
            error("FROM alpine AS a\nRUN cat <<EOF\nx\nEOF\nCOPY --from=b / /\nFROM a AS b\n"),
            "line 5: dependency cycle between stages `a` -> `b` -> `a`"
        );
        // Never closed: the parser's own error stands.
        assert_eq!(
            error("FROM alpine\nRUN cat <<EOF\nbody\n"),
            "line 3: unknown instruction 'body'"
        );
        assert_eq!(mask_heredocs("FROM a\nRUN echo '<<EOF'\n"), None);
        assert_eq!(
            mask_heredocs("# escape=`\nFROM a\nRUN x `\n# c\n\n  <<E\nbody\nE\nRUN y\n").as_deref(),
            Some("# escape=`\nFROM a\nRUN x `\n# c\n\n  __E\n\n\nRUN y\n")
        );
        assert_eq!(
            heredoc_delimiters("RUN 3<<\"A\" <<-B x<<C <<<D <<", '\\'),
            [(false, "A".to_string()), (true, "B".to_string())]
        );
        assert_eq!(heredoc_delimiters("ENV <<A", '\\'), []);
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
    fn onbuild_is_ignored() {
        check(
            "FROM alpine AS a\nFROM alpine AS b\nONBUILD COPY --from=a / /\n",
            expect![[r#"
                0 Some("a") base="alpine" base_stage=None platform=None deps=[] line=1
                1 Some("b") base="alpine" base_stage=None platform=None deps=[] line=2
            "#]],
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
    fn cycles() {
        assert_eq!(
            error("FROM alpine AS a\nCOPY --from=b /x /x\nFROM alpine AS b\nCOPY --from=a /y /y\n"),
            "line 2: dependency cycle between stages `a` -> `b` -> `a`"
        );
        assert_eq!(
            error("FROM alpine AS stage0\nCOPY --from=stage2 f1 /sub/\nFROM busybox AS stage1\nCOPY --from=stage0 f2 /sub/\nFROM busybox AS stage2\nCOPY --from=stage1 f2 /sub/\n"),
            "line 2: dependency cycle between stages `stage0` -> `stage2` -> `stage1` -> `stage0`"
        );
        assert_eq!(
            error("FROM alpine AS a\nRUN true\nCOPY --from=A /x /x\n"),
            "line 3: stage `a` depends on itself"
        );
        assert_eq!(
            error("FROM alpine\nCOPY --from=0 /x /x\n"),
            "line 2: stage `stage-0` depends on itself"
        );
        assert_eq!(
            error("FROM alpine AS a\nRUN --mount=from=b true\nFROM a AS b\n"),
            "line 2: dependency cycle between stages `a` -> `b` -> `a`"
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
    fn syntax_errors() {
        let no_from = "no `FROM` instruction: a Dockerfile needs at least one stage";
        assert_eq!(error(""), no_from);
        assert_eq!(error("\n# only a comment\n"), no_from);
        assert_eq!(error("ARG A=1\n"), no_from);
        let err = StageGraph::parse("RUN true\n").err();
        assert_eq!(err.as_ref().and_then(|e| e.line), Some(1));
        expect![[r#"
            Some(
                DockerfileError {
                    line: Some(
                        1,
                    ),
                    message: "expected FROM",
                },
            )
        "#]]
        .assert_debug_eq(&err);
        assert_eq!(
            error("FROM alpine\n\nBOGUS x\n"),
            "line 3: unknown instruction 'BOGUS'"
        );
        assert_eq!(
            error("FROM alpine\nRUN <<EOF\nnever closed\n"),
            "line 4: expected end of here-document (EOF), but reached eof"
        );
        assert_eq!(
            error("FROM alpine\nCOPY --from /x /y\n"),
            "line 2: `--from` needs a value"
        );
        assert_eq!(
            error("FROM alpine\nRUN --mount true\n"),
            "line 2: `--mount` needs a value"
        );
        assert_eq!(
            error("FROM --pull alpine\n"),
            "line 1: unknown flag `--pull` on `FROM`"
        );
        assert_eq!(
            error("FROM --platform alpine\n"),
            "line 1: `--platform` needs a value"
        );
    }

    #[test]
    fn hand_built_graphs_do_not_panic() {
        let stage = |index: usize, deps: Vec<usize>| Stage {
            index,
            name: None,
            base: "x".to_string(),
            base_stage: None,
            platform: None,
            deps,
            line: 1,
            images: vec![],
            remote: vec![],
            runs: vec![],
        };
        let g = StageGraph {
            stages: vec![stage(0, vec![1, 7]), stage(1, vec![0]), stage(2, vec![])],
        };
        assert_eq!(g.topo_order(), [2, 0, 1]);
        assert_eq!(g.ancestors(0), [1]);
        assert_eq!(g.levels().concat().len(), 3);
        assert_eq!(find_cycle(&g), Some(vec![0, 1, 0]));
        let empty = StageGraph { stages: vec![] };
        assert_eq!(empty.last(), 0);
        assert_eq!(empty.topo_order(), Vec::<usize>::new());
        assert_eq!(empty.levels(), Vec::<Vec<usize>>::new());
        assert_eq!(empty.label(3), "stage-3");
    }

    #[test]
    fn expansion() {
        let vars = HashMap::from([
            ("A".to_string(), Var::Value("a".to_string())),
            ("E".to_string(), Var::Value(String::new())),
            ("P".to_string(), Var::Opaque),
        ]);
        let x = |word: &str| expand(word, '\\', &vars);
        assert_eq!(x("$A${A}x$Ay"), Ok("aax".to_string()));
        assert_eq!(x("${E-d}|${E:-d}|${U-d}|${U:-d}"), Ok("|d|d|d".to_string()));
        assert_eq!(x("${E+s}|${E:+s}|${A:+s}|${U+s}"), Ok("s||s|".to_string()));
        assert_eq!(x("${U:-${A}-\"q\"}"), Ok("a-q".to_string()));
        assert_eq!(
            x("'$A' \"$A\" \\$A \"\\$A\" \"\\x\""),
            Ok("$A a $A $A \\x".to_string())
        );
        assert_eq!(x("$P/${P}/${P:-x}"), Ok("$P/${P}/${P:-x}".to_string()));
        assert_eq!(x("$ $- a$"), Ok("$ $- a$".to_string()));
        assert_eq!(x("${U?}"), Err("`U`: not set".to_string()));
        assert_eq!(x("${E?}"), Ok(String::new()));
        assert_eq!(x("'open"), Err("missing closing `'`".to_string()));
        assert_eq!(x("trailing\\"), Ok("trailing".to_string()));
        let deep = format!("{}x{}", "${U:-".repeat(32), "}".repeat(32));
        assert_eq!(x(&deep), Ok("x".to_string()));
        let deeper = format!("{}x{}", "${U:-".repeat(100_000), "}".repeat(100_000));
        assert_eq!(
            x(&deeper),
            Err("substitutions nested too deeply".to_string())
        );
        assert_eq!(
            split_words("A=1 B=\"x y\"\tC 'D E'=2 F=a\\ b", '\\'),
            ["A=1", "B=\"x y\"", "C", "'D E'=2", "F=a\\ b"]
        );
    }

    #[test]
    fn line_index() {
        let lines = LineIndex::new("a\nbc\n\nd");
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 6, 99].map(|o| lines.line(o)),
            [1, 1, 2, 2, 2, 3, 4, 4]
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn dockerfile_ish() -> impl Strategy<Value = String> {
            let token = prop_oneof![
                Just("FROM "),
                Just("from "),
                Just(" AS "),
                Just(" as "),
                Just("COPY --from="),
                Just("RUN --mount=type=bind,from="),
                Just("RUN --mount="),
                Just(",from="),
                Just("ONBUILD "),
                Just("ARG "),
                Just("=x"),
                Just("${"),
                Just("}"),
                Just(":-"),
                Just("$"),
                Just("\\"),
                Just("`"),
                Just("\n"),
                Just("\r\n"),
                Just(" "),
                Just("<<EOF"),
                Just("EOF"),
                Just("# escape=`\n"),
                Just("#"),
                Just("\""),
                Just("'"),
                Just("a"),
                Just("b"),
                Just("0"),
                Just("1"),
                Just("/x /y"),
                Just("alpine"),
                Just("é"),
            ];
            prop::collection::vec(token, 0..40).prop_map(|tokens| tokens.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn arbitrary_text_never_panics(text in any::<String>()) {
                let _ = StageGraph::parse(&text);
            }

            #[test]
            fn dockerfile_ish_text_never_panics(text in dockerfile_ish()) {
                if let Ok(graph) = StageGraph::parse(&text) {
                    prop_assert!(!graph.stages.is_empty());
                    let order = graph.topo_order();
                    prop_assert_eq!(order.len(), graph.stages.len());
                    for (position, &stage) in order.iter().enumerate() {
                        for dep in &graph.stages[stage].deps {
                            prop_assert!(order[..position].contains(dep));
                        }
                    }
                    prop_assert_eq!(graph.levels().concat().len(), graph.stages.len());
                    let _ = graph.ancestors(graph.last());
                }
            }

            #[test]
            fn expansion_never_panics(word in "[-$a-z{}:+?'\"\\\\` ]{0,24}") {
                let vars = HashMap::from([("a".to_string(), Var::Value("v".to_string()))]);
                let _ = expand(&word, '\\', &vars);
                let _ = expand(&word, '`', &vars);
                let _ = split_words(&word, '\\');
                let _ = mount_from(&word);
            }
        }
    }
}

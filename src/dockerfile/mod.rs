//! The stage graph of a Dockerfile: which `FROM` stages exist and which stages each one needs.
//!
//! Pure: text in, graph out. The syntax (continuations, comments, parser directives, heredocs)
//! is parse-dockerfile's job, except for the heredocs it cannot read yet (see
//! `mask_heredocs`); this module adds what BuildKit's dockerfile frontend does on top: global
//! `ARG` substitution, case-insensitive stage names, and the dependencies that `FROM <stage>`,
//! `COPY --from` and `RUN --mount=...,from=` create.

use std::collections::BTreeMap;
use std::fmt;

use parse_dockerfile::Instruction;

mod args;
mod graph;
mod heredoc;
mod lint;
mod mounts;
mod walk;

pub use mounts::{CacheMount, MountUse};

use heredoc::mask_heredocs;
use walk::{build, stage_names};

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
    /// The cache mounts of its `RUN` instructions (`--mount=type=cache`), in order.
    pub cache_mounts: Vec<MountUse>,
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
    /// The frontend image that reads the Dockerfile instead of BuildKit's built-in one, if one
    /// is named: the `BUILDKIT_SYNTAX` build argument's, else the `# syntax=` directive's. An
    /// image from outside like any base.
    pub frontend: Option<String>,
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
    pub(crate) fn at(line: usize, message: impl Into<String>) -> DockerfileError {
        DockerfileError {
            line: Some(line),
            message: message.into(),
        }
    }
}

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
            Ok(dockerfile) => return build(&dockerfile, text, &LineIndex::new(text), build_args),
            Err(err) => err,
        };
        // parse-dockerfile reads a heredoc only right after `RUN`'s flags or as a `COPY`/`ADD`
        // source; BuildKit also reads `RUN cat <<EOF > f` and several heredocs per `RUN`, whose
        // bodies parse-dockerfile then takes for instructions. Retry with the heredocs masked.
        let masked = mask_heredocs(text);
        let text = masked.as_deref().unwrap_or(text);
        if masked.is_some() {
            if let Ok(dockerfile) = parse_dockerfile::parse(text) {
                return build(&dockerfile, text, &LineIndex::new(text), build_args);
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

    /// The stage's name: its `AS` name, or `stage-N` for an unnamed one (BuildKit's own name
    /// for it in progress output).
    pub fn name(&self, index: usize) -> String {
        match self.stages.get(index).and_then(|stage| stage.name.as_ref()) {
            Some(name) => name.clone(),
            None => format!("stage-{index}"),
        }
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
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        LineIndex { starts }
    }

    pub(crate) fn line(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::test_util::*;
    use expect_test::expect;

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
    fn line_index() {
        let lines = LineIndex::new("a\nbc\n\nd");
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 6, 99].map(|o| lines.line(o)),
            [1, 1, 2, 2, 2, 3, 4, 4]
        );
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;
    use expect_test::Expect;

    pub(crate) fn graph(text: &str) -> StageGraph {
        match StageGraph::parse(text) {
            Ok(graph) => graph,
            Err(err) => panic!("{err}"),
        }
    }

    pub(crate) fn error(text: &str) -> String {
        match StageGraph::parse(text) {
            Ok(graph) => panic!("expected an error, got {graph:#?}"),
            Err(err) => err.to_string(),
        }
    }

    /// One line per stage: the compact picture most tests want.
    pub(crate) fn check(text: &str, expect: Expect) {
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
}

#[cfg(test)]
mod properties {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::args::{expand, split_words, Var};
    use super::walk::mount_from;
    use super::*;

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

//! Global `ARG`s and the word expansion BuildKit's shell lexer applies to `FROM` and to flags:
//! quotes, escapes and `${X:-default}` forms.

use std::collections::{BTreeMap, HashMap};

use parse_dockerfile::Dockerfile;

use super::{DockerfileError, LineIndex};

/// The `ARG`s BuildKit defines by itself in the global scope. Their values depend on the
/// builder and the target, which this module does not know, so unless the caller passes them
/// a reference to them is left as written (e.g. `--platform=$BUILDPLATFORM` stays so).
pub(super) const PLATFORM_ARGS: &[&str] = &[
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
];

/// A variable as `FROM` and the flags see it.
#[derive(Debug, Clone)]
pub(super) enum Var {
    Value(String),
    /// Known only to the builder (the platform args): references are kept as written.
    Opaque,
}

/// The global `ARG`s (those before the first `FROM`) with their values.
pub(super) fn global_args(
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

/// Adds an `ARG` inside a stage (its text `text`) to the stage's scope: inside a stage a
/// variable is visible only once the stage declares it, and then holds the build argument's
/// value, else its own default, else the global `ARG`'s (BuildKit's rules).
pub(super) fn declare_stage_args(
    text: &str,
    escape: char,
    build_args: &BTreeMap<String, String>,
    globals: &HashMap<String, Var>,
    scope: &mut HashMap<String, Var>,
) -> Result<(), String> {
    for word in split_words(text, escape) {
        let (name, default) = match word.split_once('=') {
            Some((name, default)) => (name.to_string(), Some(default)),
            None => (word.clone(), None),
        };
        let var = if let Some(value) = build_args.get(&name) {
            Var::Value(value.clone())
        } else if PLATFORM_ARGS.contains(&name.as_str()) {
            globals.get(&name).cloned().unwrap_or(Var::Opaque)
        } else if let Some(default) = default {
            Var::Value(expand(default, escape, scope).map_err(|e| format!("in `ARG {word}`: {e}"))?)
        } else if let Some(global) = globals.get(&name) {
            global.clone()
        } else {
            continue;
        };
        scope.insert(name, var);
    }
    Ok(())
}

/// Splits an `ARG` line into words at whitespace outside quotes, keeping quotes and escapes
/// (BuildKit's `parseWords`); [`expand`] removes them later.
pub(super) fn split_words(text: &str, escape: char) -> Vec<String> {
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
pub(super) fn expand(
    word: &str,
    escape: char,
    vars: &HashMap<String, Var>,
) -> Result<String, String> {
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
    use crate::dockerfile::test_util::*;
    use crate::dockerfile::StageGraph;
    use expect_test::expect;

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
    fn unsupported_substitutions_are_kept_as_written() {
        check(
            "ARG V=1.2.3\nFROM alpine:${V%.*}\nFROM alpine:${V:0:1}$\n",
            expect![[r#"
                0 None base="alpine:${V%.*}" base_stage=None platform=None deps=[] line=2
                1 None base="alpine:${V:0:1}$" base_stage=None platform=None deps=[] line=3
            "#]],
        );
    }
}

//! `.dockerignore` as the clients that send a build context apply it.
//!
//! The builder does not filter the context: the client does (the 20.10 CLI's own BuildKit
//! client, or buildx), with the patterns the Dockerfile frontend read from the ignore file
//! (moby's `dockerignore.ReadAll`, unchanged since Docker 20.10) and the matcher its version
//! vendors. Those matchers differ, and the fingerprint cannot know which client will build, so
//! an entry counts as sent when any of them sends it (each one below was checked against the
//! real 20.10 CLI and buildx 0.13, see the tests):
//!
//! - **current**: tonistiigi/fsutil's `filterFS` walk with moby/patternmatcher 0.6 or later
//!   (buildx 0.13 and later): each pattern is an exact, prefix (`dir/**`), suffix (`**.rs`,
//!   `**/name`) or regular-expression match, and a folder's per-pattern results carry down to
//!   its entries (`MatchesUsingParentResults`);
//! - **plural**: the same walk with patternmatcher before 0.6, where every pattern is a regular
//!   expression (`**.rs` is `^(.*/)?\.rs$`, so it leaves out almost nothing);
//! - **single**: fsutil of 2021 (buildx 0.6 and 0.7): an entry starts from its folder's result
//!   and only patterns that match the entry itself change it (`MatchesUsingParentResult`);
//! - **docker 20.10**: the CLI's client, moby's `fileutils.Matches`: a pattern is compared with
//!   the entry and with as many of its parent folders as the pattern has components, a folder
//!   left out is walked only when an exception starts with its path, and only `.` and `$` are
//!   escaped in the regular expression.
//!
//! Patterns whose meaning differs in ways not modelled here (`+ ( ) |` and `{n}`, which Docker
//! 20.10 reads as regular-expression syntax; escapes of letters, which Go's regexp reads as
//! classes; character classes with `*`, `?` or `[` inside) are refused: no fingerprint.

/// The longest line `bufio.Scanner` reads; a longer one fails the build.
const MAX_LINE: usize = 64 * 1024;

/// One piece of a pattern's regular expression, as patternmatcher writes it.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// A character.
    Lit(char),
    /// `*`: `[^/]*`.
    Star,
    /// `?`: `[^/]`.
    Quest,
    /// `**` followed by more: `(.*/)?`.
    Dirs,
    /// `**` at the end: `.*`.
    Rest,
    /// `[...]`: ranges of characters, or (negated) anything but them.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `^` outside a class: in a regular expression, the start of the text.
    Start,
}

/// How patternmatcher 0.6 and later match a pattern (its `matchType`).
#[derive(Debug, Clone, PartialEq)]
enum Form {
    /// The path is the pattern.
    Exact(Vec<u8>),
    /// `dir/**`, `name**`: the path starts with the pattern before `**`.
    Prefix(Vec<u8>),
    /// `**name`, `**/name`: the path ends with the pattern after `**` (or is it, after `/`).
    Suffix(Vec<u8>),
    /// Anything else: the regular expression.
    Regex,
}

/// One pattern, as the matchers hold it.
#[derive(Debug, Clone)]
struct Pattern {
    /// After `!`, cleaned (patternmatcher's `cleanedPattern`).
    text: String,
    /// An exception (`!`): what it matches is sent again.
    exception: bool,
    /// Its `/`-separated components: Docker 20.10 compares it with that many parent folders.
    components: usize,
    /// How the current matcher matches it.
    form: Form,
    /// Its regular expression: how every matcher matches a `Regex` form, and how earlier
    /// ones match every pattern.
    tokens: Vec<Token>,
}

/// The patterns of an ignore file, read as Docker reads them.
#[derive(Debug, Default, Clone)]
pub struct Ignore {
    patterns: Vec<Pattern>,
    exceptions: bool,
}

/// What the clients that walk a folder know of it, for its entries.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Parent {
    /// Docker 20.10's client walks it.
    docker20: bool,
    /// The single client walks it, and had left it out.
    single: Option<bool>,
    /// The plural client walks it: which patterns matched it or a folder above it.
    plural: Option<Vec<bool>>,
    /// The current client walks it: the same, with the current pattern forms.
    current: Option<Vec<bool>>,
}

/// What the clients do with one entry.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Verdict {
    /// Some client sends it (a folder it sends also when an entry in it is sent).
    pub sent: bool,
    /// A folder some client walks: what its entries inherit.
    pub walk: Option<Parent>,
}

impl Ignore {
    /// Reads the file's text as moby's `ReadAll` does (BOM, `#` comments, trimming, `/` cleaned
    /// away, the `!` taken off before cleaning and put back), then each pattern as
    /// patternmatcher's `New` does (cleaned again, `!` taken off, checked).
    pub fn parse(text: &str) -> Result<Ignore, String> {
        let mut patterns = Vec::new();
        for (index, line) in read_all(text)? {
            let at = |why: String| format!("line {}: {why}", index + 1);
            let mut p = clean(line.trim());
            let exception = p.starts_with('!');
            if exception {
                if p.len() == 1 {
                    return Err(at("`!` alone is an error to Docker".into()));
                }
                p.remove(0);
            }
            let (form, tokens, ambiguous) =
                compile(&p).map_err(|why| at(format!("`{line}`: {why}")))?;
            if let Some(why) = ambiguous {
                return Err(at(format!("`{line}`: {why}")));
            }
            patterns.push(Pattern {
                components: p.split('/').count(),
                text: p,
                exception,
                form,
                tokens,
            });
        }
        let exceptions = patterns.iter().any(|p| p.exception);
        Ok(Ignore {
            patterns,
            exceptions,
        })
    }

    /// What the clients know of the context's root folder.
    pub(super) fn root(&self) -> Parent {
        let none = vec![false; self.patterns.len()];
        Parent {
            docker20: true,
            single: Some(false),
            plural: Some(none.clone()),
            current: Some(none),
        }
    }

    /// What the clients that walk `parent` do with its entry `path` (relative to the context,
    /// `/`-separated, the bytes of the names).
    pub(super) fn decide(&self, parent: &Parent, path: &[u8], is_dir: bool) -> Verdict {
        let mut m = Matches::new(&self.patterns, path);
        let mut sent = false;
        let mut walk = Parent {
            docker20: false,
            single: None,
            plural: None,
            current: None,
        };
        // Whether a folder left out may hold something an exception lets back in.
        let mut reopened = None;
        let mut reopens = |path: &[u8]| *reopened.get_or_insert_with(|| self.reopens(path));
        if parent.docker20 {
            let out = self.docker20(&mut m);
            sent |= !out;
            if is_dir {
                // It sends every folder it walks, left out or not.
                walk.docker20 = !out || self.docker20_walks(path);
                sent |= walk.docker20;
            }
        }
        if let Some(parent_out) = parent.single {
            let out = self.single(parent_out, &mut m);
            sent |= !out;
            if is_dir && (!out || reopens(path)) {
                walk.single = Some(out);
            }
        }
        for (info, current, into) in [
            (&parent.plural, false, &mut walk.plural),
            (&parent.current, true, &mut walk.current),
        ] {
            if let Some(info) = info {
                let (out, info) = self.plural(info, current, &mut m);
                sent |= !out;
                if is_dir && (!out || reopens(path)) {
                    *into = Some(info);
                }
            }
        }
        let walks = walk.docker20
            || walk.single.is_some()
            || walk.plural.is_some()
            || walk.current.is_some();
        Verdict {
            sent,
            walk: walks.then_some(walk),
        }
    }

    /// Docker 20.10's `Matches`: the last pattern that matches the path, or as many of its
    /// parent folders as the pattern has components, decides.
    fn docker20(&self, m: &mut Matches) -> bool {
        let mut out = false;
        for (i, p) in self.patterns.iter().enumerate() {
            let hit = m.old(i) || (p.components <= m.slashes() && m.old_parent(i, p.components));
            if hit {
                out = !p.exception;
            }
        }
        out
    }

    /// Docker 20.10's walk into a folder it left out: only when an exception's text starts
    /// with the folder's path (`target/release/app` for `target`), whatever its wildcards.
    fn docker20_walks(&self, path: &[u8]) -> bool {
        // `HasPrefix(pattern + "/", path + "/")`.
        self.patterns.iter().any(|p| {
            let text = p.text.as_bytes();
            p.exception
                && text.starts_with(path)
                && matches!(text.get(path.len()), None | Some(b'/'))
        })
    }

    /// `MatchesUsingParentResult`: from the folder's result, patterns that match the entry.
    fn single(&self, parent_out: bool, m: &mut Matches) -> bool {
        let mut out = parent_out;
        for (i, p) in self.patterns.iter().enumerate() {
            // A pattern that cannot change the result is not even tried.
            if p.exception != out {
                continue;
            }
            if m.old(i) {
                out = !p.exception;
            }
        }
        out
    }

    /// `MatchesUsingParentResults`: a pattern that matched the folder matches its entries; the
    /// others are tried on the entry, unless they cannot change the result so far (which is
    /// why an entry may then not inherit a pattern its folder would have matched).
    fn plural(&self, info: &[bool], current: bool, m: &mut Matches) -> (bool, Vec<bool>) {
        let mut out = false;
        let mut matched = vec![false; self.patterns.len()];
        for (i, p) in self.patterns.iter().enumerate() {
            let mut hit = info[i];
            if !hit {
                if p.exception != out {
                    continue;
                }
                hit = if current { m.current(i) } else { m.old(i) };
            }
            matched[i] = hit;
            if hit {
                out = !p.exception;
            }
        }
        (out, matched)
    }

    /// Whether some exception may match a path below the folder `path`: the walks that carry
    /// results down skip a folder left out only when none can. A sound rule of our own (the
    /// clients' own rules skip less, never more): an exception matches only paths that start
    /// with the literal text before its first wildcard.
    fn reopens(&self, path: &[u8]) -> bool {
        if !self.exceptions {
            return false;
        }
        let mut folder = path.to_vec();
        folder.push(b'/');
        // A path below the folder that starts with `literal` exists when one of the two starts
        // with the other; one that is `literal` (a pattern without wildcards), when it starts
        // with the folder.
        let below = |literal: &[u8], whole: bool| {
            if whole {
                literal.starts_with(&folder) && literal.len() > folder.len()
            } else {
                literal.starts_with(&folder) || folder.starts_with(literal)
            }
        };
        self.patterns.iter().any(|p| {
            if !p.exception {
                return false;
            }
            let current = match &p.form {
                Form::Exact(t) => below(t, true),
                Form::Prefix(t) => below(t, false),
                Form::Suffix(_) => true,
                Form::Regex => false,
            };
            let (literal, whole) = literal_start(&p.tokens);
            current || below(literal.as_bytes(), whole)
        })
    }
}

/// The literal text a pattern's matches start with, and whether that is the whole pattern.
fn literal_start(tokens: &[Token]) -> (String, bool) {
    let mut literal = String::new();
    for (i, token) in tokens.iter().enumerate() {
        match token {
            // An invalid byte of a path reads as U+FFFD too: no literal past it.
            Token::Lit(c) if *c != '\u{fffd}' => literal.push(*c),
            Token::Start if i == 0 => {}
            _ => return (literal, false),
        }
    }
    (literal, true)
}

/// The lines `ReadAll` keeps, with their 0-based line numbers.
fn read_all(text: &str) -> Result<Vec<(usize, String)>, String> {
    let mut out = Vec::new();
    for (index, line) in text.split('\n').enumerate() {
        // `bufio.ScanLines` drops one `\r` before the `\n`.
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.len() >= MAX_LINE {
            return Err(format!(
                "line {}: longer than the {MAX_LINE} bytes Docker reads",
                index + 1
            ));
        }
        let line = if index == 0 {
            line.strip_prefix('\u{feff}').unwrap_or(line)
        } else {
            line
        };
        // A comment is a line that starts with `#` before trimming.
        if line.starts_with('#') {
            continue;
        }
        // Go's `strings.TrimSpace` trims Unicode's White_Space, as `trim` does.
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        // The `!` goes back on after the `/` came off, so `/!keep` is the exception `!keep`.
        if invert {
            cleaned.insert(0, '!');
        }
        out.push((index, cleaned));
    }
    Ok(out)
}

/// Go's `filepath.Clean` for `/`-separated paths.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// patternmatcher's `compile`: the match type and the regular expression's pieces, as the
/// current matcher reads them, and why earlier ones read the pattern otherwise (in ways not
/// modelled here), if they do. Refuses what Docker refuses (`filepath.Match`'s syntax errors,
/// regexps Go cannot compile) and what Go's regexp reads otherwise than it looks.
type Compiled = (Form, Vec<Token>, Option<String>);

fn compile(pattern: &str) -> Result<Compiled, String> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    if pattern.contains('\u{feff}') {
        // Go's scanner drops a leading BOM from the regexp but not from the exact text.
        return Err(
            "a byte order mark inside a pattern is read differently by each matcher".into(),
        );
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut ambiguous = None;
    let mut kind = Kind::Exact;
    let mut i = 0;
    let mut first = true;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                // `**/` is `**`: the slash is eaten.
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i == chars.len() {
                    // The regexp gets `.*` only when the pattern is not an exact one so far;
                    // the earlier matchers always read it as a regexp.
                    tokens.push(Token::Rest);
                    kind = if kind == Kind::Exact {
                        Kind::Prefix
                    } else {
                        Kind::Regex
                    };
                } else {
                    tokens.push(Token::Dirs);
                    kind = Kind::Regex;
                }
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                tokens.push(Token::Star);
                kind = Kind::Regex;
            }
            '?' => {
                tokens.push(Token::Quest);
                kind = Kind::Regex;
            }
            '\\' => {
                let Some(&next) = chars.get(i) else {
                    return Err("a `\\` at the end is a syntax error".into());
                };
                i += 1;
                tokens.push(Token::Lit(escaped(next)?));
                kind = Kind::Regex;
            }
            '[' => {
                let (token, end) = class(&chars, i)?;
                tokens.push(token);
                i = end;
                kind = Kind::Regex;
            }
            ']' => {
                tokens.push(Token::Lit(']'));
                kind = Kind::Regex;
            }
            '^' => tokens.push(Token::Start),
            // Escaped since Docker 23; regexp syntax to Docker 20.10.
            '+' | '(' | ')' | '|' => {
                ambiguous = Some(format!(
                    "`{c}` is a character to Docker 23 and later but regular-expression syntax to Docker 20.10"
                ));
                tokens.push(Token::Lit(c));
            }
            '{' if chars.get(i).is_some_and(char::is_ascii_digit) => {
                ambiguous = Some(
                    "`{` before a digit is a character to Docker 23 and later but a repetition to Docker 20.10"
                        .into(),
                );
                tokens.push(Token::Lit(c));
            }
            _ => tokens.push(Token::Lit(c)),
        }
        first = false;
    }
    let bytes = pattern.as_bytes();
    let form = match kind {
        Kind::Exact => Form::Exact(bytes.to_vec()),
        Kind::Prefix => Form::Prefix(bytes[..bytes.len() - 2].to_vec()),
        Kind::Suffix => Form::Suffix(bytes[2..].to_vec()),
        Kind::Regex => Form::Regex,
    };
    Ok((form, tokens, ambiguous))
}

/// The character `\c` stands for in Go's regexp: punctuation is itself; letters and digits are
/// classes, anchors or errors there, and refused here.
fn escaped(c: char) -> Result<char, String> {
    if c.is_ascii_punctuation() {
        Ok(c)
    } else {
        Err(format!(
            "`\\{c}` is an escape that Go's regular expressions read as something else than `{c}`"
        ))
    }
}

/// A character class from just after its `[` to just after its `]`: `^` first negates, then
/// characters (or `\` and punctuation) and ranges `a-z`. Refuses what `filepath.Match` refuses
/// and what Go's regexp would read otherwise (`*`, `?` or `[` inside, which patternmatcher
/// rewrites or which start a POSIX class).
fn class(chars: &[char], mut i: usize) -> Result<(Token, usize), String> {
    let unclosed = || "an unclosed `[` is a syntax error".to_string();
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let item = |i: &mut usize| -> Result<char, String> {
        let c = *chars.get(*i).ok_or_else(unclosed)?;
        *i += 1;
        match c {
            '\\' => {
                let next = *chars.get(*i).ok_or_else(unclosed)?;
                *i += 1;
                escaped(next)
            }
            '-' | ']' => Err(format!("`{c}` there is a syntax error in a `[...]` class")),
            '*' | '?' | '[' => Err(format!(
                "`{c}` inside `[...]` is rewritten by Docker into something else than a character"
            )),
            _ => Ok(c),
        }
    };
    let mut ranges = Vec::new();
    loop {
        match chars.get(i) {
            None => return Err(unclosed()),
            Some(']') if !ranges.is_empty() => {
                return Ok((Token::Class { negated, ranges }, i + 1))
            }
            _ => {}
        }
        let lo = item(&mut i)?;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') {
            i += 1;
            hi = item(&mut i)?;
            if hi < lo {
                return Err(format!("`{lo}-{hi}` is an invalid range to Go's regexp"));
            }
        }
        ranges.push((lo, hi));
    }
}

/// One path's match results, each worked out once for all the clients.
struct Matches<'a> {
    patterns: &'a [Pattern],
    path: &'a [u8],
    /// The path as Go's regexp reads it: each byte that is not UTF-8 is a U+FFFD.
    chars: Vec<char>,
    /// Results of the regexp on the path, and on parent folders, by pattern.
    old: Vec<Option<bool>>,
    old_parent: Vec<Option<bool>>,
    slashes: Option<usize>,
}

impl<'a> Matches<'a> {
    fn new(patterns: &'a [Pattern], path: &'a [u8]) -> Matches<'a> {
        Matches {
            patterns,
            path,
            chars: Vec::new(),
            old: vec![None; patterns.len()],
            old_parent: vec![None; patterns.len()],
            slashes: None,
        }
    }

    fn chars(&mut self) -> &[char] {
        if self.chars.is_empty() && !self.path.is_empty() {
            go_chars(self.path, &mut self.chars);
        }
        &self.chars
    }

    /// How many parent folders the path has.
    fn slashes(&mut self) -> usize {
        let path = self.path;
        *self
            .slashes
            .get_or_insert_with(|| path.iter().filter(|&&b| b == b'/').count())
    }

    /// The current matcher's answer for pattern `i`.
    fn current(&mut self, i: usize) -> bool {
        let path = self.path;
        match &self.patterns[i].form {
            Form::Exact(t) => path == t.as_slice(),
            Form::Prefix(t) => path.starts_with(t),
            Form::Suffix(s) => path.ends_with(s) || (s.first() == Some(&b'/') && path == &s[1..]),
            Form::Regex => self.old(i),
        }
    }

    /// The regexp's answer for pattern `i`.
    fn old(&mut self, i: usize) -> bool {
        if let Some(hit) = self.old[i] {
            return hit;
        }
        let patterns = self.patterns;
        let hit = matches(&patterns[i].tokens, self.chars());
        self.old[i] = Some(hit);
        hit
    }

    /// The regexp's answer for pattern `i` on the first `n` components of the path's parent.
    fn old_parent(&mut self, i: usize, n: usize) -> bool {
        if let Some(hit) = self.old_parent[i] {
            return hit;
        }
        let patterns = self.patterns;
        let chars = self.chars();
        let end = chars
            .iter()
            .enumerate()
            .filter(|(_, &c)| c == '/')
            .nth(n - 1)
            .map_or(chars.len(), |(at, _)| at);
        let hit = matches(&patterns[i].tokens, &chars[..end]);
        self.old_parent[i] = Some(hit);
        hit
    }
}

/// Decodes `bytes` as Go does: each byte that does not start valid UTF-8 is U+FFFD.
fn go_chars(mut bytes: &[u8], out: &mut Vec<char>) {
    out.clear();
    loop {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                out.extend(text.chars());
                return;
            }
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                out.extend(std::str::from_utf8(valid).unwrap_or_default().chars());
                let bad = e.error_len().unwrap_or(rest.len());
                out.extend(std::iter::repeat_n('\u{fffd}', bad));
                bytes = &rest[bad..];
            }
        }
    }
}

/// Whether the one-character token accepts `c`.
fn accepts(token: &Token, c: char) -> bool {
    match token {
        Token::Lit(l) => *l == c,
        Token::Quest => c != '/',
        Token::Class { negated, ranges } => {
            ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
        }
        _ => false,
    }
}

/// Whether the whole of `text` matches `^tokens$` as Go's regexp reads them: `.` does not
/// match a newline, a negated class does.
fn matches(tokens: &[Token], text: &[char]) -> bool {
    // Most patterns have no run (`*`, `**`): one character each, no search.
    if !tokens
        .iter()
        .any(|t| matches!(t, Token::Star | Token::Rest | Token::Dirs))
    {
        let mut p = 0;
        for token in tokens {
            match token {
                Token::Start if p == 0 => {}
                _ if p < text.len() && accepts(token, text[p]) => p += 1,
                _ => return false,
            }
        }
        return p == text.len();
    }
    // Failed (token, position) pairs: each is tried once, so no pattern takes exponential time.
    let mut failed = vec![false; (tokens.len() + 1) * (text.len() + 1)];
    search(tokens, text, 0, 0, &mut failed)
}

/// Whether `text[p..]` matches `tokens[t..]` to the end.
fn search(tokens: &[Token], text: &[char], t: usize, p: usize, failed: &mut [bool]) -> bool {
    let slot = t * (text.len() + 1) + p;
    if failed[slot] {
        return false;
    }
    let hit = match tokens.get(t) {
        None => p == text.len(),
        Some(Token::Start) => p == 0 && search(tokens, text, t + 1, p, failed),
        // `[^/]*` and `.*`: every end the run can have.
        Some(run @ (Token::Star | Token::Rest)) => {
            let stop = if *run == Token::Star { '/' } else { '\n' };
            let mut q = p;
            loop {
                if search(tokens, text, t + 1, q, failed) {
                    break true;
                }
                if q == text.len() || text[q] == stop {
                    break false;
                }
                q += 1;
            }
        }
        // `(.*/)?`: nothing, or up to any `/` with no newline before it.
        Some(Token::Dirs) => {
            search(tokens, text, t + 1, p, failed)
                || (p..text.len())
                    .take_while(|&q| text[q] != '\n')
                    .any(|q| text[q] == '/' && search(tokens, text, t + 1, q + 1, failed))
        }
        Some(token) => {
            p < text.len() && accepts(token, text[p]) && search(tokens, text, t + 1, p + 1, failed)
        }
    };
    if !hit {
        failed[slot] = true;
    }
    hit
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's `filepath.Dir` split at `/`, as patternmatcher's tests walk a text's parents.
    fn go_parents(text: &str) -> Vec<String> {
        let dir = match text.rfind('/') {
            Some(at) => clean(&text[..at.max(1)]),
            None => ".".to_string(),
        };
        if dir == "." {
            return Vec::new();
        }
        let parts: Vec<&str> = dir.split('/').collect();
        (1..=parts.len()).map(|n| parts[..n].join("/")).collect()
    }

    fn current(p: &Pattern, text: &str) -> bool {
        Matches::new(std::slice::from_ref(p), text.as_bytes()).current(0)
    }

    fn pattern(text: &str) -> Pattern {
        let mut p = clean(text.trim());
        let exception = p.starts_with('!');
        if exception {
            p.remove(0);
        }
        let (form, tokens, _) = compile(&p).unwrap();
        Pattern {
            components: p.split('/').count(),
            text: p,
            exception,
            form,
            tokens,
        }
    }

    /// `MatchesUsingParentResults` along the text's parents, as patternmatcher's test does.
    fn plural_chain(patterns: &[Pattern], text: &str) -> bool {
        let ignore = Ignore {
            exceptions: patterns.iter().any(|p| p.exception),
            patterns: patterns.to_vec(),
        };
        let mut info = vec![false; patterns.len()];
        for parent in go_parents(text) {
            info = ignore
                .plural(
                    &info,
                    true,
                    &mut Matches::new(&ignore.patterns, parent.as_bytes()),
                )
                .1;
        }
        ignore
            .plural(
                &info,
                true,
                &mut Matches::new(&ignore.patterns, text.as_bytes()),
            )
            .0
    }

    /// moby/patternmatcher's `TestMatches`: the pattern matches the text itself (`E`), only a
    /// parent folder of it (`P`), or neither (`-`).
    #[test]
    fn patternmatcher_cases() {
        let cases = [
            ("**", "file", 'E'),
            ("**", "file/", 'E'),
            ("**/", "file", 'E'),
            ("**/", "file/", 'E'),
            ("**", "/", 'E'),
            ("**/", "/", 'E'),
            ("**", "dir/file", 'E'),
            ("**/", "dir/file", 'E'),
            ("**", "dir/file/", 'E'),
            ("**/", "dir/file/", 'E'),
            ("**/**", "dir/file", 'E'),
            ("**/**", "dir/file/", 'E'),
            ("dir/**", "dir/file", 'E'),
            ("dir/**", "dir/file/", 'E'),
            ("dir/**", "dir/dir2/file", 'E'),
            ("dir/**", "dir/dir2/file/", 'E'),
            ("**/dir", "dir", 'E'),
            ("**/dir", "dir/file", 'P'),
            ("**/dir2/*", "dir/dir2/file", 'E'),
            ("**/dir2/*", "dir/dir2/file/", 'P'),
            ("**/dir2/**", "dir/dir2/dir3/file", 'E'),
            ("**/dir2/**", "dir/dir2/dir3/file/", 'E'),
            ("**file", "file", 'E'),
            ("**file", "dir/file", 'E'),
            ("**/file", "dir/file", 'E'),
            ("**file", "dir/dir/file", 'E'),
            ("**/file", "dir/dir/file", 'E'),
            ("**/file*", "dir/dir/file", 'E'),
            ("**/file*", "dir/dir/file.txt", 'E'),
            ("**/file*txt", "dir/dir/file.txt", 'E'),
            ("**/file*.txt", "dir/dir/file.txt", 'E'),
            ("**/file*.txt*", "dir/dir/file.txt", 'E'),
            ("**/**/*.txt", "dir/dir/file.txt", 'E'),
            ("**/**/*.txt2", "dir/dir/file.txt", '-'),
            ("**/*.txt", "file.txt", 'E'),
            ("**/**/*.txt", "file.txt", 'E'),
            ("a**/*.txt", "a/file.txt", 'E'),
            ("a**/*.txt", "a/dir/file.txt", 'E'),
            ("a**/*.txt", "a/dir/dir/file.txt", 'E'),
            ("a/*.txt", "a/dir/file.txt", '-'),
            ("a/*.txt", "a/file.txt", 'E'),
            ("a/*.txt**", "a/file.txt", 'E'),
            ("a[b-d]e", "ae", '-'),
            ("a[b-d]e", "ace", 'E'),
            ("a[b-d]e", "aae", '-'),
            ("a[^b-d]e", "aze", 'E'),
            (".*", ".foo", 'E'),
            (".*", "foo", '-'),
            ("abc.def", "abcdef", '-'),
            ("abc.def", "abc.def", 'E'),
            ("abc.def", "abcZdef", '-'),
            ("abc?def", "abcZdef", 'E'),
            ("abc?def", "abcdef", '-'),
            ("**/foo/bar", "foo/bar", 'E'),
            ("**/foo/bar", "dir/foo/bar", 'E'),
            ("**/foo/bar", "dir/dir2/foo/bar", 'E'),
            ("abc/**", "abc", '-'),
            ("abc/**", "abc/def", 'E'),
            ("abc/**", "abc/def/ghi", 'E'),
            ("**/.foo", ".foo", 'E'),
            ("**/.foo", "bar.foo", '-'),
            ("a(b)c/def", "a(b)c/def", 'E'),
            ("a(b)c/def", "a(b)c/xyz", '-'),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", 'E'),
            (
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                'E',
            ),
            (
                "dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                'E',
            ),
            ("a\\\\", "a\\", 'E'),
            ("a\\*b", "a*b", 'E'),
        ];
        for (text, path, expected) in cases {
            let p = pattern(text);
            let exact = current(&p, path);
            let any = exact || go_parents(path).iter().any(|parent| current(&p, parent));
            let got = match (exact, any) {
                (true, _) => 'E',
                (false, true) => 'P',
                (false, false) => '-',
            };
            assert_eq!(got, expected, "pattern `{text}`, path `{path}`");
            assert_eq!(
                plural_chain(&[p], path),
                expected != '-',
                "pattern `{text}`, path `{path}`, with the parents' results"
            );
        }
        let lists: [(&[&str], &str, bool); 4] = [
            (&["**", "!util/docker/web"], "util/docker/web/foo", false),
            (
                &["**", "!util/docker/web", "util/docker/web/foo"],
                "util/docker/web/foo",
                true,
            ),
            (
                &[
                    "**",
                    "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                ],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
            (
                &["**", "!dist/*.whl"],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
        ];
        for (texts, path, expected) in lists {
            let patterns: Vec<Pattern> = texts.iter().map(|t| pattern(t)).collect();
            assert_eq!(
                plural_chain(&patterns, path),
                expected,
                "{texts:?} on `{path}`"
            );
        }
    }

    /// The `+ ( ) |` cases above are characters to the current matcher (tested there) but
    /// regular-expression syntax to Docker 20.10: no fingerprint.
    #[test]
    fn what_docker_20_reads_as_a_regexp_is_refused() {
        for text in ["a(b)c/def", "a.|)$(}+{bc", "c++", "x{2}"] {
            let why = Ignore::parse(text).unwrap_err();
            assert!(why.contains("Docker 20.10"), "{text}: {why}");
        }
        // A `{` that is no repetition is a character to every version.
        assert!(Ignore::parse("*.{js,ts}").is_ok());
    }

    /// patternmatcher's `TestCompile`: the match type, and for regexps the expression itself.
    #[test]
    fn patternmatcher_compile_cases() {
        fn render(tokens: &[Token]) -> String {
            let mut out = String::from("^");
            for token in tokens {
                match token {
                    Token::Lit(c) if ".+()|{}$".contains(*c) => {
                        out.push('\\');
                        out.push(*c);
                    }
                    Token::Lit(c) => out.push(*c),
                    Token::Star => out.push_str("[^/]*"),
                    Token::Quest => out.push_str("[^/]"),
                    Token::Dirs => out.push_str("(.*/)?"),
                    Token::Rest => out.push_str(".*"),
                    Token::Start => out.push('^'),
                    Token::Class { negated, ranges } => {
                        out.push('[');
                        if *negated {
                            out.push('^');
                        }
                        for (lo, hi) in ranges {
                            out.push(*lo);
                            if lo != hi {
                                out.push('-');
                                out.push(*hi);
                            }
                        }
                        out.push(']');
                    }
                }
            }
            out.push('$');
            out
        }
        let cases = [
            ("*", "regexp", "^[^/]*$"),
            ("file*", "regexp", "^file[^/]*$"),
            ("*file", "regexp", "^[^/]*file$"),
            ("a*/b", "regexp", "^a[^/]*/b$"),
            ("**", "suffix", ""),
            ("**/**", "regexp", "^(.*/)?.*$"),
            ("dir/**", "prefix", ""),
            ("**/dir", "suffix", ""),
            ("**/dir2/*", "regexp", "^(.*/)?dir2/[^/]*$"),
            ("**/dir2/**", "regexp", "^(.*/)?dir2/.*$"),
            ("**file", "suffix", ""),
            ("**/file*txt", "regexp", "^(.*/)?file[^/]*txt$"),
            ("**/**/*.txt", "regexp", "^(.*/)?(.*/)?[^/]*\\.txt$"),
            ("a[b-d]e", "regexp", "^a[b-d]e$"),
            (".*", "regexp", "^\\.[^/]*$"),
            ("abc.def", "exact", ""),
            ("abc?def", "regexp", "^abc[^/]def$"),
            ("**/foo/bar", "suffix", ""),
            ("a(b)c/def", "exact", ""),
            ("a.|)$(}+{bc", "exact", ""),
            (
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                "exact",
                "",
            ),
        ];
        for (text, kind, regexp) in cases {
            let (form, tokens, _) = compile(&clean(text)).unwrap();
            let got = match form {
                Form::Exact(_) => "exact",
                Form::Prefix(_) => "prefix",
                Form::Suffix(_) => "suffix",
                Form::Regex => "regexp",
            };
            assert_eq!(got, kind, "`{text}`");
            if kind == "regexp" {
                assert_eq!(render(&tokens), regexp, "`{text}`");
            }
        }
    }

    /// Go's `filepath.Match` table, as patternmatcher's `TestMatch` runs it through `Matches`
    /// (Docker 20.10's matcher): a match, no match, or a syntax error (`!`).
    #[test]
    fn go_match_cases() {
        let cases = [
            ("abc", "abc", 'y'),
            ("*", "abc", 'y'),
            ("*c", "abc", 'y'),
            ("a*", "a", 'y'),
            ("a*", "abc", 'y'),
            ("a*", "ab/c", 'y'),
            ("a*/b", "abc/b", 'y'),
            ("a*/b", "a/c/b", 'n'),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", 'y'),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", 'y'),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", 'n'),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", 'n'),
            ("a*b?c*x", "abxbbxdbxebxczzx", 'y'),
            ("a*b?c*x", "abxbbxdbxebxczzy", 'n'),
            ("ab[c]", "abc", 'y'),
            ("ab[b-d]", "abc", 'y'),
            ("ab[e-g]", "abc", 'n'),
            ("ab[^c]", "abc", 'n'),
            ("ab[^b-d]", "abc", 'n'),
            ("ab[^e-g]", "abc", 'y'),
            ("a\\*b", "a*b", 'y'),
            ("a\\*b", "ab", 'n'),
            ("a?b", "a☺b", 'y'),
            ("a[^a]b", "a☺b", 'y'),
            ("a???b", "a☺b", 'n'),
            ("a[^a][^a][^a]b", "a☺b", 'n'),
            ("[a-ζ]*", "α", 'y'),
            ("*[a-ζ]", "A", 'n'),
            ("a?b", "a/b", 'n'),
            ("a*b", "a/b", 'n'),
            ("[\\]a]", "]", 'y'),
            ("[\\-]", "-", 'y'),
            ("[x\\-]", "x", 'y'),
            ("[x\\-]", "-", 'y'),
            ("[x\\-]", "z", 'n'),
            ("[\\-x]", "x", 'y'),
            ("[\\-x]", "-", 'y'),
            ("[\\-x]", "a", 'n'),
            ("[]a]", "]", '!'),
            ("[-]", "-", '!'),
            ("[x-]", "x", '!'),
            ("[x-]", "-", '!'),
            ("[x-]", "z", '!'),
            ("[-x]", "x", '!'),
            ("[-x]", "-", '!'),
            ("[-x]", "a", '!'),
            ("\\", "a", '!'),
            ("[a-b-c]", "a", '!'),
            ("[", "a", '!'),
            ("[^", "a", '!'),
            ("[^bc", "a", '!'),
            ("a[", "a", '!'),
            ("a[", "ab", '!'),
            ("*x", "xxx", 'y'),
        ];
        for (text, path, expected) in cases {
            let ignore = match Ignore::parse(text) {
                Ok(ignore) => ignore,
                Err(_) => {
                    assert_eq!(expected, '!', "`{text}` was refused");
                    continue;
                }
            };
            assert_ne!(expected, '!', "`{text}` is a syntax error to Docker");
            let got = ignore.docker20(&mut Matches::new(&ignore.patterns, path.as_bytes()));
            assert_eq!(got, expected == 'y', "`{text}` on `{path}`");
        }
    }

    /// moby's `ignorefile` test: comments, `/` cleaned away, `!` kept, spaces trimmed.
    #[test]
    fn read_all_as_moby_does() {
        let text = "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! ";
        let lines: Vec<String> = read_all(text)
            .unwrap()
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        assert_eq!(
            lines,
            [
                "test1",
                "test2",
                "a/file/here",
                "lastfile",
                "!inverted/abs/path",
                "!",
                "!"
            ]
        );
        // The BOM of the first line, `\r\n`, a comment only when `#` is first.
        let lines: Vec<String> = read_all("\u{feff}a\r\n  # b\n#c\n/!keep\n")
            .unwrap()
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        assert_eq!(lines, ["a", "# b", "!keep"]);
        assert!(Ignore::parse("!\n").is_err());
        // `!.` is a valid exception that matches nothing.
        assert!(Ignore::parse("!.\n").is_ok());
        assert!(read_all(&"x".repeat(MAX_LINE)).is_err());
    }

    /// A tree as the clients walk it: every entry of `paths` (a name ending in `/` is a
    /// folder; the folders above each entry exist too), and what the client with the given
    /// root knowledge sends, folders above a sent entry included.
    fn sent(ignore: &Ignore, root: &Parent, paths: &[&str]) -> Vec<String> {
        let mut tree: std::collections::BTreeSet<String> = Default::default();
        for p in paths {
            let p = p.trim_end_matches('/');
            let parts: Vec<&str> = p.split('/').collect();
            for n in 1..=parts.len() {
                let entry = parts[..n].join("/");
                let dir = n < parts.len() || paths.contains(&format!("{p}/").as_str());
                tree.insert(if dir { format!("{entry}/") } else { entry });
            }
        }
        fn walk(
            ignore: &Ignore,
            tree: &std::collections::BTreeSet<String>,
            prefix: &str,
            parent: &Parent,
            out: &mut Vec<String>,
        ) {
            let mut children: Vec<&String> = tree
                .iter()
                .filter(|e| {
                    e.strip_prefix(prefix).is_some_and(|rest| {
                        !rest.is_empty() && !rest.trim_end_matches('/').contains('/')
                    })
                })
                .collect();
            children.sort_by_key(|e| e.trim_end_matches('/').to_string());
            for child in children {
                let is_dir = child.ends_with('/');
                let path = child.trim_end_matches('/');
                let verdict = ignore.decide(parent, path.as_bytes(), is_dir);
                let at = out.len();
                if let (true, Some(into)) = (is_dir, &verdict.walk) {
                    walk(ignore, tree, child, into, out);
                }
                if verdict.sent || out.len() > at {
                    out.insert(at, path.to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(ignore, &tree, "", root, &mut out);
        out
    }

    /// What the 20.10 CLI and buildx 0.13 sent, each on its own (a `COPY . /` build exported
    /// with `-o type=local`, by hand on this repository's engines), and so what the union the
    /// fingerprint hashes must hold.
    #[test]
    fn each_client_sends_what_it_was_seen_to_send() {
        let docker20 = |_: &Ignore| Parent {
            docker20: true,
            single: None,
            plural: None,
            current: None,
        };
        let current = |i: &Ignore| Parent {
            docker20: false,
            single: None,
            plural: None,
            current: Some(vec![false; i.patterns.len()]),
        };
        let cases: [(&str, &[&str], &str, &str); 16] = [
            (
                "**\n!**.rs\n",
                &["build.rs", "src/main.rs", "src/lib.txt", "README.md"],
                "",
                "build.rs src src/main.rs",
            ),
            (
                "*.txt\n/!keep.txt\n",
                &["keep.txt", "other.txt", "!keep.txt", "a.md"],
                "a.md keep.txt",
                "a.md keep.txt",
            ),
            ("d\n!d/f\nd\n", &["d/f", "d/g", "e"], "d e", "d d/f e"),
            ("a/b\n!a\n", &["a/b/c", "a/x"], "a a/b a/b/c a/x", "a a/x"),
            (
                "**/foo\n",
                &["x/y/foo/z", "x/foo", "foo/q"],
                "x x/y",
                "x x/y",
            ),
            (
                "**/foo\n!nothing/x\n",
                &["x/y/foo/z", "x/foo/q", "foo/q"],
                "x x/y",
                "x x/y",
            ),
            (
                "**/foo\n!x/y*\n",
                &["x/y/foo/z", "x/foo/q", "foo/q"],
                "x x/y x/y/foo x/y/foo/z",
                "x x/y",
            ),
            (
                "x\n!**/keep\n",
                &["x/keep", "x/a/keep", "x/other"],
                "",
                "x x/a x/a/keep x/keep",
            ),
            (
                "*\n!src/**/*.rs\n",
                &["src/a.rs", "src/b/c.rs", "src/d.txt", "top.rs"],
                "src src/a.rs",
                "src src/a.rs src/b src/b/c.rs",
            ),
            (
                "**foo\n",
                &["barfoo", "x/barfoo", "foo"],
                "barfoo x x/barfoo",
                "x",
            ),
            ("a\n", &["a", "b"], "b", "b"),
            ("!a/keep\na\n", &["a/keep", "a/x", "b"], "a b", "b"),
            (
                "**\n!util/docker/web\nutil/docker/web/foo\n",
                &["util/docker/web/foo", "util/docker/web/bar", "util/x"],
                "util util/docker util/docker/web util/docker/web/bar",
                "util util/docker util/docker/web util/docker/web/bar",
            ),
            (
                "target\n!target/release/app\n",
                &[
                    "target/release/app",
                    "target/release/dep",
                    "target/debug/app",
                    "src/main.rs",
                ],
                "src src/main.rs target target/release target/release/app",
                "src src/main.rs target target/release target/release/app",
            ),
            (
                "*/x\n[ab]*\n!b2\n",
                &["d/x", "d/y", "a1", "b2", "c3"],
                "b2 c3 d d/y",
                "b2 c3 d d/y",
            ),
            (
                "docs\n!docs/**/*.md\n",
                &["docs/a.md", "docs/sub/b.md", "docs/c.txt"],
                "docs docs/a.md",
                "docs docs/a.md docs/sub docs/sub/b.md",
            ),
        ];
        for (text, paths, seen20, seen_current) in cases {
            let ignore = Ignore::parse(text).unwrap();
            // The lab's fixtures had the ignore file in the context, sent unless excluded.
            let mut all = paths.to_vec();
            all.push(".dockerignore");
            let strip = |sent: Vec<String>| {
                sent.into_iter()
                    .filter(|p| p != ".dockerignore")
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            assert_eq!(
                strip(sent(&ignore, &docker20(&ignore), &all)),
                seen20,
                "Docker 20.10 with {text:?}"
            );
            assert_eq!(
                strip(sent(&ignore, &current(&ignore), &all)),
                seen_current,
                "buildx 0.13 with {text:?}"
            );
            // The union holds both.
            let union = strip(sent(&ignore, &ignore.root(), &all));
            for p in seen20.split(' ').chain(seen_current.split(' ')) {
                assert!(
                    p.is_empty() || union.split(' ').any(|u| u == p),
                    "{p} missing from {union} with {text:?}"
                );
            }
        }
    }
}

//! The fingerprint of what a package's build reads from this checkout: the Dockerfile, the
//! ignore file, and every file of the build context that the ignore file lets through.
//!
//! With the plan's commands (see `plan`), it names a build: a run that pushed a build of the
//! same fingerprint leaves a marker tag, and a later run that finds it, with every final tag
//! still holding the marked image, has nothing to build. So it must change whenever the image
//! could: it is computed only when everything the build reads is known here, which rules out
//! images from outside that are not pinned by digest (a tag can move) and `ADD` of URLs. Files
//! are hashed with their paths, types, permissions and contents; when in doubt a file is hashed
//! (a needless rebuild), never left out (a stale image).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use regex::Regex;
use sha2::{Digest, Sha256};

use crate::package::Package;

/// The most context entries hashed before giving up: a context that large is very likely a
/// `target/` folder that the ignore file misses, and hashing it would cost more than it saves.
const MAX_ENTRIES: usize = 200_000;
/// The most bytes hashed before giving up, for the same reason.
const MAX_BYTES: u64 = 4 << 30;

/// Why a package has no fingerprint: its build may change without this checkout changing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknowable(pub String);

/// Context trees already hashed in this run, by context folder and ignore file text: the
/// packages of a workspace often share the workspace root as their context.
#[derive(Debug, Default)]
pub struct Contexts(BTreeMap<(PathBuf, Vec<u8>), Result<Vec<u8>, Unknowable>>);

/// The sha256, in hex, of what `package`'s build reads from this checkout, or why there is none.
pub fn sources(package: &Package, contexts: &mut Contexts) -> Result<String, Unknowable> {
    let config = &package.config;
    for stage in &package.graph.stages {
        let label = package.graph.name(stage.index);
        if let Some(image) = stage.images.iter().find(|i| !i.contains("@sha256:")) {
            return Err(Unknowable(format!(
                "stage `{label}` reads `{image}`, which is not pinned by digest (`@sha256:...`)"
            )));
        }
        if let Some(url) = stage.remote.first() {
            return Err(Unknowable(format!(
                "stage `{label}` adds `{url}` from the network"
            )));
        }
    }
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        // Length-prefixed, so that no two sequences of fields hash alike.
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(b"xtask-docker sources v1");
    // Without `platform`, the engine builds for its own: a fingerprint from another machine
    // kind must not match.
    field(std::env::consts::ARCH.as_bytes());
    let read = |path: &Path| {
        fs::read(path).map_err(|e| Unknowable(format!("cannot read `{}`: {e}", path.display())))
    };
    field(package.dockerfile_text.as_bytes());
    let ignore_file = ignore_file(&config.dockerfile, &config.context);
    let ignore_text = match &ignore_file {
        Some(path) => read(path)?,
        None => Vec::new(),
    };
    field(&ignore_text);
    let key = (config.context.clone(), ignore_text);
    let tree = match contexts.0.get(&key) {
        Some(tree) => tree.clone(),
        None => {
            let tree = tree(&config.context, ignore_file.as_deref(), &key.1);
            contexts.0.insert(key, tree.clone());
            tree
        }
    }?;
    field(&tree);
    Ok(hex(&hash.finalize()))
}

/// The sha256 of the context tree that the ignore file (`path`, whose text is `text`) lets
/// through.
fn tree(context: &Path, path: Option<&Path>, text: &[u8]) -> Result<Vec<u8>, Unknowable> {
    let ignore = match path {
        Some(path) => Ignore::parse(&String::from_utf8_lossy(text))
            .map_err(|e| Unknowable(format!("`{}`: {e}", path.display())))?,
        None => Ignore::default(),
    };
    let mut walk = Walk {
        ignore: &ignore,
        entries: 0,
        bytes: 0,
        hash: Sha256::new(),
        buffer: vec![0; 1 << 16],
    };
    walk.dir(context, "")?;
    Ok(walk.hash.finalize().to_vec())
}

/// The ignore file BuildKit reads: `<Dockerfile>.dockerignore` beside the Dockerfile, else the
/// context's `.dockerignore`.
pub fn ignore_file(dockerfile: &Path, context: &Path) -> Option<PathBuf> {
    let beside = PathBuf::from(format!("{}.dockerignore", dockerfile.display()));
    let in_context = context.join(".dockerignore");
    [beside, in_context].into_iter().find(|p| p.is_file())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Walk<'a> {
    ignore: &'a Ignore,
    entries: usize,
    bytes: u64,
    hash: Sha256,
    /// One read buffer for every file of the walk.
    buffer: Vec<u8>,
}

impl Walk<'_> {
    fn record(&mut self, kind: &[u8], relative: &str, extra: &[u8]) {
        for bytes in [kind, relative.as_bytes(), extra] {
            self.hash.update((bytes.len() as u64).to_le_bytes());
            self.hash.update(bytes);
        }
    }

    fn dir(&mut self, dir: &Path, relative: &str) -> Result<(), Unknowable> {
        let cannot =
            |e: std::io::Error| Unknowable(format!("cannot read `{}`: {e}", dir.display()));
        let mut entries: Vec<(String, PathBuf)> = fs::read_dir(dir)
            .map_err(cannot)?
            .map(|entry| entry.map(|e| (e.file_name().to_string_lossy().into_owned(), e.path())))
            .collect::<Result<_, _>>()
            .map_err(cannot)?;
        entries.sort();
        for (name, path) in entries {
            let relative = if relative.is_empty() {
                name
            } else {
                format!("{relative}/{name}")
            };
            self.entries += 1;
            if self.entries > MAX_ENTRIES || self.bytes > MAX_BYTES {
                return Err(Unknowable(format!(
                    "the build context has more than {MAX_ENTRIES} entries or {} GiB that the ignore file lets through",
                    MAX_BYTES >> 30
                )));
            }
            let excluded = self.ignore.excludes(&relative);
            let meta = fs::symlink_metadata(&path)
                .map_err(|e| Unknowable(format!("cannot read `{}`: {e}", path.display())))?;
            let mode = {
                use std::os::unix::fs::PermissionsExt;
                (meta.permissions().mode() & 0o7777).to_le_bytes()
            };
            if meta.is_dir() {
                // A folder is left out whole only when no exception could let something in it
                // back in; otherwise it is walked and its entries are decided one by one.
                if excluded && !self.ignore.has_exceptions() {
                    continue;
                }
                self.record(b"dir", &relative, &mode);
                self.dir(&path, &relative)?;
            } else if excluded {
                continue;
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(&path)
                    .map_err(|e| Unknowable(format!("cannot read `{}`: {e}", path.display())))?;
                self.record(b"link", &relative, target.as_os_str().as_encoded_bytes());
            } else if meta.is_file() {
                let mut content = Sha256::new();
                let cannot = |e: std::io::Error| {
                    Unknowable(format!("cannot read `{}`: {e}", path.display()))
                };
                let mut file = fs::File::open(&path).map_err(cannot)?;
                loop {
                    let n = file.read(&mut self.buffer).map_err(cannot)?;
                    if n == 0 {
                        break;
                    }
                    self.bytes += n as u64;
                    content.update(&self.buffer[..n]);
                }
                let mut extra = mode.to_vec();
                extra.extend_from_slice(&content.finalize());
                self.record(b"file", &relative, &extra);
            } else {
                self.record(b"other", &relative, &mode);
            }
        }
        Ok(())
    }
}

/// The patterns of a `.dockerignore`, with Docker's semantics (moby/patternmatcher): each
/// pattern is matched against the whole path relative to the context, `*` and `?` stop at `/`,
/// `**` spans folders, a path is also matched by a pattern that matches one of its parent
/// folders, and the last pattern that matches decides (`!` lets a path back in).
#[derive(Debug, Default)]
pub struct Ignore {
    patterns: Vec<(Regex, bool)>,
}

impl Ignore {
    /// Reads the file's text: one pattern per line, `#` comments, blank lines skipped.
    pub fn parse(text: &str) -> Result<Ignore, String> {
        let mut patterns = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = if index == 0 {
                line.trim_start_matches('\u{feff}')
            } else {
                line
            };
            // As Docker does: a comment is a line that starts with `#`, before trimming.
            if line.starts_with('#') {
                continue;
            }
            let mut pattern = line.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
            }
            let mut cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            if exception && cleaned == "." {
                return Err(format!("line {}: illegal exclusion pattern `!`", index + 1));
            }
            let regex = Regex::new(&to_regex(&cleaned))
                .map_err(|_| format!("line {}: `{line}` is not a valid pattern", index + 1))?;
            patterns.push((regex, exception));
        }
        Ok(Ignore { patterns })
    }

    /// Whether any pattern is an exception (`!`).
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|(_, exception)| *exception)
    }

    /// Whether the context path `relative` (`/`-separated, no leading `/`) is left out.
    pub fn excludes(&self, relative: &str) -> bool {
        let parents: Vec<&str> = relative
            .match_indices('/')
            .map(|(i, _)| &relative[..i])
            .collect();
        let mut excluded = false;
        for (regex, exception) in &self.patterns {
            if regex.is_match(relative) || parents.iter().any(|p| regex.is_match(p)) {
                excluded = !exception;
            }
        }
        excluded
    }
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

/// A pattern as a regular expression, as moby/patternmatcher compiles it.
fn to_regex(pattern: &str) -> String {
    let mut out = String::from("^");
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
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
                if i >= chars.len() {
                    out.push_str(".*");
                } else {
                    out.push_str("(.*/)?");
                }
            }
            '*' => out.push_str("[^/]*"),
            '?' => out.push_str("[^/]"),
            // The regexp characters that mean nothing to Go's `filepath.Match`.
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                out.push('\\');
                out.push(c);
            }
            '\\' => {
                out.push('\\');
                if let Some(&next) = chars.get(i) {
                    i += 1;
                    out.push(next);
                } else {
                    out.push('\\');
                }
            }
            // Everything else, `[`, `]`, `^` and `-` of classes included, as it is.
            _ => out.push(c),
        }
    }
    out.push('$');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> Ignore {
        Ignore::parse(text).unwrap()
    }

    #[test]
    fn patterns_match_as_docker_matches_them() {
        let i = ignore("# comment\ntarget\n/.git\n*.log\ndocs/**/*.md\n**/secret\n");
        for excluded in [
            "target",
            "target/debug/app",
            ".git/HEAD",
            "a.log",
            "docs/x.md",
            "docs/a/b/x.md",
            "secret",
            "deep/down/secret",
            "deep/down/secret/inner",
        ] {
            assert!(i.excludes(excluded), "{excluded} should be excluded");
        }
        for kept in [
            "src/target",
            "src/a.log",
            "docs/x.txt",
            "Dockerfile",
            "# comment",
            "targets",
        ] {
            assert!(!i.excludes(kept), "{kept} should be kept");
        }
    }

    #[test]
    fn the_last_matching_pattern_decides() {
        let i = ignore("target\n!target/release/app\n*.md\n!README.md\n");
        assert!(i.has_exceptions());
        assert!(i.excludes("target/debug/x"));
        assert!(!i.excludes("target/release/app"));
        assert!(i.excludes("NOTES.md"));
        assert!(!i.excludes("README.md"));
        // An exclusion after the exception wins again.
        let i = ignore("!keep\n*\n");
        assert!(i.excludes("keep"));
    }

    #[test]
    fn cleaning_classes_and_escapes() {
        assert_eq!(clean("./a//b/../c/"), "a/c");
        assert_eq!(clean("/"), "/");
        assert_eq!(clean("."), ".");
        let i = ignore("./build/\n[a-b].txt\n[^c]?.bin\nlit\\*\n  spaced  \n");
        assert!(i.excludes("build/out"));
        assert!(i.excludes("a.txt") && !i.excludes("c.txt"));
        assert!(i.excludes("d1.bin") && !i.excludes("c1.bin"));
        assert!(i.excludes("lit*") && !i.excludes("litx"));
        assert!(i.excludes("spaced"));
        assert!(Ignore::parse("!\n").is_err());
        assert!(Ignore::parse("[\n").is_err());
    }

    fn package(dir: &Path, dockerfile: &str) -> Package {
        fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
        let mut config = crate::plan::tests::config(&[], &["dev"]);
        config.dockerfile = dir.join("Dockerfile");
        config.context = dir.to_path_buf();
        Package::resolve(config, dockerfile).unwrap()
    }

    #[test]
    fn changes_with_what_the_build_reads_and_only_with_that() {
        let dir = std::env::temp_dir().join(format!("xtd-fingerprint-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("src")).unwrap();
        fs::create_dir_all(dir.join("target/debug")).unwrap();
        fs::write(dir.join("src/main.rs"), "fn main() {}").unwrap();
        fs::write(dir.join(".dockerignore"), "target\n").unwrap();
        let p = package(&dir, "FROM scratch\nCOPY src /src\n");
        let first = sources(&p, &mut Contexts::default()).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(
            sources(&p, &mut Contexts::default()).unwrap(),
            first,
            "stable"
        );

        // Ignored files do not count; sent ones, their modes and the ignore file do.
        fs::write(dir.join("target/debug/app"), "binary").unwrap();
        assert_eq!(sources(&p, &mut Contexts::default()).unwrap(), first);
        fs::write(dir.join("src/main.rs"), "fn main() { }").unwrap();
        let edited = sources(&p, &mut Contexts::default()).unwrap();
        assert_ne!(edited, first);
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir.join("src/main.rs"), fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let chmod = sources(&p, &mut Contexts::default()).unwrap();
        assert_ne!(chmod, edited);
        fs::write(dir.join("src/new.rs"), "").unwrap();
        let added = sources(&p, &mut Contexts::default()).unwrap();
        assert_ne!(added, chmod);
        fs::write(dir.join(".dockerignore"), "target\n*.tmp\n").unwrap();
        let ignore_edited = sources(&p, &mut Contexts::default()).unwrap();
        assert_ne!(ignore_edited, added);

        // So does the Dockerfile (which `package` rewrites).
        let q = package(&dir, "FROM scratch\nCOPY src /srv\n");
        assert_ne!(
            sources(&q, &mut Contexts::default()).unwrap(),
            ignore_edited
        );

        // What cannot be known from here gives no fingerprint, naming the culprit.
        let tag = package(&dir, "FROM rust:1.82 AS build\nFROM scratch\n");
        let why = sources(&tag, &mut Contexts::default()).unwrap_err().0;
        assert!(
            why.contains("`rust:1.82`") && why.contains("`build`"),
            "{why}"
        );
        let pinned = package(&dir, "FROM rust@sha256:00ff AS build\nFROM scratch\n");
        assert!(sources(&pinned, &mut Contexts::default()).is_ok());
        let url = package(&dir, "FROM scratch\nADD https://example.com/x /x\n");
        assert!(sources(&url, &mut Contexts::default())
            .unwrap_err()
            .0
            .contains("https://example.com/x"));
        // A context hashed once serves every package that shares it, until the run ends.
        let mut shared = Contexts::default();
        let before = sources(&p, &mut shared).unwrap();
        fs::write(dir.join("src/main.rs"), "fn main() { 2 }").unwrap();
        assert_eq!(sources(&p, &mut shared).unwrap(), before);
        assert_ne!(sources(&p, &mut Contexts::default()).unwrap(), before);
        fs::remove_dir_all(&dir).unwrap();
    }
}

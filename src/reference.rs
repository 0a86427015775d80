//! Image repository names and tags, checked against Docker's reference grammar
//! (`github.com/distribution/reference`), written out by hand:
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [domain '/'] remote-name
//! domain           := host [':' port-number]
//! host             := domain-name | IPv4address | '[' IPv6address ']'
//! domain-name      := domain-component ['.' domain-component]*
//! domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
//! port-number      := /[0-9]+/
//! remote-name      := path-component ['/' path-component]*
//! path-component   := alpha-numeric [separator alpha-numeric]*
//! alpha-numeric    := /[a-z0-9]+/
//! separator        := /[_.]|__|[-]+/
//! tag              := /[\w][\w.-]{0,127}/
//! ```

use std::fmt;

/// The longest name (domain and path) Docker accepts.
const NAME_MAX: usize = 255;
/// The longest tag Docker accepts.
const TAG_MAX: usize = 128;

/// A validated image repository name without tag or digest, e.g. `ghcr.io/acme/service` or
/// `127.0.0.1:5000/service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository(String);

impl Repository {
    /// Checks `s` against the grammar; the error is the reason, e.g. "`Foo/bar` must be
    /// lowercase".
    ///
    /// Stricter than Docker in one way: Docker reads an uppercase first component such as
    /// `Acme/service` as a registry host `Acme`, which is nearly always a typo for Docker Hub's
    /// `acme/service`, so a host must contain `.` or `:` or be `localhost`.
    pub fn parse(s: &str) -> Result<Repository, String> {
        if s.is_empty() {
            return Err("the image repository is empty".to_string());
        }
        if s.len() > NAME_MAX {
            return Err(format!("`{s}` is longer than {NAME_MAX} characters"));
        }
        if s.contains('@') {
            return Err(format!(
                "`{s}` has a digest; `image` takes a repository without tag or digest"
            ));
        }
        // A `:` after the last `/` can only start a tag; one before it is a port.
        let last = s.rsplit('/').next().unwrap_or(s);
        if last.contains(':') {
            return Err(format!(
                "`{s}` has a tag; `image` takes a repository without tag"
            ));
        }
        let (domain, path) = split_domain(s);
        if let Some(domain) = domain {
            check_domain(s, domain)?;
        }
        check_path(s, path)?;
        Ok(Repository(s.to_string()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The registry part (`ghcr.io`, `localhost:5000`), if the name has one; none means
    /// Docker Hub.
    pub fn domain(&self) -> Option<&str> {
        split_domain(&self.0).0
    }

    /// `repository:tag`.
    pub fn with_tag(&self, tag: &Tag) -> String {
        format!("{}:{}", self.0, tag.0)
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Docker's rule: the first component is a registry only if something follows it and it has
/// a `.` or `:`, is `localhost`, or has an uppercase letter (which no path component may).
fn split_domain(s: &str) -> (Option<&str>, &str) {
    match s.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, s),
    }
}

fn check_domain(s: &str, domain: &str) -> Result<(), String> {
    let invalid = || format!("`{s}` has an invalid registry host `{domain}`");
    let (host, port) = if let Some(bracketed) = domain.strip_prefix('[') {
        let (ipv6, after) = bracketed.split_once(']').ok_or_else(invalid)?;
        if ipv6.is_empty() || !ipv6.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(invalid());
        }
        match after {
            "" => (None, None),
            _ => (None, Some(after.strip_prefix(':').ok_or_else(invalid)?)),
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(domain), None),
        }
    };
    if let Some(host) = host {
        if !host.split('.').all(is_domain_component) {
            return Err(invalid());
        }
        // Docker would take `Acme/x` as a host `Acme`; see `Repository::parse`.
        if !host.contains('.') && port.is_none() && host != "localhost" {
            return Err(format!("`{s}` must be lowercase"));
        }
    }
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "`{s}` has an invalid port `{port}` in registry host `{domain}`"
            ));
        }
    }
    Ok(())
}

fn is_domain_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
        }
        _ => false,
    }
}

fn check_path(s: &str, path: &str) -> Result<(), String> {
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("`{s}` must be lowercase"));
    }
    for component in path.split('/') {
        if component.is_empty() {
            return Err(format!("`{s}` has an empty path component"));
        }
        if !is_path_component(component) {
            return Err(format!(
                "`{s}` has an invalid path component `{component}`: path components are \
                 lowercase letters and digits, joined by `.`, `_`, `__` or dashes"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+ ([_.]|__|[-]+) [a-z0-9]+ ...`
fn is_path_component(component: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !component.starts_with(alnum) || !component.ends_with(alnum) {
        return false;
    }
    // Between runs of letters and digits, each run of other characters must be a separator.
    component
        .split(alnum)
        .filter(|separator| !separator.is_empty())
        .all(|separator| {
            matches!(separator, "." | "_" | "__") || separator.chars().all(|c| c == '-')
        })
}

/// A validated tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag(String);

impl Tag {
    /// Checks `s` against `[\w][\w.-]{0,127}`; the error is the reason.
    pub fn parse(s: &str) -> Result<Tag, String> {
        let Some(first) = s.chars().next() else {
            return Err("the tag is empty".to_string());
        };
        if s.len() > TAG_MAX {
            return Err(format!(
                "`{s}` is longer than {TAG_MAX} characters, the most a tag may have"
            ));
        }
        if !is_word_char(first) {
            return Err(format!(
                "`{s}` starts with `{first}`; a tag starts with a letter, digit or `_`"
            ));
        }
        if let Some(bad) = s.chars().find(|&c| !is_tag_char(c)) {
            return Err(format!(
                "`{s}` has `{bad}`; a tag holds only letters, digits, `_`, `.` and `-`"
            ));
        }
        Ok(Tag(s.to_string()))
    }

    /// The tag as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Go's `\w`: ASCII only.
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_tag_char(c: char) -> bool {
    is_word_char(c) || c == '.' || c == '-'
}

/// Turns any text (a branch name) into a valid tag of at most `max` characters.
///
/// Every character outside `[A-Za-z0-9_.-]` becomes `-` (so `feature/x` gives `feature-x`),
/// and a leading `.` or `-` becomes `_`, as a tag cannot start with them. Case is kept. If the
/// result is longer than `max`, it is cut and ends in `-` and the first 8 hex digits of the
/// FNV-1a hash of the original text, so texts that differ only past the cut, or only in
/// characters mapped to `-`, get different tags once cut. (Uncut, `a/b` and `a-b` both give
/// `a-b`.) With `max` under 10, a cut tag is just the first `max` hex digits of the hash.
///
/// `max` above 128, the longest tag Docker accepts, counts as 128; the result always passes
/// [`Tag::parse`]. Errors if `text` is empty or `max` is 0.
pub fn sanitize_tag(text: &str, max: usize) -> Result<String, String> {
    if text.is_empty() {
        return Err("cannot make a tag from an empty name".to_string());
    }
    if max == 0 {
        return Err("cannot make a tag of at most 0 characters".to_string());
    }
    let max = max.min(TAG_MAX);
    let mut tag: String = text
        .chars()
        .map(|c| if is_tag_char(c) { c } else { '-' })
        .collect();
    if tag.starts_with(['.', '-']) {
        tag.replace_range(..1, "_");
    }
    // Only ASCII is left, so bytes are characters.
    if tag.len() <= max {
        return Ok(tag);
    }
    let hash = format!("{:08x}", fnv1a_64(text.as_bytes()) >> 32);
    const SUFFIX: usize = 9; // '-' and 8 hex digits
    if max <= SUFFIX {
        return Ok(hash.chars().take(max).collect());
    }
    tag.truncate(max - SUFFIX);
    tag.push('-');
    tag.push_str(&hash);
    Ok(tag)
}

/// 64-bit FNV-1a: tiny, and the same on every run and platform, unlike std's `Hasher`s.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether `image` lives on a registry that engines treat as insecure (plain HTTP) by default: a
/// host on loopback.
pub fn is_loopback_registry(image: &str) -> bool {
    let domain = image.split('/').next().unwrap_or("");
    if !image.contains('/') {
        return false;
    }
    let host = domain.rsplit_once(':').map_or(domain, |(h, _)| h);
    host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    #[test]
    fn knows_loopback_registries() {
        use super::is_loopback_registry;
        assert!(is_loopback_registry("127.0.0.1:5000/a:b"));
        assert!(is_loopback_registry("localhost:5000/a:b"));
        assert!(is_loopback_registry("localhost/a:b"));
        assert!(!is_loopback_registry("ghcr.io/acme/a:b"));
        assert!(!is_loopback_registry("localhost:latest"));
        assert!(!is_loopback_registry("127.example.com/a:b"));
    }

    use super::*;

    #[test]
    fn repositories_accepted() {
        for (name, domain) in [
            ("service", None),
            ("acme/service", None),
            ("a/b/c/d", None),
            ("ghcr.io/acme/service", Some("ghcr.io")),
            ("localhost/x", Some("localhost")),
            ("localhost:5000/x", Some("localhost:5000")),
            ("127.0.0.1:5000/a/b", Some("127.0.0.1:5000")),
            ("[::1]:5000/x", Some("[::1]:5000")),
            ("[fe80::1]/x", Some("[fe80::1]")),
            ("Registry.Example.COM/x", Some("Registry.Example.COM")),
            (
                "my-registry.example.com:443/team/app",
                Some("my-registry.example.com:443"),
            ),
            ("a__b", None),
            ("a---b", None),
            ("a.b_c-d", None),
            ("0", None),
            ("x1/2y", None),
        ] {
            let repo = Repository::parse(name);
            assert_eq!(repo.as_ref().map(Repository::as_str), Ok(name), "{name}");
            assert_eq!(repo.as_ref().map(Repository::domain), Ok(domain), "{name}");
        }
        let long = format!("a/{}", "b".repeat(253));
        assert_eq!(Repository::parse(&long).map(|r| r.to_string()), Ok(long));
    }

    #[test]
    fn repositories_rejected() {
        let cases = [
            ("", "the image repository is empty"),
            ("Service", "`Service` must be lowercase"),
            ("acme/Service", "`acme/Service` must be lowercase"),
            ("Foo/bar", "`Foo/bar` must be lowercase"),
            ("x:1", "`x:1` has a tag; `image` takes a repository without tag"),
            ("ghcr.io/acme/x:latest", "`ghcr.io/acme/x:latest` has a tag; `image` takes a repository without tag"),
            ("localhost:5000", "`localhost:5000` has a tag; `image` takes a repository without tag"),
            ("x@sha256:abc", "`x@sha256:abc` has a digest; `image` takes a repository without tag or digest"),
            ("-a", "`-a` has an invalid path component `-a`: path components are lowercase letters and digits, joined by `.`, `_`, `__` or dashes"),
            ("a-", "`a-` has an invalid path component `a-`: path components are lowercase letters and digits, joined by `.`, `_`, `__` or dashes"),
            ("a..b", "`a..b` has an invalid path component `a..b`: path components are lowercase letters and digits, joined by `.`, `_`, `__` or dashes"),
            ("a___b", "`a___b` has an invalid path component `a___b`: path components are lowercase letters and digits, joined by `.`, `_`, `__` or dashes"),
            ("a._b", "`a._b` has an invalid path component `a._b`: path components are lowercase letters and digits, joined by `.`, `_`, `__` or dashes"),
            ("a b", "`a b` has an invalid path component `a b`: path components are lowercase letters and digits, joined by `.`, `_`, `__` or dashes"),
            ("café", "`café` has an invalid path component `café`: path components are lowercase letters and digits, joined by `.`, `_`, `__` or dashes"),
            ("a/", "`a/` has an empty path component"),
            ("/a", "`/a` has an empty path component"),
            ("a//b", "`a//b` has an empty path component"),
            ("ghcr.io/", "`ghcr.io/` has an empty path component"),
            ("-ghcr.io/a", "`-ghcr.io/a` has an invalid registry host `-ghcr.io`"),
            ("ghcr..io/a", "`ghcr..io/a` has an invalid registry host `ghcr..io`"),
            ("gh_cr.io/a", "`gh_cr.io/a` has an invalid registry host `gh_cr.io`"),
            (":5000/a", "`:5000/a` has an invalid registry host `:5000`"),
            ("localhost:/a", "`localhost:/a` has an invalid port `` in registry host `localhost:`"),
            ("localhost:50a/a", "`localhost:50a/a` has an invalid port `50a` in registry host `localhost:50a`"),
            ("[::1/a", "`[::1/a` has an invalid registry host `[::1`"),
            ("[]:5000/a", "`[]:5000/a` has an invalid registry host `[]:5000`"),
            ("[::g]/a", "`[::g]/a` has an invalid registry host `[::g]`"),
            ("[::1]x/a", "`[::1]x/a` has an invalid registry host `[::1]x`"),
            ("[::1]", "`[::1]` has a tag; `image` takes a repository without tag"),
        ];
        for (name, reason) in cases {
            assert_eq!(Repository::parse(name), Err(reason.to_string()), "{name}");
        }
        let long = format!("a/{}", "b".repeat(254));
        assert_eq!(
            Repository::parse(&long),
            Err(format!("`{long}` is longer than 255 characters"))
        );
    }

    #[test]
    fn with_tag() {
        let repo = Repository::parse("ghcr.io/acme/service");
        let tag = Tag::parse("main-1a2b");
        assert_eq!(
            repo.and_then(|r| tag.map(|t| r.with_tag(&t))),
            Ok("ghcr.io/acme/service:main-1a2b".to_string())
        );
    }

    #[test]
    fn tags() {
        for tag in ["latest", "1.82", "_x", "A-b.C_d", "0", &"x".repeat(128)] {
            assert_eq!(
                Tag::parse(tag).map(|t| t.as_str().to_string()),
                Ok(tag.to_string())
            );
        }
        let long = "x".repeat(129);
        for (tag, reason) in [
            ("", "the tag is empty".to_string()),
            (
                &long,
                format!("`{long}` is longer than 128 characters, the most a tag may have"),
            ),
            (
                ".x",
                "`.x` starts with `.`; a tag starts with a letter, digit or `_`".to_string(),
            ),
            (
                "-x",
                "`-x` starts with `-`; a tag starts with a letter, digit or `_`".to_string(),
            ),
            (
                "a/b",
                "`a/b` has `/`; a tag holds only letters, digits, `_`, `.` and `-`".to_string(),
            ),
            (
                "a:b",
                "`a:b` has `:`; a tag holds only letters, digits, `_`, `.` and `-`".to_string(),
            ),
            (
                "é",
                "`é` starts with `é`; a tag starts with a letter, digit or `_`".to_string(),
            ),
            (
                "aé",
                "`aé` has `é`; a tag holds only letters, digits, `_`, `.` and `-`".to_string(),
            ),
        ] {
            assert_eq!(Tag::parse(tag), Err(reason), "{tag}");
        }
        assert_eq!(
            Tag::parse("v1").map(|t| t.to_string()),
            Ok("v1".to_string())
        );
    }

    #[test]
    fn fnv1a() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn sanitize() {
        let ok = |text: &str, max: usize| sanitize_tag(text, max).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok("main", 128), "main");
        assert_eq!(ok("feature/x", 128), "feature-x");
        assert_eq!(ok("Feature/Über cool!", 128), "Feature--ber-cool-");
        assert_eq!(ok(".hidden", 128), "_hidden");
        assert_eq!(ok("-x", 128), "_x");
        assert_eq!(ok("/x", 128), "_x");
        assert_eq!(ok("v1.2_3", 128), "v1.2_3");
        assert_eq!(ok("abcdefghij", 10), "abcdefghij");

        let long = format!("feature/{}", "very-long-branch-name-".repeat(10));
        let cut = ok(&long, 40);
        assert_eq!(cut.len(), 40);
        assert_eq!(cut, "feature-very-long-branch-name-v-152fd98d");
        assert_eq!(ok(&long, 1000).len(), 128);

        // Once cut, a name differing only in `/` vs `-` stays apart; uncut it does not.
        assert_eq!(ok("team/a-b", 128), ok("team-a-b", 128));
        assert_ne!(ok("team/a-b-feature", 12), ok("team-a-b-feature", 12));
        assert!(ok("team/a-b-feature", 12).starts_with("tea-"));

        assert_eq!(
            ok("abcdefghijk", 9),
            format!("{:08x}", fnv1a_64(b"abcdefghijk") >> 32)
                .chars()
                .take(9)
                .collect::<String>()
        );
        assert_eq!(ok("abcdefghijk", 3).len(), 3);
        assert_eq!(ok("ab", 1).len(), 1);
        assert_eq!(
            sanitize_tag("", 10),
            Err("cannot make a tag from an empty name".to_string())
        );
        assert_eq!(
            sanitize_tag("x", 0),
            Err("cannot make a tag of at most 0 characters".to_string())
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn parsing_never_panics(text in any::<String>()) {
                let _ = Repository::parse(&text);
                let _ = Tag::parse(&text);
                let _ = sanitize_tag(&text, 128);
            }

            #[test]
            fn reference_ish_never_panics(text in "[a-zA-Z0-9:/@._\\[\\]-]{0,40}") {
                if let Ok(repo) = Repository::parse(&text) {
                    prop_assert_eq!(repo.as_str(), text.as_str());
                    let _ = repo.domain();
                }
                let _ = Tag::parse(&text);
            }

            #[test]
            fn sanitized_tags_are_tags(text in any::<String>(), max in 1usize..=128) {
                match sanitize_tag(&text, max) {
                    Ok(tag) => {
                        prop_assert!(tag.len() <= max);
                        prop_assert!(Tag::parse(&tag).is_ok(), "{:?} -> {:?}", text, tag);
                    }
                    Err(_) => prop_assert!(text.is_empty()),
                }
            }

            #[test]
            fn branch_names_are_tags(text in "[a-zA-Z0-9/._-]{1,200}", max in 1usize..=200) {
                let tag = sanitize_tag(&text, max);
                prop_assert!(tag.as_ref().is_ok_and(|t| t.len() <= max.min(128) && Tag::parse(t).is_ok()));
            }
        }
    }
}

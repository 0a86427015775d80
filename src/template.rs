//! Tag templates: `"{version}"`, `"compile-{branch}"`, and the values they are filled with.

use std::fmt;

use crate::reference::{sanitize_tag, Tag};

/// A placeholder that a tag template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// The package version.
    Version,
    /// The full commit sha.
    GitSha,
    /// The first 7 characters of the commit sha.
    GitShortSha,
    /// The branch name, made into a valid tag.
    Branch,
}

impl Placeholder {
    /// Every placeholder, in the order the docs list them.
    pub const ALL: [Placeholder; 4] = [
        Placeholder::Version,
        Placeholder::GitSha,
        Placeholder::GitShortSha,
        Placeholder::Branch,
    ];
    /// What final tags may use.
    pub const FOR_TAGS: &'static [Placeholder] = &Placeholder::ALL;
    /// What cache tags may use: a per-commit cache tag could never be hit again.
    pub const FOR_CACHE_TAGS: &'static [Placeholder] = &[Placeholder::Version, Placeholder::Branch];

    /// The name between the braces.
    pub fn name(self) -> &'static str {
        match self {
            Placeholder::Version => "version",
            Placeholder::GitSha => "git_sha",
            Placeholder::GitShortSha => "git_short_sha",
            Placeholder::Branch => "branch",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Placeholder),
}

/// A parsed tag template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    raw: String,
    parts: Vec<Part>,
}

/// The values placeholders are filled with; `None` where this build has no such value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars {
    /// The package version.
    pub version: String,
    /// The commit sha, when the package is in a git checkout.
    pub git_sha: Option<String>,
    /// The branch name as it is (not yet made into a tag), when there is one.
    pub branch: Option<String>,
}

impl Template {
    /// Parses `raw`, refusing placeholders outside `allowed` and unbalanced braces.
    pub fn parse(raw: &str, allowed: &[Placeholder]) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = raw;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err(format!("`{raw}` has a `}}` without `{{`"));
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("`{raw}` has a `{{` without `}}`"))?;
            let name = &after[..close];
            let placeholder = Placeholder::ALL
                .into_iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| {
                    format!(
                        "`{raw}` uses unknown placeholder `{{{name}}}`\nnote: the placeholders are {}",
                        list(allowed)
                    )
                })?;
            if !allowed.contains(&placeholder) {
                return Err(format!(
                    "`{raw}` may not use `{{{name}}}`\nnote: here the placeholders are {}{}",
                    list(allowed),
                    if allowed == Placeholder::FOR_CACHE_TAGS {
                        " (a per-commit cache tag could never be hit again)"
                    } else {
                        ""
                    }
                ));
            }
            parts.push(Part::Var(placeholder));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if parts.is_empty() {
            return Err("a tag may not be empty".to_string());
        }
        let template = Template {
            raw: raw.to_string(),
            parts,
        };
        // A template without placeholders is a tag already: check it now, not at build time.
        if !template.uses(Placeholder::Branch) && !template.needs_git() {
            if let Some(text) = template.literal() {
                Tag::parse(&text)?;
            }
        }
        Ok(template)
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether the template uses `placeholder`.
    pub fn uses(&self, placeholder: Placeholder) -> bool {
        self.parts.contains(&Part::Var(placeholder))
    }

    /// Whether filling it needs the commit sha.
    pub fn needs_git(&self) -> bool {
        self.uses(Placeholder::GitSha) || self.uses(Placeholder::GitShortSha)
    }

    fn literal(&self) -> Option<String> {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                Part::Var(_) => None,
            })
            .collect()
    }

    /// Fills the placeholders and checks that the result is a valid tag. A long branch name is
    /// cut (with a hash of the whole name) so that the tag fits Docker's 128 characters.
    pub fn render(&self, vars: &Vars) -> Result<Tag, String> {
        // Everything but the branch first, to know how much room the branch has.
        let mut pieces = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            pieces.push(match part {
                Part::Text(text) => Some(text.clone()),
                Part::Var(Placeholder::Version) => Some(vars.version.clone()),
                Part::Var(p @ (Placeholder::GitSha | Placeholder::GitShortSha)) => {
                    let sha = vars.git_sha.as_deref().ok_or_else(|| {
                        format!(
                            "`{}` needs the commit sha, and this is not a git checkout",
                            self.raw
                        )
                    })?;
                    let len = if *p == Placeholder::GitSha {
                        sha.len()
                    } else {
                        7
                    };
                    Some(sha.chars().take(len).collect())
                }
                Part::Var(Placeholder::Branch) => None,
            });
        }
        let branches = pieces.iter().filter(|p| p.is_none()).count();
        if let Some(room) = 128usize
            .saturating_sub(pieces.iter().flatten().map(String::len).sum())
            .checked_div(branches)
        {
            let branch = vars.branch.as_deref().ok_or_else(|| {
                format!(
                    "`{}` needs a branch name, and none could be found",
                    self.raw
                )
            })?;
            if room == 0 {
                return Err(format!("`{}` leaves no room for the branch name", self.raw));
            }
            let branch = sanitize_tag(branch, room)?;
            pieces
                .iter_mut()
                .filter(|p| p.is_none())
                .for_each(|p| *p = Some(branch.clone()));
        }
        let out: String = pieces.into_iter().flatten().collect();
        Tag::parse(&out).map_err(|e| format!("`{}` gives `{out}`, not a valid tag: {e}", self.raw))
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

fn list(allowed: &[Placeholder]) -> String {
    allowed
        .iter()
        .map(|p| format!("`{{{}}}`", p.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars {
            version: "1.2.3".into(),
            git_sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
            branch: Some("feature/x".into()),
        }
    }

    fn render(raw: &str) -> Result<String, String> {
        Template::parse(raw, Placeholder::FOR_TAGS)?
            .render(&vars())
            .map(|t| t.as_str().to_string())
    }

    #[test]
    fn fills_every_placeholder() {
        assert_eq!(render("{version}").unwrap(), "1.2.3");
        assert_eq!(
            render("v{version}-{git_short_sha}").unwrap(),
            "v1.2.3-0123456"
        );
        assert_eq!(
            render("{git_sha}").unwrap(),
            "0123456789abcdef0123456789abcdef01234567"
        );
        assert_eq!(render("cache-{branch}").unwrap(), "cache-feature-x");
        assert_eq!(render("latest").unwrap(), "latest");
    }

    #[test]
    fn refuses_what_is_not_a_tag() {
        assert!(Template::parse("{nope}", Placeholder::FOR_TAGS)
            .unwrap_err()
            .contains("unknown placeholder `{nope}`"));
        assert!(Template::parse("a}", Placeholder::FOR_TAGS)
            .unwrap_err()
            .contains("`}` without `{`"));
        assert!(Template::parse("{version", Placeholder::FOR_TAGS)
            .unwrap_err()
            .contains("`{` without `}`"));
        assert!(Template::parse("", Placeholder::FOR_TAGS).is_err());
        assert!(Template::parse("-x", Placeholder::FOR_TAGS).is_err());
        assert!(Template::parse("a b", Placeholder::FOR_TAGS).is_err());
        let e = Template::parse("c-{git_short_sha}", Placeholder::FOR_CACHE_TAGS).unwrap_err();
        assert!(
            e.contains("may not use `{git_short_sha}`") && e.contains("never be hit again"),
            "{e}"
        );
        // A version with build metadata is no valid tag: say so, naming the template.
        let t = Template::parse("{version}", Placeholder::FOR_TAGS).unwrap();
        let e = t
            .render(&Vars {
                version: "1.0.0+meta".into(),
                ..vars()
            })
            .unwrap_err();
        assert!(
            e.starts_with("`{version}` gives `1.0.0+meta`, not a valid tag"),
            "{e}"
        );
    }

    #[test]
    fn long_branches_fit_in_128_characters() {
        let t = Template::parse("compile-{branch}", Placeholder::FOR_CACHE_TAGS).unwrap();
        let long = "feature/".to_string() + &"x".repeat(300);
        let tag = t
            .render(&Vars {
                branch: Some(long.clone()),
                ..vars()
            })
            .unwrap();
        assert_eq!(tag.as_str().len(), 128);
        assert!(tag.as_str().starts_with("compile-feature-xxx"));
        let other = t
            .render(&Vars {
                branch: Some(long.replace('/', "-")),
                ..vars()
            })
            .unwrap();
        assert_ne!(
            tag, other,
            "two branches that differ only in `/` and `-` stay apart when cut"
        );
    }

    #[test]
    fn missing_values_are_errors_not_empty_tags() {
        let t = Template::parse("{git_sha}", Placeholder::FOR_TAGS).unwrap();
        assert!(t
            .render(&Vars {
                git_sha: None,
                ..vars()
            })
            .unwrap_err()
            .contains("not a git checkout"));
        let t = Template::parse("{branch}", Placeholder::FOR_TAGS).unwrap();
        assert!(t
            .render(&Vars {
                branch: None,
                ..vars()
            })
            .unwrap_err()
            .contains("needs a branch name"));
    }
}

//! What git and the CI say of the checkout: the commit and the branch.

use std::path::Path;

use xshell::{cmd, Shell};

/// CI variables that name the branch being built, in the order they are asked. GitHub's
/// `GITHUB_HEAD_REF` is set only on pull requests, where `GITHUB_REF_NAME` is `123/merge`.
pub const BRANCH_VARIABLES: &[&str] = &[
    "GITHUB_HEAD_REF",
    "GITHUB_REF_NAME",
    "CI_COMMIT_REF_NAME",
    "BUILDKITE_BRANCH",
    "CIRCLE_BRANCH",
];

/// The branch from the first CI variable that is set and not empty.
pub fn branch_from_env(get: impl Fn(&str) -> Option<String>) -> Option<String> {
    BRANCH_VARIABLES
        .iter()
        .filter_map(|v| get(v))
        .find(|b| !b.trim().is_empty())
}

/// What one `git log` tells of the checkout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// The commit.
    pub sha: String,
    /// Its committer time (strict ISO 8601), so that two builds of one commit agree on it.
    pub time: String,
    /// The branch checked out; `None` on a detached HEAD.
    pub branch: Option<String>,
}

/// The checkout of `dir`, from a single `git log` (the overhead of a dry run matters);
/// `None` outside a git checkout or without git.
pub fn head(dir: &Path) -> Option<Head> {
    let sh = Shell::new().ok()?;
    sh.change_dir(dir);
    let out = cmd!(sh, "git log -1 --format=%H%x00%cI%x00%D HEAD")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()?;
    parse_head(&out)
}

/// Reads `SHA\0TIME\0DECORATIONS`; the branch is the `HEAD -> NAME` decoration.
fn parse_head(out: &str) -> Option<Head> {
    let mut fields = out.trim_end().splitn(3, '\0');
    let sha = fields.next().filter(|s| s.len() >= 7)?.to_string();
    let time = fields.next().unwrap_or_default().to_string();
    let branch = fields
        .next()
        .unwrap_or_default()
        .split(", ")
        .find_map(|d| d.strip_prefix("HEAD -> "))
        .map(str::to_string);
    Some(Head { sha, time, branch })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_git_log_line() {
        let head = parse_head(
            "0123abc\u{0}2026-11-27T20:00:00+00:00\u{0}HEAD -> feature/x, origin/main\n",
        )
        .unwrap();
        assert_eq!(head.sha, "0123abc");
        assert_eq!(head.time, "2026-11-27T20:00:00+00:00");
        assert_eq!(head.branch.as_deref(), Some("feature/x"));
        let detached =
            parse_head("0123abc\u{0}2026-11-27T20:00:00+00:00\u{0}HEAD, tag: v1.0\n").unwrap();
        assert_eq!(detached.branch, None);
        assert_eq!(parse_head(""), None);
    }

    #[test]
    fn ci_variables_in_order() {
        let env = |v: &str| match v {
            "GITHUB_HEAD_REF" => Some(String::new()),
            "GITHUB_REF_NAME" => Some("main".to_string()),
            "CI_COMMIT_REF_NAME" => Some("other".to_string()),
            _ => None,
        };
        assert_eq!(branch_from_env(env).as_deref(), Some("main"));
        assert_eq!(branch_from_env(|_| None), None);
    }
}

//! What git and the CI say of the checkout: the commit and the branch.

use std::path::Path;
use std::process::{Child, Command, Stdio};

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

/// A `git log` started by [`spawn_head`] that runs while the caller does other work.
pub struct PendingHead(Option<Child>);

/// Starts the one `git log` of a run (the overhead of a dry run matters) without waiting for
/// it: the caller overlaps it with loading
/// the workspace, without a thread of its own (its output is one short line, so it never fills
/// the pipe while nobody reads).
pub fn spawn_head(dir: &Path) -> PendingHead {
    PendingHead(
        Command::new("git")
            .args(["log", "-1", "--format=%H%x00%cI%x00%D", "HEAD"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok(),
    )
}

impl PendingHead {
    /// Waits for `git log`; `None` outside a git checkout or without git.
    pub fn wait(mut self) -> Option<Head> {
        let out = self.0.take()?.wait_with_output().ok()?;
        if !out.status.success() {
            return None;
        }
        parse_head(std::str::from_utf8(&out.stdout).ok()?)
    }
}

impl Drop for PendingHead {
    /// Reaps a `git log` nobody waited for (an early error), leaving no zombie behind in a
    /// long-lived xtask.
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.wait();
        }
    }
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

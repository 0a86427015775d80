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

/// The commit checked out in `dir`, or `None` outside a git checkout (or without git).
pub fn head_sha(dir: &Path) -> Option<String> {
    let sh = Shell::new().ok()?;
    sh.change_dir(dir);
    let sha = cmd!(sh, "git rev-parse --verify -q HEAD")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()?;
    (!sha.is_empty()).then_some(sha)
}

/// The branch checked out in `dir`; `None` on a detached HEAD or outside a git checkout.
pub fn head_branch(dir: &Path) -> Option<String> {
    let sh = Shell::new().ok()?;
    sh.change_dir(dir);
    let branch = cmd!(sh, "git symbolic-ref --short -q HEAD")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()?;
    (!branch.is_empty()).then_some(branch)
}

/// The committer time of the commit checked out in `dir` (strict ISO 8601), so that two builds
/// of one commit agree on it.
pub fn head_time(dir: &Path) -> Option<String> {
    let sh = Shell::new().ok()?;
    sh.change_dir(dir);
    let time = cmd!(sh, "git log -1 --format=%cI HEAD")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()?;
    (!time.is_empty()).then_some(time)
}

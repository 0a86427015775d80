//! What git and the CI say of the checkout: the commit, the branch, and the default branch.

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

/// CI variables that name the repository's default branch, in the order they are asked
/// (GitLab's, Buildkite's). GitHub Actions has none: its event payload tells it.
pub const DEFAULT_BRANCH_VARIABLES: &[&str] =
    &["CI_DEFAULT_BRANCH", "BUILDKITE_PIPELINE_DEFAULT_BRANCH"];

/// Where the name of the default branch came from: the warnings say it, so that a wrong guess
/// is seen (a repository whose default branch is `master`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultSource {
    /// The package's `default-branch` key.
    Config,
    /// A CI variable, by name.
    Variable(&'static str),
    /// GitHub's event payload: `repository.default_branch` in the file `GITHUB_EVENT_PATH` names.
    GithubEvent,
    /// `git symbolic-ref refs/remotes/origin/HEAD`: what the clone's remote calls its HEAD.
    OriginHead,
    /// Nothing said it: `main`.
    Assumed,
}

/// The default branch: the one whose builds write the caches that every branch reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultBranch {
    /// Its name, as git names it.
    pub name: String,
    /// Where the name came from.
    pub source: DefaultSource,
}

impl DefaultBranch {
    /// `main`, when nothing tells another name.
    pub fn assumed() -> DefaultBranch {
        DefaultBranch {
            name: "main".into(),
            source: DefaultSource::Assumed,
        }
    }

    /// The name and where it came from, for messages: `` `main` (from `origin/HEAD`) ``.
    pub fn describe(&self) -> String {
        let from = match &self.source {
            DefaultSource::Config => "from the `default-branch` key".to_string(),
            DefaultSource::Variable(name) => format!("from `{name}`"),
            DefaultSource::GithubEvent => {
                "from GitHub's event payload (`repository.default_branch`)".to_string()
            }
            DefaultSource::OriginHead => "from `origin/HEAD`".to_string(),
            DefaultSource::Assumed => {
                "assumed: no `default-branch` key, CI variable or `origin/HEAD` names one"
                    .to_string()
            }
        };
        format!("`{}` ({from})", self.name)
    }
}

/// The default branch as the CI tells it: its variables (`get` reads one), else GitHub's event
/// payload (`read` reads the file `GITHUB_EVENT_PATH` names). `None` when the CI says nothing.
pub fn default_branch_from_ci(
    get: impl Fn(&str) -> Option<String>,
    read: impl Fn(&Path) -> Option<String>,
) -> Option<DefaultBranch> {
    let named = |name: String| Some(name).filter(|n| !n.trim().is_empty() && !n.starts_with('-'));
    for &variable in DEFAULT_BRANCH_VARIABLES {
        if let Some(name) = get(variable).and_then(named) {
            return Some(DefaultBranch {
                name,
                source: DefaultSource::Variable(variable),
            });
        }
    }
    let path = get("GITHUB_EVENT_PATH").filter(|p| !p.is_empty())?;
    let payload: serde_json::Value = serde_json::from_str(&read(Path::new(&path))?).ok()?;
    let name = payload
        .get("repository")?
        .get("default_branch")?
        .as_str()?
        .to_string();
    Some(DefaultBranch {
        name: named(name)?,
        source: DefaultSource::GithubEvent,
    })
}

/// The default branch of a run: the CI's word, else `origin/HEAD`'s, else `main`. (A
/// package's `default-branch` key wins over all of them; the plan applies it.)
pub fn default_branch(ci: Option<DefaultBranch>, origin_head: Option<String>) -> DefaultBranch {
    ci.or_else(|| {
        origin_head.map(|name| DefaultBranch {
            name,
            source: DefaultSource::OriginHead,
        })
    })
    .unwrap_or_else(DefaultBranch::assumed)
}

/// The default branch of a run, being found: the CI's word read at once, `origin/HEAD` asked
/// of git only when the CI said nothing.
pub struct PendingDefault {
    ci: Option<DefaultBranch>,
    origin_head: Option<PendingOriginHead>,
}

/// Starts finding the default branch of the checkout in `dir` (see [`default_branch`]): reads
/// the CI's variables and GitHub's event payload, and starts `git symbolic-ref` where they say
/// nothing, without waiting for it.
pub fn spawn_default_branch(dir: &Path) -> PendingDefault {
    let ci = default_branch_from_ci(
        |v| std::env::var(v).ok(),
        |path| std::fs::read_to_string(path).ok(),
    );
    let origin_head = ci.is_none().then(|| spawn_origin_head(dir));
    PendingDefault { ci, origin_head }
}

impl PendingDefault {
    /// The default branch: the CI's, else `origin/HEAD`'s, else `main`.
    pub fn wait(self) -> DefaultBranch {
        default_branch(self.ci, self.origin_head.and_then(PendingOriginHead::wait))
    }
}

/// A `git symbolic-ref refs/remotes/origin/HEAD` started by [`spawn_origin_head`].
pub struct PendingOriginHead(PendingGit);

/// Starts `git symbolic-ref --quiet refs/remotes/origin/HEAD` (what `git clone` sets to the
/// remote's default branch) without waiting for it, like [`spawn_head`].
pub fn spawn_origin_head(dir: &Path) -> PendingOriginHead {
    PendingOriginHead(PendingGit::spawn(
        dir,
        &["symbolic-ref", "--quiet", "refs/remotes/origin/HEAD"],
    ))
}

impl PendingOriginHead {
    /// The branch `origin/HEAD` points at; `None` when it is not set (a clone made otherwise,
    /// a repository without a remote) or outside a git checkout.
    pub fn wait(self) -> Option<String> {
        parse_origin_head(&self.0.stdout()?)
    }
}

/// A git command started without waiting for it, so that the caller overlaps it with other
/// work (its output is one short line, so it never fills the pipe while nobody reads).
struct PendingGit(Option<Child>);

impl PendingGit {
    /// Starts `git ARGS` in `dir`; a git that cannot start answers `None` when waited for.
    fn spawn(dir: &Path, args: &[&str]) -> PendingGit {
        PendingGit(
            Command::new("git")
                .args(args)
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .ok(),
        )
    }

    /// Waits for it: its stdout when it succeeded, else `None` (outside a git checkout,
    /// without git).
    fn stdout(mut self) -> Option<String> {
        let out = self.0.take()?.wait_with_output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8(out.stdout).ok()
    }
}

impl Drop for PendingGit {
    /// Reaps a git command nobody waited for (an early error), leaving no zombie behind in a
    /// long-lived xtask.
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.wait();
        }
    }
}

/// `refs/remotes/origin/main` -> `main` (a branch name may hold `/`).
fn parse_origin_head(out: &str) -> Option<String> {
    out.trim()
        .strip_prefix("refs/remotes/origin/")
        .filter(|b| !b.is_empty() && *b != "HEAD")
        .map(str::to_string)
}

/// Why a run has no branch to fill `{branch}` with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBranch {
    /// git names a commit but no branch (a tag or release checkout, a CI checkout of a merge
    /// ref), and neither `--branch` nor a CI variable names one.
    Detached,
    /// git names no commit: not a git checkout, or a repository without a commit yet.
    NoCommit,
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
pub struct PendingHead(PendingGit);

/// Starts the one `git log` of a run (the overhead of a dry run matters) without waiting for
/// it: the caller overlaps it with loading the workspace, without a thread of its own.
pub fn spawn_head(dir: &Path) -> PendingHead {
    PendingHead(PendingGit::spawn(
        dir,
        &["log", "-1", "--format=%H%x00%cI%x00%D", "HEAD"],
    ))
}

impl PendingHead {
    /// Waits for `git log`; `None` outside a git checkout or without git.
    pub fn wait(self) -> Option<Head> {
        parse_head(&self.0.stdout()?)
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
    #[test]
    fn the_ci_names_the_default_branch_by_variable_or_event_payload() {
        let no_file = |_: &Path| None;
        let gitlab = |v: &str| (v == "CI_DEFAULT_BRANCH").then(|| "trunk".to_string());
        assert_eq!(
            default_branch_from_ci(gitlab, no_file),
            Some(DefaultBranch {
                name: "trunk".into(),
                source: DefaultSource::Variable("CI_DEFAULT_BRANCH")
            })
        );
        let buildkite = |v: &str| match v {
            "CI_DEFAULT_BRANCH" => Some(" ".to_string()),
            "BUILDKITE_PIPELINE_DEFAULT_BRANCH" => Some("develop".to_string()),
            _ => None,
        };
        let found = default_branch_from_ci(buildkite, no_file).unwrap();
        assert_eq!(found.name, "develop");
        assert_eq!(
            found.describe(),
            "`develop` (from `BUILDKITE_PIPELINE_DEFAULT_BRANCH`)"
        );

        let github = |v: &str| (v == "GITHUB_EVENT_PATH").then(|| "/event.json".to_string());
        let payload = |p: &Path| {
            (p == Path::new("/event.json")).then(|| {
                r#"{"pull_request": {"number": 3}, "repository": {"default_branch": "master"}}"#
                    .to_string()
            })
        };
        let found = default_branch_from_ci(github, payload).unwrap();
        assert_eq!(
            (found.name.as_str(), &found.source),
            ("master", &DefaultSource::GithubEvent)
        );
        // A payload without the field, one that is not JSON, a file that cannot be read, a
        // value docker would take for a flag: the CI says nothing.
        for text in [
            r#"{"repository": {}}"#,
            "not json",
            r#"{"repository": {"default_branch": "-x"}}"#,
        ] {
            assert_eq!(
                default_branch_from_ci(github, |_: &Path| Some(text.to_string())),
                None,
                "{text}"
            );
        }
        assert_eq!(default_branch_from_ci(github, no_file), None);
        assert_eq!(default_branch_from_ci(|_: &str| None, payload), None);
    }

    #[test]
    fn the_ci_wins_over_origin_head_which_wins_over_main() {
        let ci = DefaultBranch {
            name: "trunk".into(),
            source: DefaultSource::Variable("CI_DEFAULT_BRANCH"),
        };
        assert_eq!(default_branch(Some(ci.clone()), Some("master".into())), ci);
        let origin = default_branch(None, Some("master".into()));
        assert_eq!(
            (origin.name.as_str(), origin.describe().as_str()),
            ("master", "`master` (from `origin/HEAD`)")
        );
        let assumed = default_branch(None, None);
        assert_eq!(assumed.name, "main");
        assert!(
            assumed.describe().contains("assumed"),
            "{}",
            assumed.describe()
        );
        assert_eq!(
            parse_origin_head("refs/remotes/origin/release/2\n").as_deref(),
            Some("release/2")
        );
        assert_eq!(parse_origin_head(""), None);
    }

    /// A real clone: `git clone` sets `origin/HEAD` to the remote's default branch; a
    /// repository without a remote, or outside git, has none.
    #[test]
    fn origin_head_of_a_real_clone() {
        let root =
            std::env::temp_dir().join(format!("xtask-docker-origin-head-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let git = |dir: &Path, args: &[&str]| {
            let status = Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "git {args:?}");
        };
        let upstream = root.join("upstream");
        std::fs::create_dir_all(&upstream).unwrap();
        git(&upstream, &["init", "--quiet"]);
        git(&upstream, &["checkout", "--quiet", "-b", "trunk"]);
        git(
            &upstream,
            &["commit", "--quiet", "--allow-empty", "-m", "first"],
        );
        git(&root, &["clone", "--quiet", "upstream", "clone"]);
        assert_eq!(
            spawn_origin_head(&root.join("clone")).wait().as_deref(),
            Some("trunk")
        );
        assert_eq!(spawn_origin_head(&upstream).wait(), None, "no remote");
        let outside = root.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        // A folder in the temp dir may still lie inside some repository; GIT_DIR keeps git
        // from looking upwards.
        let head = PendingOriginHead(PendingGit(
            Command::new("git")
                .args(["symbolic-ref", "--quiet", "refs/remotes/origin/HEAD"])
                .env("GIT_DIR", outside.join("none"))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .ok(),
        ));
        assert_eq!(head.wait(), None, "outside git");
        let _ = std::fs::remove_dir_all(&root);
    }
}

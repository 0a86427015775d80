//! How a finished command's output and exit become a step's outcome: pure, so that every
//! message a user may meet is tested without an engine.

use crate::diagnose::RegistryProblem;
use crate::engine::process::Streamed;
use crate::engine::Answer;
use crate::plan::{Build, Inspect, MountKind, MountStep, Pull, PullWhen, PushTag, Role, Step};
use crate::progress::BuildProgress;

use super::result::Outcome;

/// A build's outcome: a failure names the stage whose step failed, the package, BuildKit's
/// errors, and the command; a failed cache export says what the registry said and the way out.
/// `cancelled`: the run was being stopped when it ended.
pub(crate) fn build(
    step: &Step,
    build: &Build,
    progress: &BuildProgress,
    streamed: &Streamed,
    cancelled: bool,
) -> Outcome {
    let Err(message) = &streamed.result else {
        return Outcome::Done;
    };
    let package = &step.package;
    // A step this build shares with another build that ran it shows here only as BuildKit's
    // error, which quotes the command.
    let stage = progress
        .failed_stage()
        .or_else(|| {
            streamed
                .text
                .lines()
                .filter(|l| l.contains("ERROR"))
                .find_map(|l| build.stage_of_failed_command(l))
                .map(str::to_string)
        })
        .unwrap_or_else(|| build.stage.clone());
    if cancelled {
        return Outcome::Failed(format!(
            "the build of stage `{stage}` of package `{package}` was stopped"
        ));
    }
    let mut errors = progress.errors();
    if let Some(cache) = &build.exports {
        let problem = RegistryProblem::classify(&errors.join("\n"));
        if problem != RegistryProblem::Other {
            errors.push(format!(
                "{}\nnote: with `push-cache = \"best-effort\"` or `--push-cache-only` a failed cache export is a warning",
                problem.describe(cache)
            ));
        }
    }
    let hint = crate::diagnose::build_hint(&streamed.text)
        .map(|note| format!("\n{note}"))
        .unwrap_or_default();
    Outcome::Failed(format!(
        "the build of stage `{stage}` of package `{package}` failed: {message}{}{hint}\ncommand: {}",
        errors
            .iter()
            .map(|e| format!("\n  {e}"))
            .collect::<String>(),
        step.to_shell()
    ))
}

/// Whether a failed push is worth another try: the registry was unreachable, rate-limiting or
/// failing with a 5xx, which often passes.
pub(crate) fn retry(streamed: &Streamed) -> Option<RegistryProblem> {
    streamed.result.as_ref().err()?;
    let problem = RegistryProblem::classify(&streamed.text);
    matches!(
        problem,
        RegistryProblem::Unreachable | RegistryProblem::RateLimited | RegistryProblem::ServerError
    )
    .then_some(problem)
}

/// A push's outcome, after its last try: a refusal of a best-effort cache push is a warning.
pub(crate) fn push(step: &Step, push: &PushTag, streamed: &Streamed) -> Outcome {
    let Err(message) = &streamed.result else {
        return Outcome::Done;
    };
    let image = &push.image;
    let problem = RegistryProblem::classify(&streamed.text);
    let refused = matches!(
        problem,
        RegistryProblem::Authentication | RegistryProblem::DeniedOrMissing
    );
    if push.best_effort && refused {
        Outcome::Warning(format!(
            "the cache tag `{image}` was not pushed: {}",
            problem.describe(image)
        ))
    } else {
        Outcome::Failed(format!(
            "the push of `{image}` (package `{}`) failed: {}\n{message}\ncommand: {}",
            step.package,
            problem.describe(image),
            step.to_shell()
        ))
    }
}

/// A pull's outcome: a missing image is "no cache yet" (before a rebuild: no old image to
/// keep), anything else a warning; a pull never fails the run.
pub(crate) fn pull(pull: &Pull, streamed: &Streamed) -> Outcome {
    let Err(message) = &streamed.result else {
        return Outcome::Done;
    };
    let problem = RegistryProblem::classify(&streamed.text);
    let text = problem.describe(&pull.image);
    match (problem, &pull.when) {
        (RegistryProblem::NotFound, PullWhen::First) => match &pull.default_branch {
            Some(default) => Outcome::Warning(default_branch_missing(&pull.image, default)),
            None => Outcome::Skipped(text),
        },
        (RegistryProblem::NotFound, PullWhen::BeforeRebuild { .. }) => Outcome::Skipped(format!(
            "`{}` is not in the registry: no old image to keep",
            pull.image
        )),
        _ => Outcome::Warning(format!("{text}: {message}")),
    }
}

/// A restore, export or push of a cache mount that held `bytes`. A restore that the registry
/// failed is a warning (the build goes on without it); one that failed otherwise, and a failed
/// export, are errors that say what the generated build needs. An export that pushes and
/// failed on the registry is a failed push (a refusal of a best-effort one a warning). An
/// export past the limit made an empty image, whose push resets the mount's travelling copy.
pub(crate) fn mount(
    step: &Step,
    mount: &MountStep,
    streamed: &Streamed,
    bytes: Option<u64>,
    cancelled: bool,
) -> Outcome {
    let id = &mount.id;
    let package = &step.package;
    if let Err(message) = &streamed.result {
        let problem = RegistryProblem::classify(&streamed.text);
        let what = match mount.kind {
            MountKind::Restore => "restore",
            MountKind::Export => "export",
            MountKind::Push => return push(step, &mount_push(step, mount), streamed),
        };
        if cancelled {
            return Outcome::Failed(format!(
                "the {what} of cache mount `{id}` of package `{package}` was stopped"
            ));
        }
        // BuildKit wraps an error of its push in `failed to push IMAGE`.
        if mount.kind == MountKind::Export
            && mount.pushes
            && streamed.text.contains("failed to push")
        {
            return push(step, &mount_push(step, mount), streamed);
        }
        // The engine could not unpack the copy's layer: a copy in zstd (from an engine on the
        // containerd image store) read by Docker 20.10's image store fails so. The mount can
        // still travel: this build goes without it, and its export writes a copy in gzip.
        if let Some(said) = (mount.kind == MountKind::Restore)
            .then(|| unreadable_layer(&crate::progress::readable(&streamed.text)))
            .flatten()
        {
            return Outcome::Warning(format!(
                "the cache mount `{id}` was not restored: this engine cannot unpack the layer of `{}` (`{said}`; a copy in zstd, from an engine with the containerd image store, needs Docker 23 or later); building without it",
                mount.image
            ));
        }
        // A step of the generated build that ran and failed (`cp: not found`) is the build's
        // own failure, whatever words it printed: the registry fails before any step runs.
        let step_failed = streamed.text.contains("did not complete successfully")
            || streamed.text.contains("executor failed running");
        if mount.kind == MountKind::Restore && problem != RegistryProblem::Other && !step_failed {
            return Outcome::Warning(format!(
                "the cache mount `{id}` was not restored: {}; building without it",
                problem.describe(&mount.image)
            ));
        }
        let tail: Vec<&str> = streamed
            .text
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("not found"))
            .take(3)
            .collect();
        return Outcome::Failed(format!(
            "the {what} of cache mount `{id}` of package `{package}` failed: {message}{}
note: it runs `sh`, `ls`, `du`, `cut`, `cp`, `stat`, `chown` and `chmod` (and `find`, `sort`, `touch`, `tar` and `comm` where there) in the image its stage starts from; an image without them (distroless, scratch) cannot carry the mount: leave it out of `cache-mounts`
command: {}",
            tail.iter().map(|l| format!("
  {l}")).collect::<String>(),
            step.to_shell().lines().next().unwrap_or_default()
        ));
    }
    match (mount.kind, bytes) {
        (MountKind::Export, Some(bytes)) if bytes > mount.limit => Outcome::Warning(format!(
            "the cache mount `{id}` holds {}, more than `cache-mount-limit` ({}): its travelling copy `{}` is reset to empty, and the next agent's export starts afresh",
            human_bytes(bytes),
            human_bytes(mount.limit),
            mount.image
        )),
        _ => Outcome::Done,
    }
}

/// What the engine said where a build's output ([`readable`](crate::progress::readable) text)
/// tells that it could not unpack an image's layer (Docker's image store, containerd's): the
/// error from those words on.
fn unreadable_layer(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let at = line
            .find("failed to register layer")
            .or_else(|| line.find("failed to extract layer"))?;
        Some(line[at..].trim_end().to_string())
    })
}

/// The push of a mount's image, as a cache tag's.
fn mount_push(step: &Step, mount: &MountStep) -> PushTag {
    PushTag {
        image: mount.image.clone(),
        build: step.id,
        cache: true,
        skip_if_current: false,
        chain: Vec::new(),
        best_effort: mount.best_effort,
    }
}

/// `1.5 GiB`, `12.0 MiB`, `300 B`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The marker's push: a failure only means that the next run builds again.
pub(crate) fn mark(marker: &str, streamed: &Streamed) -> Outcome {
    let Err(message) = &streamed.result else {
        return Outcome::Done;
    };
    let problem = RegistryProblem::classify(&streamed.text);
    Outcome::Warning(format!(
        "the marker `{marker}` was not pushed ({}: {message}): the next run builds again",
        problem.describe(marker)
    ))
}

/// A question's outcome: answered either way, except that a best-effort export that did not
/// write its cache is a warning.
/// The warning for the default branch's cache that a build of another branch falls back to,
/// missing: a wrong default branch is a cache that never exists.
fn default_branch_missing(image: &str, default: &str) -> String {
    format!(
        "no cache yet on the default branch: `{image}`, the default branch's tag that this branch falls back to, is not in the registry\nnote: the default branch was taken to be {default}; if it is another, set `default-branch`"
    )
}

pub(crate) fn inspect(inspect: &Inspect, answer: &Answer) -> Outcome {
    let image = &inspect.image;
    match (inspect.role, answer) {
        (Role::Written, Ok(Some(_))) => Outcome::Done,
        (Role::Written, Ok(None)) => Outcome::Warning(format!(
            "the registry cache `{image}` was not written (the export is best-effort)"
        )),
        (Role::Written, Err(e)) => Outcome::Warning(format!(
            "the registry cache `{image}` could not be checked: {e}"
        )),
        // A registry that does not answer says so in the build; only a missing cache of the
        // default branch's is told here, with the default branch the run took.
        (Role::Fallback, Ok(None)) => Outcome::Warning(default_branch_missing(
            image,
            inspect.default_branch.as_deref().unwrap_or("`main`"),
        )),
        _ => Outcome::Done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(text: &str) -> Streamed {
        Streamed {
            result: Err("exit status: 1".into()),
            text: text.into(),
        }
    }

    #[test]
    fn registry_refusals_of_best_effort_pushes_are_warnings_and_nothing_else_is() {
        let step = Step {
            id: 3,
            package: "svc".into(),
            action: crate::plan::Action::Mark { marker: "m".into() },
            program: "docker".into(),
            args: vec!["push".into(), "r/x:compile".into()],
            env: vec![],
            stdin: None,
            after: vec![],
        };
        let mut tag = PushTag {
            image: "r/x:compile".into(),
            build: 0,
            cache: true,
            skip_if_current: true,
            chain: vec![],
            best_effort: true,
        };
        let denied = failed("denied: requested access to the resource is denied");
        assert!(
            matches!(push(&step, &tag, &denied), Outcome::Warning(w) if w.contains("`r/x:compile` was not pushed"))
        );
        let down = failed("dial tcp 127.0.0.1:5999: connect: connection refused");
        assert!(matches!(push(&step, &tag, &down), Outcome::Failed(_)));
        assert_eq!(retry(&down), Some(RegistryProblem::Unreachable));
        assert_eq!(retry(&denied), None);
        tag.best_effort = false;
        match push(&step, &tag, &denied) {
            Outcome::Failed(why) => {
                assert!(why.contains("package `svc`"), "{why}");
                assert!(why.contains("command: docker push r/x:compile"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(push(&step, &tag, &Streamed::default()), Outcome::Done);
    }

    #[test]
    fn a_missing_image_is_no_cache_yet_and_a_pull_never_fails_the_run() {
        let missing = failed("manifest for r/x:compile not found: manifest unknown");
        let first = Pull {
            image: "r/x:compile".into(),
            when: PullWhen::First,
            default_branch: None,
        };
        assert!(
            matches!(pull(&first, &missing), Outcome::Skipped(s) if s.starts_with("no cache yet"))
        );
        // The default branch's tag that another branch falls back to: a warning that names the
        // default branch taken.
        let fallback = Pull {
            default_branch: Some(
                "`main` (assumed: no `default-branch` key, CI variable or `origin/HEAD` names one)"
                    .into(),
            ),
            ..first.clone()
        };
        assert!(
            matches!(pull(&fallback, &missing), Outcome::Warning(w) if w.contains("no cache yet on the default branch: `r/x:compile`") && w.contains("taken to be `main` (assumed")),
            "{:?}",
            pull(&fallback, &missing)
        );
        let before = Pull {
            when: PullWhen::BeforeRebuild { chain: vec![] },
            ..first.clone()
        };
        assert!(
            matches!(pull(&before, &missing), Outcome::Skipped(s) if s.contains("no old image"))
        );
        let down = failed("connection refused");
        assert!(matches!(pull(&first, &down), Outcome::Warning(_)));
    }

    #[test]
    fn an_export_that_wrote_nothing_is_a_warning() {
        let written = Inspect {
            image: "r/x:cache".into(),
            role: Role::Written,
            default_branch: None,
        };
        assert_eq!(
            inspect(&written, &Ok(Some(Default::default()))),
            Outcome::Done
        );
        assert!(
            matches!(inspect(&written, &Ok(None)), Outcome::Warning(w) if w.contains("was not written"))
        );
        let marker = Inspect {
            role: Role::Marker,
            ..written
        };
        assert_eq!(inspect(&marker, &Ok(None)), Outcome::Done, "answered");
    }

    #[test]
    fn a_missing_cache_of_the_default_branch_names_the_branch_taken() {
        let fallback = Inspect {
            image: "r/x:compile-main".into(),
            role: Role::Fallback,
            default_branch: Some("`main` (from `origin/HEAD`)".into()),
        };
        let Outcome::Warning(warning) = inspect(&fallback, &Ok(None)) else {
            panic!("a warning")
        };
        assert!(
            warning.contains("`r/x:compile-main`")
                && warning.contains("default branch was taken to be `main` (from `origin/HEAD`)")
                && warning.contains("`default-branch`"),
            "{warning}"
        );
        assert_eq!(
            inspect(&fallback, &Ok(Some(Default::default()))),
            Outcome::Done
        );
        assert_eq!(
            inspect(&fallback, &Err("connection refused".into())),
            Outcome::Done,
            "the build says what is wrong with the registry"
        );
    }

    #[test]
    fn a_mount_past_its_limit_resets_and_one_that_cannot_run_says_what_it_needs() {
        let mut step = Step {
            id: 1,
            package: "svc".into(),
            action: crate::plan::Action::Mark { marker: "m".into() },
            program: "docker".into(),
            args: vec!["build".into()],
            env: vec![],
            stdin: None,
            after: vec![],
        };
        let mount = MountStep {
            id: "target".into(),
            image: "r/x:mount-target-main".into(),
            kind: MountKind::Export,
            target: "/app/target".into(),
            uses: vec![],
            limit: 1 << 20,
            best_effort: false,
            pushes: false,
        };
        step.action = crate::plan::Action::Mount(mount.clone());
        let done = Streamed::default();
        assert_eq!(
            mount_outcome(&step, &mount, &done, Some(1 << 20)),
            Outcome::Done
        );
        match mount_outcome(&step, &mount, &done, Some(3 << 20)) {
            Outcome::Warning(w) => assert!(
                w.contains("3.0 MiB, more than `cache-mount-limit` (1.0 MiB)")
                    && w.contains("reset"),
                "{w}"
            ),
            other => panic!("{other:?}"),
        }
        let no_cp = failed("#7 0.05 /bin/sh: cp: not found\n#7 ERROR: process \"/bin/sh -c ...\" did not complete successfully: exit code: 127");
        match mount_outcome(&step, &mount, &no_cp, None) {
            Outcome::Failed(why) => assert!(
                why.contains("`cp`") && why.contains("cache mount `target`"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        // An export that pushes its image itself: the registry's refusal of a best-effort
        // push is a warning, and the copy is not pushed; anything else fails as a push.
        let denied = failed("#9 ERROR: failed to push r/x:mount-target-main: denied: requested access to the resource is denied");
        let pushing = MountStep {
            pushes: true,
            best_effort: true,
            ..mount.clone()
        };
        assert!(
            matches!(mount_outcome(&step, &pushing, &denied, Some(1 << 20)), Outcome::Warning(w) if w.contains("`r/x:mount-target-main` was not pushed"))
        );
        let strict = MountStep {
            best_effort: false,
            ..pushing.clone()
        };
        assert!(
            matches!(mount_outcome(&step, &strict, &denied, None), Outcome::Failed(w) if w.contains("the push of `r/x:mount-target-main`"))
        );
        assert!(
            matches!(mount_outcome(&step, &pushing, &no_cp, None), Outcome::Failed(w) if w.contains("`cp`")),
            "a failure of the export's own step is the export's"
        );
        let restore = MountStep {
            kind: MountKind::Restore,
            ..mount
        };
        let down =
            failed("failed to do request: dial tcp 127.0.0.1:5999: connect: connection refused");
        assert!(
            matches!(mount_outcome(&step, &restore, &down, None), Outcome::Warning(w) if w.contains("building without it"))
        );
        // Docker 20.10's image store given a copy in zstd, as its BuildKit printed it.
        let zstd = failed("#4 ERROR: failed to register layer: Error processing tar file(exit status 1): unexpected EOF");
        assert!(
            matches!(mount_outcome(&step, &restore, &zstd, None), Outcome::Warning(w) if w.contains("cannot unpack the layer of `r/x:mount-target-main` (`failed to register layer: Error processing tar file(exit status 1): unexpected EOF`;") && w.contains("building without it"))
        );
        assert!(
            matches!(
                mount_outcome(&step, &restore, &no_cp, None),
                Outcome::Failed(_)
            ),
            "a restore that cannot run its own step is an error"
        );
    }

    fn mount_outcome(
        step: &Step,
        mount: &MountStep,
        streamed: &Streamed,
        bytes: Option<u64>,
    ) -> Outcome {
        super::mount(step, mount, streamed, bytes, false)
    }
}

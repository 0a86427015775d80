//! The executor's decisions, as pure functions of what the run has learned so far: whether a
//! package's build is in the registry, whether a step is current and skipped, and whether a
//! step may start before a step it waits for in the plan has ended.

use std::collections::{BTreeMap, BTreeSet};

use crate::engine::Answer;
use crate::plan::{Action, Build, MountKind, MountStep, Plan, PullWhen, PushTag, Role, Step};

use super::result::Verdict;

/// What the run has learned so far; every decision reads it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Knowledge {
    /// Per package, the stages in which a step ran: from builds' output as it comes, then from
    /// each build's whole output once it ended. It only grows.
    pub ran: BTreeMap<String, BTreeSet<String>>,
    /// The registry's answers, by image.
    pub registry: BTreeMap<String, Answer>,
    /// The tags the engine held before the run; `None` when unknown, which leaves nothing
    /// current.
    pub local_tags: Option<BTreeSet<String>>,
    /// The packages whose build the registry holds: package -> marker tag.
    pub fresh: BTreeMap<String, String>,
    /// Per package, the Dockerfile steps that ran: `(stage, BuildKit's name of the step)`.
    pub ran_steps: BTreeMap<String, BTreeSet<(String, String)>>,
    /// How the engine's list of cache mounts describes each one it held before the run;
    /// `None` when unknown.
    pub mounts_held: Option<Vec<String>>,
    /// The cache mounts restored in this run, by id.
    pub restored: BTreeSet<String>,
    /// Of those, the ones whose restore left the record an export needs to add only what
    /// changed: id -> the image it read, and that image's digest as the restore resolved it.
    pub restored_from: BTreeMap<String, (String, String)>,
    /// The cache mount images exported in this run.
    pub exported: BTreeSet<String>,
    /// The layer digests of the images the registry was asked for and holds (an image's, each
    /// platform's; a registry cache's, every cached step's), by image.
    pub layers: BTreeMap<String, BTreeSet<String>>,
}

impl Knowledge {
    /// Whether a step of one of `chain`'s stages ran in `package` so far.
    fn chain_ran(&self, package: &str, chain: &[String]) -> bool {
        self.ran
            .get(package)
            .is_some_and(|ran| chain.iter().any(|c| ran.contains(c)))
    }

    /// Whether the registry holds `image`: `None` when it was not asked or did not answer.
    fn in_registry(&self, image: &str) -> Option<bool> {
        match self.registry.get(image) {
            Some(Ok(held)) => Some(held.is_some()),
            Some(Err(_)) | None => None,
        }
    }

    /// Whether the engine may have held `image` before the run (when unknown, it may have).
    fn held_locally(&self, image: &str) -> bool {
        self.local_tags
            .as_ref()
            .is_none_or(|tags| tags.contains(image))
    }

    /// Whether the engine held the cache mount `mount` before the run: its list of mounts
    /// names one at its target, made by a package's step, or one that a restore or export of
    /// this tool made (whose command names the id).
    fn holds_mount(&self, mount: &MountStep) -> bool {
        self.mounts_held.as_ref().is_some_and(|held| {
            held.iter().any(|description| {
                description.starts_with(&format!("cached mount {} from exec", mount.target))
                    // Not the record the same command mounts beside it (`/xtd-record`).
                    || (description.starts_with(&format!("cached mount {} from exec", crate::plan::MOUNTED))
                        && description.contains(&format!("xtask-docker mount {}'", mount.id)))
            })
        })
    }

    /// Whether a step that uses `mount` ran in `package`: among the steps the builds ran, a
    /// `RUN` of a stage that uses it whose name (BuildKit's: the instruction as written) holds
    /// one of its commands or names its target. Both are compared without whitespace and
    /// backslashes, which BuildKit's name and the Dockerfile's text may place differently; a
    /// doubt exports (seconds), a miss would leave the travelling copy stale.
    fn mount_step_ran(&self, package: &str, mount: &MountStep) -> bool {
        let Some(ran) = self.ran_steps.get(package) else {
            return false;
        };
        let squeeze = |text: &str| -> String {
            text.chars()
                .filter(|c| !c.is_whitespace() && *c != '\\')
                .collect()
        };
        let target = squeeze(&format!("target={}", mount.target));
        mount.uses.iter().any(|(stage, command)| {
            let command = squeeze(command);
            ran.iter().any(|(ran_stage, name)| {
                let instruction = name.split_once("] ").map_or("", |(_, rest)| rest);
                let name = squeeze(name);
                ran_stage == stage
                    && instruction.starts_with("RUN ")
                    && (name.contains(&command) || name.contains(&target))
            })
        })
    }

    /// Whether the registry cache `cache` holds every layer of `image`, both as the registry
    /// told: false when either answer is missing, failed, or lists no layer.
    fn cache_holds_layers_of(&self, cache: &str, image: &str) -> bool {
        let held = |image: &str| {
            matches!(self.registry.get(image), Some(Ok(Some(_))))
                .then(|| self.layers.get(image))
                .flatten()
                .filter(|layers| !layers.is_empty())
        };
        match (held(image), held(cache)) {
            (Some(built), Some(cached)) => built.is_subset(cached),
            _ => false,
        }
    }

    /// The "current" rule: an image that nothing in this run changed (no step of `chain` ran),
    /// that the registry holds, on an engine that did not hold it before the run (so the
    /// steps that were not run came from the registry's caches, and the registry's image has
    /// them all). Re-pushing such an image would only lose cache keys (moby/buildkit#1981).
    pub fn is_current(&self, package: &str, chain: &[String], image: &str) -> bool {
        !self.chain_ran(package, chain)
            && !self.held_locally(image)
            && self.in_registry(image) == Some(true)
    }
}

/// Whether a ready step runs, or is skipped and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Start {
    /// It runs.
    Run,
    /// It is skipped, for the reason given.
    Skip(String),
}

/// Whether `step`, whose awaited steps are done (or may be passed), runs or is skipped.
pub(crate) fn start(step: &Step, known: &Knowledge) -> Start {
    let package = step.package.as_str();
    if let Some(marker) = known.fresh.get(package) {
        if !step.is_question() {
            return Start::Skip(format!("the registry holds this build as `{marker}`"));
        }
    }
    match &step.action {
        Action::Build(Build {
            skip_if_current: true,
            writes: Some(image),
            chain,
            ..
        }) if known.is_current(package, chain, image) => {
            Start::Skip("nothing in it ran, and the registry holds its cache".into())
        }
        Action::Build(Build {
            export_only: Some(image),
            exports: Some(cache),
            chain,
            ..
        }) if !known.chain_ran(package, chain) && known.cache_holds_layers_of(cache, image) => {
            Start::Skip(format!(
                "no step ran, and the registry cache holds every layer of `{image}`"
            ))
        }
        Action::Push(PushTag {
            skip_if_current: true,
            image,
            chain,
            ..
        }) if known.is_current(package, chain, image) => {
            Start::Skip("nothing in it ran, and the registry holds it".into())
        }
        Action::Pull(pull) => match &pull.when {
            PullWhen::First => Start::Run,
            PullWhen::BeforeRebuild { .. } if known.in_registry(&pull.image) == Some(false) => {
                Start::Skip(format!(
                    "`{}` is not in the registry: no old image to keep",
                    pull.image
                ))
            }
            PullWhen::BeforeRebuild { chain } if !known.chain_ran(package, chain) => {
                Start::Skip("nothing in its stages ran".into())
            }
            PullWhen::BeforeRebuild { .. } => Start::Run,
        },
        Action::Mount(mount) => match mount.kind {
            MountKind::Restore if known.restored.contains(&mount.id) => Start::Skip(format!(
                "the cache mount `{}` was restored from an earlier ref",
                mount.id
            )),
            MountKind::Restore if known.holds_mount(mount) => Start::Skip(format!(
                "the engine holds the cache mount `{}` already",
                mount.id
            )),
            MountKind::Restore => match known.registry.get(&mount.image) {
                Some(Ok(Some(_))) => Start::Run,
                Some(Ok(None)) => Start::Skip(format!(
                    "no cache yet: `{}` is not in the registry",
                    mount.image
                )),
                Some(Err(e)) => Start::Skip(format!(
                    "cannot ask the registry for `{}`: {e}",
                    mount.image
                )),
                None => Start::Skip(format!("`{}` was not asked for", mount.image)),
            },
            MountKind::Export if !known.mount_step_ran(package, mount) => Start::Skip(format!(
                "no step that uses the cache mount `{}` ran",
                mount.id
            )),
            MountKind::Export => Start::Run,
            MountKind::Push if !known.exported.contains(&mount.image) => {
                Start::Skip(format!("the cache mount `{}` was not exported", mount.id))
            }
            MountKind::Push => Start::Run,
        },
        _ => Start::Run,
    }
}

/// The base of an export of `mount` (`IMAGE@sha256:...`): the copy a restore of this run read,
/// where that restore left its record, the copy is in the export's own repository (its layers
/// are there already), it is one platform's (as the registry listed it: a copy of several
/// platforms is exported whole, so that no platform's export can be made on another's copy),
/// and it has fewer than [`MAX_LAYERS`](crate::plan::MAX_LAYERS) layers. Else why the export
/// takes the whole mount.
pub(crate) fn export_base(known: &Knowledge, mount: &MountStep) -> Result<String, String> {
    if mount.kind != MountKind::Export {
        return Err("not an export".into());
    }
    let Some((image, digest)) = known.restored_from.get(&mount.id) else {
        return Err(if known.restored.contains(&mount.id) {
            "its restore left no record (the mount was not empty, or the image lacks GNU `find`, `tar` or `comm`), or did not show the copy's digest".into()
        } else {
            "no restore of this run copied it in".into()
        });
    };
    if repository(image) != repository(&mount.image) {
        return Err(format!(
            "the copy it was restored from, `{image}`, is in another repository"
        ));
    }
    match known.registry.get(image) {
        Some(Ok(Some(manifests))) if manifests.len() == 1 => {}
        Some(Ok(Some(_))) => return Err(format!("`{image}` is a copy of several platforms")),
        _ => return Err(format!("the registry's answer for `{image}` is missing")),
    }
    let layers = known.layers.get(image).map_or(0, |l| l.len());
    if layers == 0 {
        return Err(format!("the registry listed no layer of `{image}`"));
    }
    if layers >= crate::plan::MAX_LAYERS {
        return Err(format!("`{image}` has {layers} layers already"));
    }
    let name = image
        .rsplit_once('@')
        .map_or(image.as_str(), |(name, _)| name);
    Ok(format!("{name}@{digest}"))
}

/// An image reference without its tag or digest.
fn repository(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(name, _)| name);
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => image,
    }
}

/// The digest (`sha256:...`) of `image`, the copy a restore mounted, as the restore's output
/// ([`readable`](crate::progress::readable)) tells it. BuildKit 0.12 and later name the step
/// that reads it `FROM IMAGE@sha256:...` (with the registry's name before it for Docker Hub).
/// Docker 20.10's names it `FROM IMAGE` and lists the descriptors it fetched under that step:
/// there the registry's answer (`asked`) is taken where it was one manifest and the step lists
/// it (so that a push between the question and the restore cannot give another copy's digest).
pub(crate) fn restored_digest(text: &str, image: &str, asked: Option<&Answer>) -> Option<String> {
    let hub = ["FROM ", "FROM docker.io/", "FROM docker.io/library/"];
    let named = text.lines().find_map(|line| {
        let at = line.find(&format!("{image}@sha256:"))?;
        if !hub.iter().any(|prefix| line[..at].ends_with(prefix)) {
            return None;
        }
        let hex: String = line[at + image.len() + "@sha256:".len()..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .collect();
        (hex.len() == 64).then(|| format!("sha256:{hex}"))
    });
    if named.is_some() {
        return named;
    }
    let Some(Ok(Some(manifests))) = asked else {
        return None;
    };
    let [digest] = manifests.iter().collect::<Vec<_>>()[..] else {
        return None;
    };
    let vertex = text.lines().find_map(|line| {
        let (vertex, rest) = line.split_once(' ')?;
        let name = rest.trim_end().strip_prefix("FROM ")?;
        let name = ["docker.io/library/", "docker.io/"]
            .iter()
            .find_map(|prefix| name.strip_prefix(prefix).filter(|n| *n == image))
            .unwrap_or(name);
        (vertex.starts_with('#') && name == image).then_some(vertex)
    })?;
    let listed = format!("{vertex} {digest} ");
    text.lines()
        .any(|line| line.starts_with(&listed))
        .then(|| digest.clone())
}

/// Whether `step` may start before step `awaited`, which it waits for in the plan, has ended.
/// A stage build waits for its package's final build only to learn whether it can be skipped,
/// and the pull before it only to learn whether a step of its stages ran:
/// - a stage build whose cache image the registry lacks cannot be skipped: it starts at once,
///   beside the final build, and BuildKit shares the steps both builds have;
/// - its pull is then skipped at once (there is no old image), and otherwise starts once the
///   final build's output shows that a step of its stages ran, so that the old image is in
///   the engine by the time the stage build starts, after the final build.
pub(crate) fn may_start_before(
    plan: &Plan,
    step: &Step,
    awaited: usize,
    known: &Knowledge,
) -> bool {
    // The registry cache's export-only build waits for the final build and the question about
    // its image only to learn whether anything is new: once a step is seen to run, it starts
    // (where the plan lets it), and BuildKit shares the steps that are still running.
    if let Action::Build(Build {
        export_only: Some(_),
        chain,
        starts_early,
        ..
    }) = &step.action
    {
        if !starts_early {
            return false;
        }
        let passable = match plan.steps.get(awaited).map(|s| &s.action) {
            Some(Action::Build(b)) => b.is_final,
            Some(Action::Inspect(i)) => i.role == Role::Built,
            _ => false,
        };
        return passable
            && plan.steps[awaited].package == step.package
            && known.chain_ran(&step.package, chain);
    }
    let Some(Step {
        action: Action::Build(waited),
        package,
        ..
    }) = plan.steps.get(awaited)
    else {
        return false;
    };
    if !waited.is_final || *package != step.package {
        return false;
    }
    match &step.action {
        Action::Build(Build {
            skip_if_current: true,
            writes: Some(image),
            ..
        }) => known.in_registry(image) == Some(false),
        Action::Pull(pull) => match &pull.when {
            PullWhen::BeforeRebuild { chain } => {
                known.in_registry(&pull.image) == Some(false)
                    || known.chain_ran(&step.package, chain)
            }
            PullWhen::First => false,
        },
        _ => false,
    }
}

/// The registry check's verdict for one package, from the answers to its questions (the
/// [`Role::is_lookup`] ones): fresh when the marker exists, every final tag holds the same
/// image manifests, and the export, if any, is there. A question the registry did not answer
/// only means building, where the build then says what is wrong.
pub(crate) fn verdict(questions: &[(&crate::plan::Inspect, &Answer)]) -> Verdict {
    let Some((marker, held)) = questions
        .iter()
        .find(|(inspect, _)| inspect.role == Role::Marker)
    else {
        return Verdict::Build("no marker to look for".into());
    };
    let held = match held {
        Ok(Some(manifests)) => manifests,
        Ok(None) => return Verdict::Build("no build of these inputs in the registry yet".into()),
        Err(e) => {
            return Verdict::Build(format!(
                "cannot ask the registry for `{}`: {e}",
                marker.image
            ))
        }
    };
    for (inspect, answer) in questions {
        let image = &inspect.image;
        match (inspect.role, answer) {
            (Role::Final, Ok(Some(manifests))) if manifests == held => {}
            (Role::Final, Ok(Some(_))) => {
                return Verdict::Build(format!(
                    "`{image}` holds another image than `{}`",
                    marker.image
                ))
            }
            (Role::Final, Ok(None)) => {
                return Verdict::Build(format!("`{image}` is not in the registry"))
            }
            (Role::Export, Ok(Some(_))) => {}
            (Role::Export, Ok(None)) => {
                return Verdict::Build(format!(
                    "the registry cache `{image}` is missing (a failed export?)"
                ))
            }
            (Role::Final | Role::Export, Err(e)) => {
                return Verdict::Build(format!("cannot ask the registry for `{image}`: {e}"))
            }
            _ => {}
        }
    }
    Verdict::Fresh {
        marker: marker.image.clone(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::plan::Inspect;

    fn manifests(digests: &[&str]) -> Answer {
        Ok(Some(digests.iter().map(|d| d.to_string()).collect()))
    }

    fn inspect(image: &str, role: Role) -> Inspect {
        Inspect {
            image: image.into(),
            role,
            default_branch: None,
        }
    }

    #[test]
    fn a_package_is_fresh_only_when_the_marker_and_every_final_tag_agree() {
        let marker = inspect("r/x:inputs-1", Role::Marker);
        let latest = inspect("r/x:latest", Role::Final);
        let cache = inspect("r/x:buildcache", Role::Export);
        let (a, b, none) = (manifests(&["sha256:a"]), manifests(&["sha256:b"]), Ok(None));
        let down: Answer = Err("connection refused".into());
        let fresh = Verdict::Fresh {
            marker: "r/x:inputs-1".into(),
        };
        assert_eq!(verdict(&[(&marker, &a), (&latest, &a)]), fresh);
        assert_eq!(
            verdict(&[(&marker, &a), (&latest, &a), (&cache, &b)]),
            fresh,
            "the export need only exist"
        );
        let building = |questions: &[(&Inspect, &Answer)]| match verdict(questions) {
            Verdict::Build(why) => why,
            Verdict::Fresh { .. } => panic!("fresh: {questions:?}"),
        };
        assert_eq!(
            building(&[(&marker, &none), (&latest, &a)]),
            "no build of these inputs in the registry yet"
        );
        assert_eq!(
            building(&[(&marker, &a), (&latest, &b)]),
            "`r/x:latest` holds another image than `r/x:inputs-1`"
        );
        assert_eq!(
            building(&[(&marker, &a), (&latest, &none)]),
            "`r/x:latest` is not in the registry"
        );
        assert!(building(&[(&marker, &a), (&latest, &a), (&cache, &none)]).contains("missing"));
        assert!(building(&[(&marker, &down), (&latest, &a)]).contains("connection refused"));
        assert!(building(&[(&marker, &a), (&latest, &down)]).contains("cannot ask"));
        // The order of the answers does not matter; their roles do.
        assert_eq!(verdict(&[(&latest, &a), (&marker, &a)]), fresh);
    }

    fn known(ran: &[&str], registry: &[(&str, Answer)], local: Option<&[&str]>) -> Knowledge {
        Knowledge {
            ran: BTreeMap::from([(
                "svc".to_string(),
                ran.iter().map(|s| s.to_string()).collect(),
            )]),
            registry: registry
                .iter()
                .map(|(i, a)| (i.to_string(), a.clone()))
                .collect(),
            local_tags: local.map(|l| l.iter().map(|s| s.to_string()).collect()),
            ..Knowledge::default()
        }
    }

    #[test]
    fn the_current_rule() {
        let chain = ["compile".to_string(), "toolchain".to_string()];
        let held = [("r/x:compile", manifests(&["sha256:a"]))];
        let current = |k: &Knowledge| k.is_current("svc", &chain, "r/x:compile");
        assert!(current(&known(&[], &held, Some(&[]))));
        assert!(
            current(&known(&["runtime"], &held, Some(&[]))),
            "another stage"
        );
        assert!(
            !current(&known(&["toolchain"], &held, Some(&[]))),
            "its chain ran"
        );
        assert!(
            !current(&known(&[], &held, Some(&["r/x:compile"]))),
            "the engine held the tag: its hits may be local"
        );
        assert!(!current(&known(&[], &held, None)), "unknown local tags");
        assert!(!current(&known(
            &[],
            &[("r/x:compile", Ok(None))],
            Some(&[])
        )));
        assert!(
            !current(&known(
                &[],
                &[("r/x:compile", Err("down".into()))],
                Some(&[])
            )),
            "a registry that did not answer"
        );
        assert!(!current(&known(&[], &[], Some(&[]))), "never asked");
    }

    /// A mount step of package `svc` for the cache `target`, for tests.
    pub(in crate::exec) fn mount_step(kind: MountKind) -> Step {
        Step {
            id: 0,
            package: "svc".into(),
            action: Action::Mount(MountStep {
                id: "target".into(),
                image: "r/x:mount-target-main".into(),
                kind,
                target: "/app/target".into(),
                uses: vec![("build".into(), "cargo build --release".into())],
                limit: 1 << 30,
                best_effort: false,
                pushes: false,
            }),
            program: "docker".into(),
            args: vec![],
            env: vec![],
            stdin: None,
            after: vec![],
        }
    }

    fn skipped(start: Start) -> String {
        match start {
            Start::Skip(why) => why,
            Start::Run => "runs".into(),
        }
    }

    #[test]
    fn a_mount_is_restored_only_into_an_engine_that_lacks_it_from_an_image_the_registry_holds() {
        let restore = mount_step(MountKind::Restore);
        let held = [("r/x:mount-target-main", manifests(&["sha256:m"]))];
        let mut k = known(&[], &held, Some(&[]));
        assert_eq!(
            start(&restore, &k),
            Start::Run,
            "an engine whose mounts are unknown"
        );
        k.mounts_held = Some(vec![
            "cached mount /usr/local/cargo/registry from exec /bin/sh -c cargo build".into(),
        ]);
        assert_eq!(start(&restore, &k), Start::Run, "another mount");
        for description in [
            "cached mount /app/target from exec /bin/sh -c cargo build --release",
            "cached mount /xtd-mount from exec /bin/sh -c : 'xtask-docker mount target'; if ...",
        ] {
            k.mounts_held = Some(vec![description.into()]);
            assert!(
                skipped(start(&restore, &k)).contains("holds the cache mount"),
                "{description}"
            );
        }
        // The record of the last restore, which the same command mounts, is not the mount.
        k.mounts_held = Some(vec![
            "cached mount /xtd-record from exec /bin/sh -c : 'xtask-docker mount target'; if ..."
                .into(),
        ]);
        assert_eq!(start(&restore, &k), Start::Run, "only the record");
        k.mounts_held = Some(vec![]);
        k.restored.insert("target".into());
        assert!(skipped(start(&restore, &k)).contains("earlier ref"));
        let k = known(&[], &[("r/x:mount-target-main", Ok(None))], Some(&[]));
        assert!(skipped(start(&restore, &k)).starts_with("no cache yet"));
    }

    #[test]
    fn a_mount_is_exported_only_after_a_step_that_uses_it_ran_and_pushed_only_when_exported() {
        let export = mount_step(MountKind::Export);
        let mut k = known(&[], &[], Some(&[]));
        assert!(skipped(start(&export, &k)).contains("no step that uses"));
        let ran = |stage: &str, name: &str| {
            (
                "svc".to_string(),
                [(stage.to_string(), name.to_string())].into(),
            )
        };
        for (stage, name) in [
            ("build", "[build 3/3] COPY . ."),
            ("other", "[other 2/2] RUN --mount=type=cache,id=target,target=/app/target cargo build --release"),
        ] {
            k.ran_steps = BTreeMap::from([ran(stage, name)]);
            assert!(skipped(start(&export, &k)).contains("no step that uses"), "{name}");
        }
        k.ran_steps = BTreeMap::from([ran(
            "build",
            "[build 2/3] RUN --mount=type=cache,id=target,target=/app/target   cargo build --release",
        )]);
        assert_eq!(start(&export, &k), Start::Run);
        // BuildKit's name and the Dockerfile's text may differ in escapes and spaces; a `RUN`
        // that names the mount's target is one that uses it.
        for name in [
            "[build 2/3] RUN --mount=type=cache,id=target,target=/app/target cargo \\\n build   --release",
            "[build 2/3] RUN --mount=type=cache,target=/app/target ./build.sh",
        ] {
            k.ran_steps = BTreeMap::from([ran("build", name)]);
            assert_eq!(start(&export, &k), Start::Run, "{name}");
        }
        k.ran_steps = BTreeMap::from([ran(
            "build",
            "[build 1/3] COPY --from=x /app/target /app/target",
        )]);
        assert!(
            skipped(start(&export, &k)).contains("no step that uses"),
            "not a RUN"
        );
        k.ran_steps = BTreeMap::from([ran(
            "build",
            "[build 2/3] RUN --mount=type=cache,id=target,target=/app/target cargo build --release",
        )]);
        let push = mount_step(MountKind::Push);
        assert!(skipped(start(&push, &k)).contains("was not exported"));
        k.exported.insert("r/x:mount-target-main".into());
        assert_eq!(start(&push, &k), Start::Run);
        k.fresh.insert("svc".into(), "r/x:inputs-1".into());
        assert!(skipped(start(&push, &k)).contains("registry holds this build"));
    }

    #[test]
    fn an_export_adds_to_the_copy_a_restore_of_this_run_read_of_one_platform_in_its_own_repository_with_few_layers(
    ) {
        let export = mount_step(MountKind::Export);
        let Action::Mount(mount) = &export.action else {
            unreachable!()
        };
        let read = "r/x:mount-target-main";
        let layers = |n: usize| (0..n).map(|i| format!("sha256:l{i}")).collect();
        let mut k = known(&[], &[(read, manifests(&["sha256:m"]))], Some(&[]));
        k.layers.insert(read.into(), layers(2));
        k.restored.insert("target".into());
        assert!(export_base(&k, mount)
            .unwrap_err()
            .contains("left no record"));
        k.restored.clear();
        assert_eq!(
            export_base(&k, mount),
            Err("no restore of this run copied it in".into())
        );
        k.restored_from
            .insert("target".into(), (read.into(), "sha256:d".into()));
        assert_eq!(
            export_base(&k, mount).as_deref(),
            Ok("r/x:mount-target-main@sha256:d")
        );
        let Action::Mount(restore) = &mount_step(MountKind::Restore).action else {
            unreachable!()
        };
        assert!(export_base(&k, restore).is_err(), "a restore has no base");
        // A feature branch's export on the default branch's copy: the same repository.
        let mut branch = mount.clone();
        branch.image = "r/x:mount-target-feature".into();
        assert!(export_base(&k, &branch).is_ok());
        branch.image = "r/other:mount-target-main".into();
        assert!(export_base(&k, &branch)
            .unwrap_err()
            .contains("another repository"));
        k.layers
            .insert(read.into(), layers(crate::plan::MAX_LAYERS));
        assert!(export_base(&k, mount)
            .unwrap_err()
            .contains("5 layers already"));
        k.layers
            .insert(read.into(), layers(crate::plan::MAX_LAYERS - 1));
        assert!(export_base(&k, mount).is_ok(), "one layer fewer");
        k.registry
            .insert(read.into(), manifests(&["sha256:amd64", "sha256:arm64"]));
        assert!(export_base(&k, mount)
            .unwrap_err()
            .contains("several platforms"));
        k.registry.insert(read.into(), manifests(&["sha256:m"]));
        k.layers.insert(read.into(), BTreeSet::new());
        assert!(export_base(&k, mount).unwrap_err().contains("no layer"));
        k.layers.insert(read.into(), layers(2));
        k.registry.insert(read.into(), Err("down".into()));
        assert!(export_base(&k, mount).unwrap_err().contains("missing"));
    }

    #[test]
    fn a_restore_s_output_tells_the_digest_of_the_copy_it_mounted() {
        let d = "4f0c7e5b1d1b0f8e3b0cf3e9f4f1b8e0a3a0cd8d7b6a7d6b2a6b8e9a0f1c2d3e";
        let image = "127.0.0.1:5000/acme/x:mount-target-main";
        let text = format!(
            "#5 [internal] load metadata for {image}\n#6 FROM {image}@sha256:{d}\n#6 resolve {image}@sha256:{d} done\n"
        );
        assert_eq!(
            restored_digest(&text, image, None),
            Some(format!("sha256:{d}"))
        );
        let hub = format!("#6 FROM docker.io/acme/x:mount-t-main@sha256:{d}\n");
        assert_eq!(
            restored_digest(&hub, "acme/x:mount-t-main", None),
            Some(format!("sha256:{d}"))
        );
        // Another image's step, a short digest, a line that only resolves it.
        for text in [
            format!("#6 FROM 127.0.0.1:5000/acme/x:mount-other-main@sha256:{d}"),
            format!("#6 FROM {image}@sha256:{}", &d[..10]),
            format!("#6 resolve {image}@sha256:{d} done"),
            format!("#6 FROM evil/{image}@sha256:{d}"),
        ] {
            assert_eq!(restored_digest(&text, image, None), None, "{text}");
        }
        // Docker 20.10 names the step without a digest and lists what it fetched: the digest
        // the registry answered, if it is one manifest and the step lists it.
        let m = format!("sha256:{d}");
        let old = format!(
            "#4 FROM {image}\n#4 resolve {image} done\n#4 sha256:0b48 done\n#4 {m} done\n#4 DONE 0.1s\n"
        );
        let one = manifests(&[&m]);
        assert_eq!(restored_digest(&old, image, Some(&one)), Some(m.clone()));
        let other = old.replace("#4 sha256:4f0c", "#5 sha256:4f0c");
        assert_eq!(
            restored_digest(&other, image, Some(&one)),
            None,
            "another step's"
        );
        let two = manifests(&[&m, "sha256:arm64"]);
        assert_eq!(restored_digest(&old, image, Some(&two)), None, "an index");
        assert_eq!(restored_digest(&old, image, None), None, "not asked");
        let moved = manifests(&["sha256:another"]);
        assert_eq!(
            restored_digest(&old, image, Some(&moved)),
            None,
            "pushed since"
        );
    }
}

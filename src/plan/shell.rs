//! The plan as shell lines a user can copy and run, with what the executor decides at run time
//! as comments.

use std::fmt::Write as _;

use super::{Action, Build, MountKind, Plan, PullWhen, PushTag, Role, Step};

impl Plan {
    /// The plan as shell lines, one a step, under a comment line per package.
    pub fn to_shell(&self) -> String {
        let mut out = String::new();
        let mut package = None;
        for step in &self.steps {
            if package != Some(&step.package) {
                let _ = writeln!(out, "# package `{}`", step.package);
                package = Some(&step.package);
                // What the branch boundary leaves out, so that the dry run shows it.
                for (_, warning) in self.warnings.iter().filter(|(p, _)| *p == step.package) {
                    for (i, line) in warning.lines().enumerate() {
                        let lead = if i == 0 { "# warning: " } else { "#   " };
                        let _ = writeln!(out, "{lead}{line}");
                    }
                }
            }
            out.push_str(&step.to_shell());
            out.push('\n');
        }
        out
    }
}

impl Step {
    /// The step as one shell line, with what the executor decides at run time as a comment.
    pub fn to_shell(&self) -> String {
        let mut words: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        words.push(quote(&self.program));
        words.extend(self.args.iter().map(|a| quote(a)));
        if self.stdin.is_some() {
            words.push("<<'XTD'".into());
        }
        let line = words.join(" ");
        let line = match &self.action {
            Action::Inspect(inspect) => {
                let why = match inspect.role {
                    Role::Marker => "the registry check: when it and every final tag hold the same image, no other step of the package runs",
                    Role::Final => "a final tag, which must hold the marker's image",
                    Role::Export => "the registry cache, which a failed export leaves missing",
                    Role::Cache => "whether the registry holds this cache image decides the skips below",
                    Role::Written => "whether the best-effort cache export wrote the cache",
                    Role::Fallback => "the default branch's cache, which this branch falls back to: a missing one is warned of",
                    Role::Built => "the layers of the image just pushed: with the registry cache's, they decide whether the export below runs",
                };
                format!("{line}  # {why}")
            }
            Action::Pull(pull) => match &pull.when {
                PullWhen::First => {
                    format!("{line} || true  # a missing cache image means no cache yet")
                }
                PullWhen::BeforeRebuild { chain } => format!(
                    "{line}  # only when a step of stage{} {} ran and the registry holds it: the rebuilt image keeps the cache keys of the steps that came from it (moby/buildkit#1981)",
                    if chain.len() == 1 { "" } else { "s" },
                    chain.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
                ),
            },
            Action::Build(Build {
                skip_if_current: true,
                ..
            }) => format!(
                "{line}  # skipped when nothing in it ran and the registry holds its cache"
            ),
            Action::Build(Build {
                export_only: Some(image),
                starts_early,
                ..
            }) => format!(
                "{line}  # exports the registry cache; skipped when no step ran and the registry cache holds every layer of `{image}`; {}",
                if *starts_early {
                    "may start once a step is seen to run"
                } else {
                    "starts once the build has ended: a step of it uses a cache mount, which a second run would change"
                }
            ),
            Action::Push(PushTag {
                skip_if_current: true,
                ..
            }) => format!("{line}  # skipped when nothing in it ran and the registry holds it"),
            Action::Mount(mount) => {
                let why = match mount.kind {
                    MountKind::Restore => format!(
                        "the cache mount `{}`: only when the engine lacks it and the registry holds this image (the first of its refs it holds)",
                        mount.id
                    ),
                    MountKind::Export => format!(
                        "the cache mount `{}`: only when a step that uses it ran; where a restore of this run copied it in, only what changed, on top of the copy it read (`XTD_BASE=IMAGE@DIGEST`), else the whole mount; an empty image (a reset) when it is over `cache-mount-limit`{}",
                        mount.id,
                        if mount.pushes { "; pushes it, zstd-compressed" } else { "" }
                    ),
                    MountKind::Push => format!("the cache mount `{}`: after its export", mount.id),
                };
                format!("{line}  # {why}")
            }
            Action::Build(_) | Action::Push(_) | Action::Mark { .. } => line,
        };
        match &self.stdin {
            Some(text) => format!("{line}\n{text}XTD"),
            None => line,
        }
    }
}

/// Quotes a word for a POSIX shell: as it is when it is made only of characters no shell treats
/// specially, else in single quotes. (shell-words quotes `=` too, which makes every
/// `--flag=value` and `KEY=VALUE` harder to read for no gain.)
pub fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

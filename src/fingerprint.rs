//! The fingerprint of what a package's build reads from this checkout: the Dockerfile, the
//! ignore file, and every entry of the build context that a client sends under it.
//!
//! With the plan's commands (see `plan`), it names a build: a run that pushed a build of the
//! same fingerprint leaves a marker tag, and a later run that finds it, with every final tag
//! still holding the marked image, has nothing to build. So it must change whenever the image
//! could: it is computed only when everything the build reads is known here, which rules out
//! images from outside that are not pinned by digest (a tag can move) and `ADD` of URLs. The
//! context is hashed as the clients send it (see `ignore` and `walk`); when in doubt an entry is
//! hashed (a needless rebuild), never left out (a stale image).

mod ignore;
mod walk;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

pub use ignore::Ignore;

use crate::package::Package;

/// Why a package has no fingerprint: its build may change without this checkout changing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknowable(pub String);

/// Context trees already hashed in this run, by context folder and ignore file text: the
/// packages of a workspace often share the workspace root as their context.
#[derive(Debug, Default)]
pub struct Contexts(BTreeMap<(PathBuf, Vec<u8>), Result<[u8; 32], Unknowable>>);

/// The digest, in hex, of what `package`'s build reads from this checkout, or why there is none.
pub fn sources(package: &Package, contexts: &mut Contexts) -> Result<String, Unknowable> {
    let config = &package.config;
    // The frontend reads the Dockerfile before any stage: an image from outside like a base.
    if let Some(image) = package.graph.frontend.as_ref().filter(|i| !pinned(i)) {
        return Err(Unknowable(format!(
            "the Dockerfile frontend `{image}` is not pinned by digest (`@sha256:` and 64 hex digits)"
        )));
    }
    for stage in &package.graph.stages {
        let label = package.graph.name(stage.index);
        if let Some(image) = stage.images.iter().find(|i| !pinned(i)) {
            return Err(Unknowable(format!(
                "stage `{label}` reads `{image}`, which is not pinned by digest (`@sha256:` and 64 hex digits)"
            )));
        }
        if let Some(url) = stage.remote.first() {
            return Err(Unknowable(format!(
                "stage `{label}` adds `{url}` from the network"
            )));
        }
    }
    let mut all = Vec::new();
    walk::field(&mut all, b"xtask-docker sources v2");
    // Without `platform`, the engine builds for its own: a fingerprint from another machine
    // kind must not match.
    walk::field(&mut all, std::env::consts::ARCH.as_bytes());
    walk::field(&mut all, package.dockerfile_text.as_bytes());
    let ignore_file = ignore_file(&config.dockerfile, &config.context);
    let ignore_text = match &ignore_file {
        Some(path) => fs::read(path)
            .map_err(|e| Unknowable(format!("cannot read `{}`: {e}", path.display())))?,
        None => Vec::new(),
    };
    walk::field(&mut all, &ignore_text);
    let key = (config.context.clone(), ignore_text);
    let tree = match contexts.0.get(&key) {
        Some(tree) => tree.clone(),
        None => {
            let tree = tree(&config.context, ignore_file.as_deref(), &key.1);
            contexts.0.insert(key, tree.clone());
            tree
        }
    }?;
    walk::field(&mut all, &tree);
    Ok(hex(blake3::hash(&all).as_bytes()))
}

/// Whether an image reference is pinned: it ends in `@sha256:` and the 64 lowercase hex digits
/// of a digest, the only form Docker's reference grammar accepts for sha256 (`@sha256:00ff` is
/// refused by Docker, and must not count as a pin here).
fn pinned(image: &str) -> bool {
    match image.rsplit_once('@') {
        Some((name, digest)) => {
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            !name.is_empty()
                && hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        None => false,
    }
}

/// The digest of the context tree that the ignore file (`path`, whose text is `text`) lets
/// through.
fn tree(context: &Path, path: Option<&Path>, text: &[u8]) -> Result<[u8; 32], Unknowable> {
    let ignore = match path {
        Some(path) => {
            let text = std::str::from_utf8(text).map_err(|_| {
                Unknowable(format!(
                    "`{}` is not UTF-8, which each Docker version matches differently",
                    path.display()
                ))
            })?;
            Ignore::parse(text).map_err(|e| Unknowable(format!("`{}`: {e}", path.display())))?
        }
        None => Ignore::default(),
    };
    walk::tree(context, &ignore)
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

#[cfg(test)]
mod tests;

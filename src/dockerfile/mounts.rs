//! The cache mounts of `RUN --mount=type=cache,...`: the folders BuildKit keeps between builds
//! in one builder, which the tool can carry to another through the registry.
//!
//! BuildKit's options (the dockerfile frontend's `runmount` parser): `id` (default: the
//! target), `target` (also `dst`, `destination`), `sharing` (`shared`, `private`, `locked`),
//! `from` and `source` (`src`) to seed it from a stage or image, `mode`, `uid`, `gid`,
//! `readonly` (`ro`); keys are case-insensitive, values CSV-quoted.

use super::walk::csv_fields;

/// One `--mount=type=cache` of a `RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheMount {
    /// The cache's id, which every mount of it names: `id=`, else the target.
    pub id: String,
    /// Where the `RUN` sees it.
    pub target: String,
    /// `shared` (BuildKit's default), `private` or `locked`, as written.
    pub sharing: Option<String>,
    /// The stage or image whose `source` folder seeds the cache, as written.
    pub from: Option<String>,
    /// The folder of `from` that seeds it.
    pub source: Option<String>,
    /// The mode of the cache's folder when BuildKit creates it (octal, as written).
    pub mode: Option<String>,
    /// Its owner's uid when created.
    pub uid: Option<String>,
    /// Its owner's gid when created.
    pub gid: Option<String>,
    /// Mounted read-only: the `RUN` cannot change it.
    pub readonly: bool,
}

/// A `RUN` that mounts a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountUse {
    /// The mount.
    pub mount: CacheMount,
    /// The `RUN`'s command, whitespace collapsed (as [`super::Stage::runs`] holds it).
    pub command: String,
    /// The `RUN`'s line.
    pub line: usize,
    /// The same `RUN` mounts a secret, which it could write into the cache.
    pub with_secret: bool,
}

/// The cache mount that one `--mount` value describes, if it is one (after `ARG` expansion);
/// the error names what is wrong with it.
pub(super) fn cache_mount(mount: &str) -> Option<Result<CacheMount, String>> {
    let mut kind = String::from("bind");
    let mut found = CacheMount {
        id: String::new(),
        target: String::new(),
        sharing: None,
        from: None,
        source: None,
        mode: None,
        uid: None,
        gid: None,
        readonly: false,
    };
    for field in csv_fields(mount) {
        let (key, value) = match field.split_once('=') {
            Some((key, value)) => (key.trim().to_ascii_lowercase(), Some(value.to_string())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let value = value.unwrap_or_default();
        match key.as_str() {
            "type" => kind = value.to_ascii_lowercase(),
            "id" => found.id = value,
            "target" | "dst" | "destination" => found.target = value,
            "sharing" => found.sharing = Some(value),
            "from" => found.from = Some(value),
            "source" | "src" => found.source = Some(value),
            "mode" => found.mode = Some(value),
            "uid" => found.uid = Some(value),
            "gid" => found.gid = Some(value),
            // `readonly`, `readonly=true`, `ro`; `rw` and `readwrite` are the default.
            "readonly" | "ro" => found.readonly = !value.eq_ignore_ascii_case("false"),
            _ => {}
        }
    }
    if kind != "cache" {
        return None;
    }
    if found.target.is_empty() {
        return Some(Err(format!(
            "`--mount={mount}`: a cache mount needs a `target`"
        )));
    }
    if let Some(sharing) = &found.sharing {
        if !["shared", "private", "locked"].contains(&sharing.to_ascii_lowercase().as_str()) {
            return Some(Err(format!(
                "`--mount={mount}`: `sharing={sharing}` is not `shared`, `private` or `locked`"
            )));
        }
    }
    if found.id.is_empty() {
        found.id = found.target.clone();
    }
    Some(Ok(found))
}

/// Whether a `--mount` value mounts a secret (`type=secret`).
pub(super) fn is_secret(mount: &str) -> bool {
    csv_fields(mount).iter().any(|field| {
        field.split_once('=').is_some_and(|(key, value)| {
            key.trim().eq_ignore_ascii_case("type") && value.eq_ignore_ascii_case("secret")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(text: &str) -> CacheMount {
        cache_mount(text).expect("a cache mount").expect("valid")
    }

    #[test]
    fn reads_every_option_buildkit_has() {
        let m = mount("type=cache,target=/app/target");
        assert_eq!(
            (m.id.as_str(), m.target.as_str()),
            ("/app/target", "/app/target")
        );
        let m = mount(
            "TYPE=cache,id=cargo-$TARGETARCH,dst=/usr/local/cargo/registry,sharing=locked,uid=1000,gid=1000,mode=0755,from=seed,source=/reg,ro",
        );
        assert_eq!(m.id, "cargo-$TARGETARCH");
        assert_eq!(m.target, "/usr/local/cargo/registry");
        assert_eq!(m.sharing.as_deref(), Some("locked"));
        assert_eq!(
            (m.uid.as_deref(), m.gid.as_deref()),
            (Some("1000"), Some("1000"))
        );
        assert_eq!(m.mode.as_deref(), Some("0755"));
        assert_eq!(
            (m.from.as_deref(), m.source.as_deref()),
            (Some("seed"), Some("/reg"))
        );
        assert!(m.readonly);
        assert!(!mount("type=cache,target=/c,readonly=false").readonly);
        assert_eq!(mount("type=cache,\"target=/a,b\"").target, "/a,b");
    }

    #[test]
    fn other_mounts_are_not_cache_mounts_and_bad_ones_say_why() {
        assert!(cache_mount("type=bind,from=build,target=/b").is_none());
        assert!(
            cache_mount("target=/b").is_none(),
            "bind is the default type"
        );
        assert!(cache_mount("type=secret,id=npm").is_none());
        let err = cache_mount("type=cache,id=x").unwrap().unwrap_err();
        assert!(err.contains("needs a `target`"), "{err}");
        let err = cache_mount("type=cache,target=/c,sharing=sometimes")
            .unwrap()
            .unwrap_err();
        assert!(err.contains("`sharing=sometimes`"), "{err}");
        assert!(is_secret("type=secret,id=npm,target=/run/secrets/npm"));
        assert!(!is_secret("type=cache,target=/c"));
    }
}

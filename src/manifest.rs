//! The workspace's members and their tables, read straight from their Cargo.toml files.
//!
//! `cargo metadata --no-deps` gives the same answer, but it takes 25 ms or more to start, which
//! is most of a dry run's time. So [`read`] follows cargo's rules for finding a workspace's
//! members in the plain cases (a workspace root with literal members and `dir/*` globs, or a
//! lone package) and answers `None` whenever a rule it does not follow could matter: an unusual
//! glob, a path dependency that would make an unlisted member, a `package.workspace` key, a key
//! inherited from a workspace that lacks it, a manifest that does not parse. The caller then
//! asks `cargo metadata`, which also says what is wrong with a manifest better than this could.
//! A test compares both answers on workspaces of every shape `read` accepts.

use std::path::{Component, Path, PathBuf};

use toml::{Table, Value};

use crate::labels::LabelSource;

/// A workspace, as the tool needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Workspace {
    /// The workspace root's folder.
    pub root: PathBuf,
    /// `[workspace.metadata.docker]`, as JSON.
    pub docker: Option<serde_json::Value>,
    /// The members, in cargo's order.
    pub members: Vec<Member>,
}

/// A workspace member.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Its Cargo.toml.
    pub manifest_path: PathBuf,
    /// `[package.metadata.docker]`, as JSON.
    pub docker: Option<serde_json::Value>,
    /// Its name, version and the other fields its OCI labels are made from.
    pub labels: LabelSource,
}

impl Workspace {
    /// The same, from `cargo metadata --no-deps`.
    pub fn from_metadata(metadata: &cargo_metadata::Metadata) -> Workspace {
        Workspace {
            root: metadata.workspace_root.clone().into_std_path_buf(),
            docker: metadata.workspace_metadata.get("docker").cloned(),
            members: metadata
                .workspace_packages()
                .into_iter()
                .map(|p| Member {
                    manifest_path: p.manifest_path.clone().into_std_path_buf(),
                    docker: p.metadata.get("docker").cloned(),
                    labels: LabelSource {
                        name: p.name.to_string(),
                        version: p.version.to_string(),
                        description: p.description.clone(),
                        license: p.license.clone(),
                        license_file: p.license_file.as_ref().map(|f| f.to_string()),
                        repository: p.repository.clone(),
                        homepage: p.homepage.clone(),
                        documentation: p.documentation.clone(),
                        authors: p.authors.clone(),
                        revision: None,
                        created: None,
                    },
                })
                .collect(),
        }
    }
}

/// The workspace that `cargo metadata --no-deps [--manifest-path manifest_path]` run in `cwd`
/// describes, or `None` when only cargo can tell.
pub fn read(manifest_path: Option<&Path>, cwd: &Path) -> Option<Workspace> {
    let start = match manifest_path {
        // Cargo insists on the name, and says so better.
        Some(path) if path.file_name()? != "Cargo.toml" => return None,
        Some(path) => normalize(&cwd.join(path)),
        None => cwd
            .ancestors()
            .map(|dir| dir.join("Cargo.toml"))
            .find(|path| path.is_file())?,
    };
    let own = parse(&start)?;
    let (root_path, root) = if own.contains_key("workspace") {
        (start.clone(), own.clone())
    } else {
        find_root(&start, &own)?
    };
    let root_dir = root_path.parent()?.to_path_buf();
    let Some(config) = root.get("workspace") else {
        // A lone package is its own workspace, with itself as the only member.
        let member = member(&start, &own, None)?;
        return Some(Workspace {
            root: root_dir,
            docker: None,
            members: vec![member],
        });
    };
    let config = WorkspaceConfig::new(config.as_table()?, &root_dir)?;
    let mut listed: Vec<PathBuf> = Vec::new();
    for dir in config.member_dirs()? {
        let manifest = dir.join("Cargo.toml");
        if !manifest.is_file() {
            return None;
        }
        if !config.is_excluded(&manifest) && !listed.contains(&manifest) {
            listed.push(manifest);
        }
    }
    // Cargo visits the root's own package last.
    if root.contains_key("package") && !listed.contains(&root_path) {
        listed.push(root_path.clone());
    }
    // A member started from must be one; cargo explains why it is not.
    if !listed.contains(&start) && start != root_path {
        return None;
    }
    let mut walk = Walk {
        config: &config,
        root: &root,
        root_path: &root_path,
        listed: &listed,
        members: Vec::new(),
    };
    for manifest in &listed {
        walk.visit(manifest)?;
    }
    let members = walk.members;
    let docker = match config.table.get("metadata").and_then(|m| m.get("docker")) {
        None => None,
        Some(docker) => Some(json(docker)?),
    };
    Some(Workspace {
        root: root_dir,
        docker,
        members,
    })
}

/// Cargo's walk over the members: each listed one, and right after it, depth first, the path
/// dependencies that are members, in the order cargo lists a package's dependencies.
struct Walk<'a> {
    config: &'a WorkspaceConfig<'a>,
    root: &'a Table,
    root_path: &'a Path,
    listed: &'a [PathBuf],
    members: Vec<Member>,
}

impl Walk<'_> {
    fn visit(&mut self, manifest: &Path) -> Option<()> {
        if self.members.iter().any(|m| m.manifest_path == manifest) {
            return Some(());
        }
        let parsed;
        let table = if manifest == self.root_path {
            self.root
        } else {
            parsed = parse(manifest)?;
            // A second root: cargo refuses it.
            if parsed.contains_key("workspace") {
                return None;
            }
            &parsed
        };
        self.members.push(member(manifest, table, Some(self.root))?);
        let root_dir = self.config.root_dir;
        for dep in path_dependencies(table, manifest.parent()?, self.root, root_dir)? {
            let dep_manifest = dep.join("Cargo.toml");
            if !dep.starts_with(root_dir) {
                // Not a member, but cargo reads it to ask where its workspace is.
                let outside = parse(&dep_manifest)?;
                if outside.get("package")?.get("workspace").is_some() {
                    return None;
                }
            } else if self.config.is_excluded(&dep_manifest) {
                continue;
            } else if self.listed.contains(&dep_manifest) {
                self.visit(&dep_manifest)?;
            } else {
                // A member that no entry lists: follow cargo only where that adds nothing.
                return None;
            }
        }
        Some(())
    }
}

/// The root of the workspace that the package at `start` belongs to: the first ancestor with a
/// `[workspace]` that does not exclude it, as cargo looks; `start` itself when there is none.
fn find_root(start: &Path, own: &Table) -> Option<(PathBuf, Table)> {
    let package = own.get("package")?.as_table()?;
    if package.contains_key("workspace") {
        return None;
    }
    for dir in start.parent()?.ancestors().skip(1) {
        let path = dir.join("Cargo.toml");
        if !path.is_file() {
            continue;
        }
        let table = parse(&path)?;
        let Some(config) = table.get("workspace") else {
            continue;
        };
        if !WorkspaceConfig::new(config.as_table()?, dir)?.is_excluded(start) {
            return Some((path, table));
        }
    }
    Some((start.to_path_buf(), own.clone()))
}

/// A `[workspace]` table, and the rules cargo reads from it.
struct WorkspaceConfig<'a> {
    table: &'a Table,
    root_dir: &'a Path,
    members: Vec<&'a str>,
    exclude: Vec<&'a str>,
}

impl<'a> WorkspaceConfig<'a> {
    fn new(table: &'a Table, root_dir: &'a Path) -> Option<Self> {
        let strings = |key: &str| -> Option<Vec<&'a str>> {
            match table.get(key) {
                None => Some(Vec::new()),
                Some(value) => value.as_array()?.iter().map(Value::as_str).collect(),
            }
        };
        Some(WorkspaceConfig {
            table,
            root_dir,
            members: strings("members")?,
            exclude: strings("exclude")?,
        })
    }

    /// The folders `members` names, globs expanded as the `glob` crate does, in its order.
    /// Only a last component of exactly `*` is followed.
    fn member_dirs(&self) -> Option<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for pattern in &self.members {
            let path = Path::new(pattern);
            let is_glob = |s: &str| s.contains(['*', '?', '[', ']']);
            match path.file_name().and_then(|n| n.to_str()) {
                Some("*") if !is_glob(path.parent()?.to_str()?) => {
                    let parent = normalize(&self.root_dir.join(path.parent()?));
                    let mut found: Vec<PathBuf> = std::fs::read_dir(&parent)
                        .ok()?
                        .map(|entry| entry.map(|e| e.path()))
                        .collect::<Result<_, _>>()
                        .ok()?;
                    found.sort();
                    dirs.extend(found);
                }
                _ if is_glob(pattern) => return None,
                _ => dirs.push(normalize(&self.root_dir.join(path))),
            }
        }
        Some(dirs)
    }

    /// Cargo's rule: under an `exclude` entry, and not under a `members` entry taken literally.
    fn is_excluded(&self, manifest: &Path) -> bool {
        let under = |entries: &[&str]| {
            entries
                .iter()
                .any(|e| manifest.starts_with(normalize(&self.root_dir.join(e))))
        };
        under(&self.exclude) && !under(&self.members)
    }
}

/// Reads and parses a manifest; `None` if either fails.
fn parse(path: &Path) -> Option<Table> {
    toml::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// A member's fields, with `key.workspace = true` taken from `[workspace.package]`.
fn member(manifest: &Path, table: &Table, root: Option<&Table>) -> Option<Member> {
    let package = table.get("package")?.as_table()?;
    let inherited = root
        .and_then(|r| r.get("workspace"))
        .and_then(|w| w.get("package"))
        .and_then(Value::as_table);
    // Every inherited key must exist, or cargo refuses the manifest.
    let field = |key: &str| -> Option<Option<&Value>> {
        match package.get(key) {
            Some(Value::Table(t)) if t.get("workspace") == Some(&Value::Boolean(true)) => {
                Some(Some(inherited?.get(key)?))
            }
            Some(Value::Table(_)) => None,
            value => Some(value),
        }
    };
    for key in package.keys().filter(|k| *k != "metadata") {
        field(key)?;
    }
    // `license-file` inherited is rewritten relative to the member; leave that to cargo.
    if let Some(Value::Table(_)) = package.get("license-file") {
        return None;
    }
    let text = |key: &str| -> Option<Option<String>> {
        match field(key)? {
            None => Some(None),
            Some(value) => Some(Some(value.as_str()?.to_string())),
        }
    };
    let name = text("name")??;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return None;
    }
    // As cargo gives it; one that is not semver, cargo refuses.
    let version = match text("version")? {
        None => "0.0.0".to_string(),
        Some(v) => cargo_metadata::semver::Version::parse(&v).ok()?.to_string(),
    };
    let authors = match field("authors")? {
        None => Vec::new(),
        Some(value) => value
            .as_array()?
            .iter()
            .map(|a| a.as_str().map(str::to_string))
            .collect::<Option<_>>()?,
    };
    let docker = match package.get("metadata").and_then(|m| m.get("docker")) {
        None => None,
        Some(docker) => Some(json(docker)?),
    };
    Some(Member {
        manifest_path: manifest.to_path_buf(),
        docker,
        labels: LabelSource {
            name,
            version,
            description: text("description")?,
            license: text("license")?,
            license_file: text("license-file")?,
            repository: text("repository")?,
            homepage: text("homepage")?,
            documentation: text("documentation")?,
            authors,
            revision: None,
            created: None,
        },
    })
}

/// The folders of a manifest's path dependencies, of every kind and target, in cargo's order:
/// normal, dev and build dependencies, each by name, then the same for each target by name.
fn path_dependencies(
    table: &Table,
    dir: &Path,
    root: &Table,
    root_dir: &Path,
) -> Option<Vec<PathBuf>> {
    const KINDS: [[&str; 2]; 3] = [
        ["dependencies", "dependencies"],
        ["dev-dependencies", "dev_dependencies"],
        ["build-dependencies", "build_dependencies"],
    ];
    let kinds = |table: &Table| -> Option<Vec<Vec<(String, Value)>>> {
        let mut lists = Vec::new();
        for names in KINDS {
            let mut list = Vec::new();
            for name in names.iter().collect::<std::collections::BTreeSet<_>>() {
                if let Some(deps) = table.get(*name) {
                    list.extend(deps.as_table()?.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
            list.sort_by(|a, b| a.0.cmp(&b.0));
            lists.push(list);
        }
        Some(lists)
    };
    let mut lists = kinds(table)?;
    if let Some(targets) = table.get("target") {
        let mut targets: Vec<(&String, &Value)> = targets.as_table()?.iter().collect();
        targets.sort_by(|a, b| a.0.cmp(b.0));
        for (_, target) in targets {
            lists.extend(kinds(target.as_table()?)?);
        }
    }
    let shared = root
        .get("workspace")
        .and_then(|w| w.get("dependencies"))
        .and_then(Value::as_table);
    let mut dirs = Vec::new();
    for (name, spec) in lists.iter().flatten() {
        let Value::Table(spec) = spec else { continue };
        if spec.get("workspace") == Some(&Value::Boolean(true)) {
            if let Some(path) = shared?.get(name)?.get("path") {
                dirs.push(normalize(&root_dir.join(path.as_str()?)));
            }
        } else if let Some(path) = spec.get("path") {
            dirs.push(normalize(&dir.join(path.as_str()?)));
        }
    }
    Some(dirs)
}

/// A TOML value as JSON, as `cargo metadata` gives it; `None` for a date, which it would not
/// give as this does.
fn json(value: &Value) -> Option<serde_json::Value> {
    Some(match value {
        Value::String(s) => serde_json::Value::from(s.as_str()),
        Value::Integer(i) => serde_json::Value::from(*i),
        Value::Float(f) => serde_json::Value::from(*f),
        Value::Boolean(b) => serde_json::Value::from(*b),
        Value::Datetime(_) => return None,
        Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(json).collect::<Option<_>>()?)
        }
        Value::Table(table) => serde_json::Value::Object(
            table
                .iter()
                .map(|(k, v)| Some((k.clone(), json(v)?)))
                .collect::<Option<_>>()?,
        ),
    })
}

/// `path` without `.` and `..` components, as cargo's `normalize_path` (no file system access).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

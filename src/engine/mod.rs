//! What the docker CLI and its daemon can do: the preflight before any work, what the engine
//! holds, how to read the registry's answers, and ([`process`]) how every command runs.

use std::collections::BTreeSet;
use std::process::Output;
use std::time::Duration;

pub mod facts;
pub mod process;

use process::Processes;

use anyhow::bail;

/// The docker CLI: `$DOCKER` when set, else `docker`.
pub fn docker_program() -> String {
    std::env::var("DOCKER")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "docker".to_string())
}

/// A docker CLI whose daemon answered.
#[derive(Debug, Clone)]
pub struct Engine {
    /// What the plan needs to know of the CLI.
    pub cli: crate::plan::Cli,
    /// The CLI's version.
    pub client_version: String,
    /// The daemon's version.
    pub server_version: String,
    /// The engine fact the marker hashes (`linux/amd64 20.10.24`).
    pub facts: String,
    /// The named builder's fact (see [`facts::builder_fact`]), when one is named and
    /// `docker buildx inspect` told it.
    pub builder: Option<String>,
    /// Every `repository:tag` the engine held before the run, when the plan asked (a build that
    /// ran no step on an engine that did not hold its tag got everything from the registry's
    /// caches); `None` when not asked or not known, which leaves nothing current.
    pub local_tags: Option<BTreeSet<String>>,
    /// How the engine's list of cache mounts (`docker buildx du`) describes each one it held
    /// before the run, when the plan asked; `None` when not asked or not known, which makes a
    /// restore run (it never overwrites a mount that holds something).
    pub cache_mounts: Option<Vec<String>>,
}

/// What the plan asks of the engine, checked before any work.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// `docker buildx build` (registry cache, a builder, several platforms, attestations).
    pub buildx: bool,
    /// Exporting a registry cache (`--cache-to type=registry`).
    pub cache_export: bool,
    /// Building several platforms into one image index.
    pub multi_platform: bool,
    /// The builder named with `--builder`.
    pub builder: Option<String>,
    /// The tags the engine holds before the run (where a step may turn out current).
    pub local_tags: bool,
    /// The cache mounts the engine holds before the run (where a cache mount may be restored).
    pub cache_mounts: bool,
    /// A cache mount may be exported: whether the engine keeps its images in the containerd
    /// store decides how (see `plan::mounts`).
    pub mount_exports: bool,
    /// A builder is named (`--builder`, `BUILDX_BUILDER`) and the registry check may skip
    /// builds: its facts are asked of `docker buildx inspect`.
    pub builder_facts: bool,
}

/// How long a probe may take: a daemon that does not answer in this time is not usable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Checks, before any work, that `docker` is the Docker CLI, can do BuildKit builds, reaches
/// its daemon, and can do what the plan `needs`; says what to do instead where it cannot. The
/// probes run at once: on a CI agent their round trips are the tool's own start-up cost.
pub fn preflight(docker: &str, needs: &Needs, processes: &Processes) -> anyhow::Result<Engine> {
    let mut inspect = vec!["buildx", "inspect"];
    if let Some(builder) = &needs.builder {
        inspect.push(builder);
    }
    let capability = needs.cache_export || needs.multi_platform;
    let info: &[&str] = &["info", "--format", "{{json .DriverStatus}}"];
    let inspect_now: &[&str] = if needs.builder_facts { &inspect } else { &[] };
    let probes: Vec<&[&str]> = vec![
        &["--version"],
        &["buildx", "version"],
        // What builds, for the marker, in the same round trip that checks the daemon.
        &[
            "version",
            "--format",
            "{{.Server.Version}}|{{.Server.Os}}|{{.Server.Arch}}",
        ],
        inspect_now,
        if capability || needs.mount_exports {
            info
        } else {
            &[]
        },
        if needs.local_tags {
            &["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]
        } else {
            &[]
        },
        if needs.cache_mounts {
            &[
                "buildx",
                "du",
                "--verbose",
                "--filter",
                "type=exec.cachemount",
            ]
        } else {
            &[]
        },
    ];
    let mut results = probe_all(docker, &probes, processes).into_iter();
    let mut next = || {
        results
            .next()
            .unwrap_or_else(|| Err(std::io::Error::other("no probe")))
    };
    let (version, buildx, server, inspected) = (next(), next(), next(), next());
    let (info, local, mounts) = (next(), next(), next());

    let output = match version {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "the docker CLI `{docker}` was not found\nnote: install Docker, or set `DOCKER` to the CLI's path"
        ),
        Err(e) => bail!("cannot run the docker CLI `{docker}`: {e}"),
    };
    let version_line = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let Some(client_version) = version_line
        .strip_prefix("Docker version ")
        .and_then(|rest| rest.split([',', ' ']).next())
        .map(str::to_string)
    else {
        if version_line.to_ascii_lowercase().contains("podman") {
            bail!("`{docker}` is Podman (`{version_line}`), which is not supported yet\nnote: set `DOCKER` to the Docker CLI");
        }
        bail!("`{docker}` is not the Docker CLI: `{docker} --version` says `{version_line}`\nnote: set `DOCKER` to the Docker CLI");
    };

    // From Docker 23 on, `docker build` with BuildKit is the buildx plugin.
    let major: u32 = client_version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let buildx_version = buildx
        .as_ref()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| buildx_version(&String::from_utf8_lossy(&o.stdout)));
    let buildx = buildx.is_ok_and(|o| o.status.success());
    if major >= 23 && !buildx {
        bail!(
            "the Docker CLI `{docker}` ({client_version}) needs the buildx plugin for BuildKit builds, and it is missing\nnote: install the plugin (Docker's `docker-buildx-plugin` or Debian's `docker-buildx` package), or set `DOCKER` to a CLI older than 23"
        );
    }

    let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "the default socket".to_string());
    let server =
        server.map_err(|e| anyhow::anyhow!("cannot reach the Docker daemon at {host}: {e}"))?;
    let answer = String::from_utf8_lossy(&server.stdout).trim().to_string();
    let mut answer = answer.split('|');
    let server_version = answer.next().unwrap_or_default().to_string();
    let (os, arch) = (answer.next().unwrap_or("?"), answer.next().unwrap_or("?"));
    let engine_fact = facts::engine_fact(os, arch, &server_version);
    if !server.status.success() || server_version.is_empty() {
        let why = String::from_utf8_lossy(&server.stderr);
        let why = why
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no answer");
        bail!("cannot reach the Docker daemon at {host}: {why}\nnote: start the daemon, or set `DOCKER_HOST` to where it listens");
    }

    if needs.buildx && !buildx {
        bail!(
            "this build needs `docker buildx` (registry cache, a builder, several platforms or attestations), and `{docker}` ({client_version}) has no buildx plugin\nnote: install the plugin, or use `cache = \"inline\"` with one platform"
        );
    }
    // The docker driver exports cache and builds image indexes only with the containerd image
    // store, whose `DriverStatus` names the containerd snapshotter. With it any builder can;
    // without it only a builder of another driver, which the slower `buildx inspect` tells.
    let containerd_store = info
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("io.containerd.snapshotter"));
    let inspected = inspected.ok();
    let builder = inspected
        .as_ref()
        .filter(|o| o.status.success())
        .and_then(|o| facts::builder_fact(&String::from_utf8_lossy(&o.stdout)));
    if capability && !containerd_store {
        let out = match inspected {
            Some(out) => out,
            None => processes.capture(docker, &inspect, PROBE_TIMEOUT)?,
        };
        if !out.status.success() {
            bail!(
                "`{docker} {}` failed: {}",
                inspect.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let driver = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Driver:"))
            .map(str::trim)
            .unwrap_or_default();
        if driver == "docker" {
            let what = if needs.cache_export {
                "export a registry cache"
            } else {
                "build several platforms into one image"
            };
            bail!(
                "the builder cannot {what}: it is the docker driver without the containerd image store (engine {server_version})\nnote: use `cache = \"inline\"` with one platform, enable the containerd image store (`\"features\": {{\"containerd-snapshotter\": true}}` in daemon.json), or create a docker-container builder (`docker buildx create --driver docker-container`) and pass it with `--builder`"
            );
        }
    }
    let local_tags = local.ok().filter(|o| o.status.success()).map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    });
    let cli = crate::plan::Cli {
        build_through_buildx: major >= 23,
        rawjson: buildx_version.is_some_and(|v| v >= (0, 13)),
        containerd_store,
    };
    let cache_mounts = mounts
        .ok()
        .filter(|o| o.status.success())
        .map(|o| cache_mount_descriptions(&String::from_utf8_lossy(&o.stdout)));
    Ok(Engine {
        cli,
        client_version,
        server_version,
        facts: engine_fact,
        builder,
        local_tags,
        cache_mounts,
    })
}

/// Runs every probe at once; an empty argv is no probe (an error in its place).
fn probe_all(
    docker: &str,
    probes: &[&[&str]],
    processes: &Processes,
) -> Vec<std::io::Result<Output>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = probes
            .iter()
            .map(|args| {
                scope.spawn(move || {
                    if args.is_empty() {
                        Err(std::io::Error::other("not asked"))
                    } else {
                        processes.capture(docker, args, PROBE_TIMEOUT)
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("the probe panicked")))
            })
            .collect()
    })
}

/// What the registry said of an image: the image manifests it stands for, if it holds it; the
/// error is the CLI's message.
pub type Answer = Result<Option<BTreeSet<String>>, String>;

/// Reads what `docker manifest inspect -v IMAGE` printed and how it ended: the digests of the
/// image manifests `image` stands for, its own if it is one, those listed if it is an index
/// (attestations included). Two tags with the same set hold the same image, whether one is a
/// copy of the other or an index that `buildx imagetools create` made around it. `None` if the
/// registry holds no `image`.
pub fn read_inspect(image: &str, output: &std::io::Result<Output>) -> Answer {
    let out = output.as_ref().map_err(|e| e.to_string())?;
    if !out.status.success() {
        let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return match crate::diagnose::RegistryProblem::classify(&message) {
            crate::diagnose::RegistryProblem::NotFound => Ok(None),
            _ => Err(message),
        };
    }
    let value: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("`docker manifest inspect -v {image}` printed no JSON: {e}"))?;
    let entries = match value {
        serde_json::Value::Array(entries) => entries,
        entry => vec![entry],
    };
    let digests: BTreeSet<String> = entries
        .iter()
        .filter_map(|e| e["Descriptor"]["digest"].as_str().map(str::to_string))
        .collect();
    if digests.is_empty() {
        return Err(format!(
            "`docker manifest inspect -v {image}` named no digest"
        ));
    }
    Ok(Some(digests))
}

/// The layer digests of the image manifests `docker manifest inspect -v` printed (each
/// platform's of an index; attestation manifests, whose platform is `unknown`, left out), or
/// of the one manifest it printed (a registry cache's, whose layers are every cached step's).
/// Empty when it printed none, or failed: a question without layers decides nothing.
pub fn read_layers(output: &std::io::Result<Output>) -> BTreeSet<String> {
    let Ok(out) = output else {
        return BTreeSet::new();
    };
    if !out.status.success() {
        return BTreeSet::new();
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return BTreeSet::new();
    };
    let entries = match value {
        serde_json::Value::Array(entries) => entries,
        entry => vec![entry],
    };
    entries
        .iter()
        .filter(|e| e["Descriptor"]["platform"]["os"] != "unknown")
        .flat_map(|e| {
            let manifest = match &e["OCIManifest"] {
                serde_json::Value::Null => &e["SchemaV2Manifest"],
                oci => oci,
            };
            manifest["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l["digest"].as_str().map(str::to_string))
        })
        .collect()
}

/// The `Description:` of every record `docker buildx du --verbose` lists, e.g.
/// `cached mount /app/target from exec /bin/sh -c cargo build`.
fn cache_mount_descriptions(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("Description:"))
        .map(|d| d.trim().to_string())
        .collect()
}

/// `(major, minor)` of what `docker buildx version` prints: `github.com/docker/buildx v0.13.1
/// HASH`, or Debian's `github.com/docker/buildx 0.13.1+ds1 0.13.1+ds1-3`.
fn buildx_version(text: &str) -> Option<(u32, u32)> {
    let word = text.split_whitespace().nth(1)?;
    let mut parts = word.trim_start_matches('v').split(['.', '+', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::buildx_version;

    #[test]
    fn reads_buildx_versions() {
        // Debian 13's plugin, here; Docker's own plugin.
        assert_eq!(
            buildx_version("github.com/docker/buildx 0.13.1+ds1 0.13.1+ds1-3\n"),
            Some((0, 13))
        );
        assert_eq!(
            buildx_version(
                "github.com/docker/buildx v0.12.1 30feaa1a915b869ebc2eea6328624b49facd4bfb"
            ),
            Some((0, 12))
        );
        assert_eq!(
            buildx_version("github.com/docker/buildx v1.0.0 x"),
            Some((1, 0))
        );
        assert_eq!(buildx_version("nonsense"), None);
    }

    #[test]
    fn reads_the_layers_of_images_and_caches() {
        use std::os::unix::process::ExitStatusExt;
        let output = |stdout: &str, code: i32| {
            Ok(std::process::Output {
                status: std::process::ExitStatus::from_raw(code << 8),
                stdout: stdout.as_bytes().to_vec(),
                stderr: Vec::new(),
            })
        };
        // An index of one image and its provenance (dockerd 26, buildx 0.13), shortened.
        let index = r#"[{"Ref":"r","Descriptor":{"digest":"sha256:i1","platform":{"architecture":"amd64","os":"linux"}},"OCIManifest":{"layers":[{"digest":"sha256:a"},{"digest":"sha256:b"}]}},
            {"Ref":"r","Descriptor":{"digest":"sha256:p","platform":{"architecture":"unknown","os":"unknown"}},"OCIManifest":{"layers":[{"digest":"sha256:provenance"}]}}]"#;
        assert_eq!(
            super::read_layers(&output(index, 0)),
            ["sha256:a".to_string(), "sha256:b".into()].into()
        );
        // One image in Docker's media types; a registry cache (its platform is empty).
        let image = r#"{"Descriptor":{"digest":"sha256:m","platform":{"architecture":"amd64","os":"linux"}},"SchemaV2Manifest":{"layers":[{"digest":"sha256:c"}]}}"#;
        assert_eq!(
            super::read_layers(&output(image, 0)),
            ["sha256:c".to_string()].into()
        );
        let cache = r#"{"Descriptor":{"digest":"sha256:k","platform":{"architecture":"","os":""}},"OCIManifest":{"config":{"mediaType":"application/vnd.buildkit.cacheconfig.v0"},"layers":[{"digest":"sha256:a"},{"digest":"sha256:c"}]}}"#;
        assert_eq!(super::read_layers(&output(cache, 0)).len(), 2);
        assert!(super::read_layers(&output(image, 1)).is_empty());
        assert!(super::read_layers(&output("no json", 0)).is_empty());
    }

    #[test]
    fn reads_the_engine_s_cache_mounts() {
        // `docker buildx du --verbose --filter type=exec.cachemount` of dockerd 20.10, here.
        let text = "ID:\t\tpk0jubxr32rsylymriu26fett\nCreated at:\t2026-12-02 06:58:04.817707059 +0000 UTC\nMutable:\ttrue\nReclaimable:\ttrue\nShared:\t\tfalse\nSize:\t\t6B\nDescription:\tcached mount /cache from exec /bin/sh -c sh -c 'echo hello > /cache/file'\nUsage count:\t2\nLast used:\t3 seconds ago\nType:\t\texec.cachemount\n\n";
        assert_eq!(
            super::cache_mount_descriptions(text),
            ["cached mount /cache from exec /bin/sh -c sh -c 'echo hello > /cache/file'"]
        );
    }
}

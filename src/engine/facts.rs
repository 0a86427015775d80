//! What builds, for the registry check's marker (`plan::Facts`): the engine's platform and
//! version, a named builder's driver, BuildKit version and platform, and the docker CLI's
//! environment variables that change what it builds.
//!
//! The marker is asked for before the preflight has answered (its questions go out while the
//! preflight runs), so the first plan of a run assumes the engine's facts: it reads them from
//! the engine's socket itself, a millisecond's round trip without a CLI process, started while
//! the workspace loads. The preflight's `docker version` then tells the facts the run trusts;
//! where they differ (another context, a remote host, a named builder), the run plans again and
//! asks for that marker during the run. An answer about a marker made of other facts is never
//! taken.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

/// The engine fact as the marker hashes it: `os/arch version`.
pub fn engine_fact(os: &str, arch: &str, version: &str) -> String {
    format!("{os}/{arch} {version}")
}

/// The engine's facts, being read from its socket.
pub struct Early(Option<JoinHandle<Option<String>>>);

impl Early {
    /// Starts reading the engine's `/version` from the unix socket the CLI would talk to, when
    /// that socket can be told from the environment alone (`DOCKER_HOST=unix://...`, or the
    /// default socket with no context chosen); `ask` false asks nothing.
    pub fn start(ask: bool) -> Early {
        let socket = ask
            .then(|| socket(&|name| std::env::var(name).ok(), &config_json))
            .flatten();
        Early(socket.map(|socket| std::thread::spawn(move || version(&socket))))
    }

    /// The engine fact, if the socket answered.
    pub fn wait(self) -> Option<String> {
        self.0.and_then(|handle| handle.join().ok().flatten())
    }
}

/// `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`), if there is one.
fn config_json() -> Option<String> {
    let dir = match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".docker"),
    };
    std::fs::read_to_string(dir.join("config.json")).ok()
}

/// The unix socket of the engine the CLI talks to, when the environment alone tells it; `None`
/// for a TCP or SSH host and a chosen context (the preflight's answer is then the only one).
fn socket(
    var: &dyn Fn(&str) -> Option<String>,
    config_json: &dyn Fn() -> Option<String>,
) -> Option<PathBuf> {
    if let Some(host) = var("DOCKER_HOST").filter(|h| !h.is_empty()) {
        return host.strip_prefix("unix://").map(PathBuf::from);
    }
    let chosen = |context: Option<String>| context.is_some_and(|c| !c.is_empty() && c != "default");
    if chosen(var("DOCKER_CONTEXT")) {
        return None;
    }
    if let Some(text) = config_json() {
        let config: serde_json::Value = serde_json::from_str(&text).ok()?;
        if chosen(config["currentContext"].as_str().map(str::to_string)) {
            return None;
        }
    }
    Some(PathBuf::from("/var/run/docker.sock"))
}

/// `GET /version` of the engine API on `socket`: the engine fact, or `None` when it does not
/// answer within a second or two.
fn version(socket: &std::path::Path) -> Option<String> {
    let mut stream = UnixStream::connect(socket).ok()?;
    let timeout = Some(Duration::from_secs(2));
    stream.set_read_timeout(timeout).ok()?;
    stream.set_write_timeout(timeout).ok()?;
    // HTTP/1.0: the answer ends with the connection, never chunked.
    stream
        .write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
        .ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    read_version(&answer)
}

/// The engine fact from an HTTP answer to `GET /version`.
fn read_version(answer: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(answer).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    if status.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    let field = |name: &str| value[name].as_str().filter(|v| !v.is_empty());
    Some(engine_fact(field("Os")?, field("Arch")?, field("Version")?))
}

/// The builder fact from what `docker buildx inspect` printed: its driver, its first node's
/// BuildKit version and first (native) platform; `None` when one of them is not told (a node
/// that is not running names no version).
pub fn builder_fact(inspect: &str) -> Option<String> {
    let value = |keys: &[&str]| {
        inspect.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            let value = value.trim();
            (keys.contains(&key.trim()) && !value.is_empty()).then_some(value)
        })
    };
    let driver = value(&["Driver"])?;
    // buildx 0.11 and later say `BuildKit version`, older ones `Buildkit`.
    let buildkit = value(&["BuildKit version", "Buildkit"])?;
    let platform = value(&["Platforms"])?
        .split(',')
        .next()?
        .trim()
        .trim_end_matches('*');
    Some(format!("{driver} {buildkit} {platform}"))
}

/// Environment variables of the docker CLI and buildx that change the image, hashed with
/// their values.
const HASHED: &[&str] = &[
    "BUILDKIT_HOST",
    "BUILDX_BUILDER",
    "BUILDX_GIT_CHECK_DIRTY",
    "BUILDX_GIT_INFO",
    "BUILDX_GIT_LABELS",
    "BUILDX_NO_DEFAULT_ATTESTATIONS",
    "BUILDX_NO_DEFAULT_OCI_ARTIFACT",
    "DOCKER_DEFAULT_PLATFORM",
    "SOURCE_DATE_EPOCH",
];

/// `BUILDX_`/`BUILDKIT_` variables that do not change a pushed image: display, debugging,
/// metadata files, `--load` defaults, bake (whose tokens must not even be hashed), where buildx
/// keeps its state (the builder it names is hashed by its facts).
const IGNORED: &[&str] = &[
    "BUILDKIT_COLORS",
    "BUILDKIT_PROGRESS",
    "BUILDKIT_TTY_LOG_LINES",
    "BUILDX_CONFIG",
    "BUILDX_CPU_PROFILE",
    "BUILDX_EXPERIMENTAL",
    "BUILDX_MEM_PROFILE",
    "BUILDX_METADATA_PROVENANCE",
    "BUILDX_METADATA_WARNINGS",
    "BUILDX_NO_DEFAULT_LOAD",
];

/// The variables of `vars` (the CLI's environment) that change what it builds, sorted, or why
/// no build may be skipped: a variable whose effect cannot be hashed (a source policy file) or
/// whose meaning the tool does not know (a `BUILDX_` or `BUILDKIT_` variable of a newer buildx).
pub fn cli_env(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(String, String)>, String> {
    let mut hashed = Vec::new();
    for (name, value) in vars {
        if HASHED.contains(&name.as_str()) {
            hashed.push((name, value));
        } else if name == "EXPERIMENTAL_BUILDKIT_SOURCE_POLICY" {
            return Err(format!(
                "`{name}` is set: the source policy it names can change every image the build reads, and the file is not hashed"
            ));
        } else if (name.starts_with("BUILDX_") || name.starts_with("BUILDKIT_"))
            && !name.starts_with("BUILDX_BAKE_")
            && !IGNORED.contains(&name.as_str())
        {
            return Err(format!(
                "`{name}` is set, and the tool cannot tell whether it changes the image\nnote: unset it to let the registry check skip builds"
            ));
        }
    }
    hashed.sort();
    Ok(hashed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_the_cli_talks_to() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let none = || None;
        assert_eq!(
            socket(&env(&[("DOCKER_HOST", "unix:///tmp/e/sock")]), &none),
            Some(PathBuf::from("/tmp/e/sock"))
        );
        assert_eq!(
            socket(&env(&[("DOCKER_HOST", "tcp://h:2375")]), &none),
            None
        );
        assert_eq!(
            socket(&env(&[]), &none),
            Some(PathBuf::from("/var/run/docker.sock"))
        );
        assert_eq!(socket(&env(&[("DOCKER_CONTEXT", "remote")]), &none), None);
        assert_eq!(
            socket(&env(&[("DOCKER_CONTEXT", "default")]), &none),
            Some(PathBuf::from("/var/run/docker.sock"))
        );
        let desktop = || Some(r#"{"currentContext": "desktop-linux"}"#.to_string());
        assert_eq!(socket(&env(&[]), &desktop), None);
    }

    #[test]
    fn reads_the_engines_version_answer() {
        let answer = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"Version\":\"20.10.24+dfsg1\",\"Os\":\"linux\",\"Arch\":\"amd64\"}\n";
        assert_eq!(
            read_version(answer).as_deref(),
            Some("linux/amd64 20.10.24+dfsg1")
        );
        assert_eq!(read_version(b"HTTP/1.0 404 Not Found\r\n\r\n{}"), None);
        assert_eq!(
            read_version(b"HTTP/1.0 200 OK\r\n\r\n{\"Os\":\"linux\"}"),
            None
        );
        assert_eq!(read_version(b"garbage"), None);
    }

    #[test]
    fn reads_what_buildx_inspect_says_of_a_builder() {
        // buildx 0.13 on the classic engine, here.
        let inspect = "Name:   default\nDriver: docker\n\nNodes:\nName:             default\nEndpoint:         default\nStatus:           running\nBuildKit version: v0.8+unknown\nPlatforms:        linux/amd64, linux/arm64, linux/arm/v7\n";
        assert_eq!(
            builder_fact(inspect).as_deref(),
            Some("docker v0.8+unknown linux/amd64")
        );
        let old = "Name: x\nDriver: docker-container\nNodes:\nName: x0\nStatus: running\nBuildkit: v0.11.6\nPlatforms: linux/arm64*, linux/amd64\n";
        assert_eq!(
            builder_fact(old).as_deref(),
            Some("docker-container v0.11.6 linux/arm64")
        );
        let inactive =
            "Name: x\nDriver: docker-container\nNodes:\nName: x0\nStatus: inactive\nPlatforms:\n";
        assert_eq!(builder_fact(inactive), None);
    }

    #[test]
    fn sorts_the_cli_environment() {
        let vars = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            cli_env(vars(&[
                ("SOURCE_DATE_EPOCH", "1"),
                ("PATH", "/bin"),
                ("BUILDKIT_PROGRESS", "plain"),
                ("BUILDX_BAKE_GIT_AUTH_TOKEN", "secret"),
                ("DOCKER_DEFAULT_PLATFORM", "linux/arm64"),
            ])),
            Ok(vars(&[
                ("DOCKER_DEFAULT_PLATFORM", "linux/arm64"),
                ("SOURCE_DATE_EPOCH", "1")
            ]))
        );
        let unknown = cli_env(vars(&[("BUILDX_NEW_THING", "1")])).unwrap_err();
        assert!(unknown.contains("`BUILDX_NEW_THING`"), "{unknown}");
        let policy = cli_env(vars(&[("EXPERIMENTAL_BUILDKIT_SOURCE_POLICY", "p.json")]));
        assert!(policy.unwrap_err().contains("source policy"));
    }
}

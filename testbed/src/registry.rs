//! A CNCF distribution registry (`docker-registry serve`) on the loopback interface.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::http::{self, Json, Response};
use crate::{process, temp_dir, tree_bytes, Tools};

/// How long a registry may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The media types `manifest_digest` accepts, so that the registry answers for any kind of image.
const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json";

/// A manifest or image index as the registry serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The `Content-Type` the registry answered with, e.g.
    /// `application/vnd.oci.image.index.v1+json`.
    pub media_type: String,
    /// The `Docker-Content-Digest`, e.g. `sha256:...`.
    pub digest: String,
    /// The JSON text.
    pub body: String,
}

impl Manifest {
    /// The platforms an image index or manifest list names, in order, as `os/architecture` or
    /// `os/architecture/variant` (attestation manifests appear as `unknown/unknown`); empty for a
    /// single-platform manifest.
    pub fn platforms(&self) -> Result<Vec<String>> {
        let json = Json::parse(&self.body)
            .map_err(|e| anyhow::anyhow!("cannot read manifest `{}`: {e}", self.digest))?;
        let Some(Json::Array(manifests)) = json.get("manifests") else {
            return Ok(Vec::new());
        };
        let text = |j: Option<&Json>| match j {
            Some(Json::String(s)) => Some(s.clone()),
            _ => None,
        };
        manifests
            .iter()
            .map(|m| {
                let platform = m.get("platform").with_context(|| {
                    format!("an entry of index `{}` has no `platform`", self.digest)
                })?;
                let (os, arch) = (text(platform.get("os")), text(platform.get("architecture")));
                let (Some(os), Some(arch)) = (os, arch) else {
                    bail!(
                        "an entry of index `{}` has no `os` or `architecture`",
                        self.digest
                    );
                };
                Ok(match text(platform.get("variant")) {
                    Some(variant) => format!("{os}/{arch}/{variant}"),
                    None => format!("{os}/{arch}"),
                })
            })
            .collect()
    }
}

/// Where and how to start a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// A fixed directory that outlives the registry (its storage is kept); default: a new
    /// temporary directory that is deleted when the registry is dropped.
    pub dir: Option<PathBuf>,
    /// A fixed port on 127.0.0.1; default: a free one.
    pub port: Option<u16>,
    /// Basic authentication (user, password) through an htpasswd file.
    pub auth: Option<(String, String)>,
}

/// A running registry, killed (and, if its directory is temporary, deleted) when dropped.
///
/// Its directory holds `config.yml`, `data` (the storage), `registry.log`, `pid` and, with
/// authentication, `htpasswd`.
#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    owns_dir: bool,
    port: u16,
    auth: Option<(String, String)>,
    program: PathBuf,
    child: Option<Child>,
    detached: bool,
}

impl Registry {
    /// Writes the configuration, starts the registry and waits until `GET /v2/` answers (200, or
    /// 401 with authentication).
    pub fn start(tools: &Tools, options: RegistryOptions) -> Result<Registry> {
        let (dir, owns_dir) = match &options.dir {
            Some(dir) => {
                fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create `{}`", dir.display()))?;
                (fs::canonicalize(dir)?, false)
            }
            None => (temp_dir("registry")?, true),
        };
        let mut registry = Registry {
            dir,
            owns_dir,
            port: 0,
            auth: options.auth.clone(),
            program: tools.registry.clone(),
            child: None,
            detached: false,
        };
        if let Some(pid) = running_in(&registry.dir) {
            registry.detached = true; // not ours to stop
            bail!(
                "a registry already runs in `{}` (pid `{pid}`)",
                registry.dir.display()
            );
        }
        fs::create_dir_all(registry.dir.join("data"))?;
        if let Some((user, password)) = &options.auth {
            let sh = Shell::new()?;
            let htpasswd = &tools.htpasswd;
            let line = cmd!(sh, "{htpasswd} -Bbn {user} {password}")
                .quiet()
                .secret()
                .read()
                .context("`htpasswd -Bbn` failed")?;
            fs::write(registry.dir.join("htpasswd"), format!("{}\n", line.trim()))?;
        }
        match options.port {
            Some(port) => {
                TcpListener::bind(("127.0.0.1", port)).with_context(|| {
                    format!("cannot start a registry: `127.0.0.1:{port}` is already in use")
                })?;
                registry.port = port;
                registry.write_config()?;
                registry.launch()?;
            }
            None => {
                // A free port can be taken by someone else between finding and binding it.
                let mut tries = 0;
                loop {
                    tries += 1;
                    registry.port = free_port()?;
                    registry.write_config()?;
                    match registry.launch() {
                        Ok(()) => break,
                        Err(e)
                            if tries < 5 && registry.log().contains("address already in use") =>
                        {
                            eprintln!("retrying on another port: {e:#}");
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(registry)
    }

    fn write_config(&self) -> Result<()> {
        let quote = |p: &Path| {
            let s = p.display().to_string();
            format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
        };
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{}\n",
            quote(&self.dir.join("data")),
            self.port
        );
        if self.auth.is_some() {
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: testbed\n    path: {}\n",
                quote(&self.dir.join("htpasswd"))
            ));
        }
        fs::write(self.dir.join("config.yml"), config)?;
        Ok(())
    }

    fn launch(&mut self) -> Result<()> {
        let log = self.dir.join("registry.log");
        let config = self.dir.join("config.yml");
        let mut child =
            process::spawn_daemon(&self.program, &["serve".as_ref(), config.as_os_str()], &log)?;
        fs::write(self.dir.join("pid"), format!("{}\n", child.id()))?;
        let addr = self.socket_addr();
        let auth = self.auth.is_some();
        let ready = process::wait_for(
            &format!("the registry on `{addr}` to answer"),
            START_TIMEOUT,
            Duration::from_millis(50),
            || {
                if let Some(status) = child.try_wait()? {
                    bail!("docker-registry exited ({status}) before it answered");
                }
                match http::request(addr, "GET", "/v2/", &[]) {
                    Ok(r) if r.status == 200 || (auth && r.status == 401) => Ok(Some(())),
                    Ok(r) => bail!("`GET /v2/` answered {}: {}", r.status, r.text()),
                    Err(_) => Ok(None),
                }
            },
        );
        if let Err(e) = ready {
            let _ = process::terminate(child.id() as i32, Duration::from_secs(5));
            let _ = child.wait();
            let _ = fs::remove_file(self.dir.join("pid"));
            return Err(e.context(format!(
                "registry did not start; last lines of `{}`:\n{}",
                log.display(),
                process::tail(&log, 30)
            )));
        }
        self.child = Some(child);
        Ok(())
    }

    fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn addr(&self) -> String {
        self.socket_addr().to_string()
    }

    /// The registry's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pid of the registry process while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn get(&self, method: &str, path: &str, accept: Option<&str>) -> Result<Response> {
        let mut headers = Vec::new();
        if let Some((user, password)) = &self.auth {
            let token = http::base64(format!("{user}:{password}").as_bytes());
            headers.push(("Authorization", format!("Basic {token}")));
        }
        if let Some(accept) = accept {
            headers.push(("Accept", accept.to_string()));
        }
        http::request(self.socket_addr(), method, path, &headers)
            .with_context(|| format!("`{method} {path}` on the registry `{}` failed", self.addr()))
    }

    /// The tags of `repo` (`GET /v2/<repo>/tags/list`); empty when the registry knows no such
    /// repository.
    pub fn tags(&self, repo: &str) -> Result<Vec<String>> {
        let path = format!("/v2/{repo}/tags/list");
        let response = self.get("GET", &path, None)?;
        match response.status {
            200 => http::parse_tags(&response.text())
                .map_err(|e| anyhow::anyhow!("cannot read the answer to `GET {path}`: {e}")),
            404 => Ok(Vec::new()),
            status => bail!("`GET {path}` answered {status}: {}", response.text().trim()),
        }
    }

    /// The digest (`Docker-Content-Digest`) of the manifest or index `repo:reference` (a tag or
    /// digest), `None` when there is none.
    pub fn manifest_digest(&self, repo: &str, reference: &str) -> Result<Option<String>> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let response = self.get("HEAD", &path, Some(MANIFEST_TYPES))?;
        match response.status {
            200 => match response.header("docker-content-digest") {
                Some(digest) => Ok(Some(digest.to_string())),
                None => bail!("`HEAD {path}` answered without `Docker-Content-Digest`"),
            },
            404 => Ok(None),
            status => bail!("`HEAD {path}` answered {status}"),
        }
    }

    /// The manifest or index `repo:reference` (a tag or digest) as the registry serves it to a
    /// client that accepts every kind of image, `None` when there is none.
    pub fn manifest(&self, repo: &str, reference: &str) -> Result<Option<Manifest>> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let response = self.get("GET", &path, Some(MANIFEST_TYPES))?;
        match response.status {
            200 => Ok(Some(Manifest {
                media_type: response
                    .header("content-type")
                    .unwrap_or_default()
                    .to_string(),
                digest: response
                    .header("docker-content-digest")
                    .unwrap_or_default()
                    .to_string(),
                body: response.text(),
            })),
            404 => Ok(None),
            status => bail!("`GET {path}` answered {status}: {}", response.text().trim()),
        }
    }

    /// What the registry logged so far (across restarts).
    pub fn log(&self) -> String {
        fs::read(self.dir.join("registry.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Bytes in the registry's storage.
    pub fn storage_bytes(&self) -> u64 {
        tree_bytes(&self.dir.join("data"))
    }

    /// Whether the registry process runs.
    pub fn is_running(&mut self) -> bool {
        process::reap(&mut self.child);
        self.child.is_some()
    }

    /// Ends the registry process (SIGTERM, SIGKILL after 10 s); storage, port and configuration
    /// stay for [`Registry::restart`]. Does nothing if it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = process::terminate(child.id() as i32, Duration::from_secs(10)) {
                eprintln!("warning: stopping the registry on `{}`: {e:#}", self.addr());
            }
            let _ = child.wait();
            let _ = fs::remove_file(self.dir.join("pid"));
        }
    }

    /// Starts the registry again on the same port with the same storage (stopping it first if it
    /// runs) and waits until it answers.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch()
    }

    /// Leaves the registry running after this value is gone (for `cargo xtask engine up`),
    /// returns its pid. [`Registry::stop_in`] stops it later.
    pub fn detach(mut self) -> Option<u32> {
        self.detached = true;
        self.child.take().map(|c| c.id())
    }

    /// The pid of the registry running in `dir`, according to its pid file, if there is one.
    pub fn running_in(dir: &Path) -> Option<u32> {
        running_in(dir).map(|p| p as u32)
    }

    /// Stops a registry that was started in `dir` and detached; keeps its storage. Returns whether
    /// a registry was running.
    pub fn stop_in(dir: &Path) -> Result<bool> {
        let dir =
            fs::canonicalize(dir).with_context(|| format!("no directory `{}`", dir.display()))?;
        let pid = running_in(&dir);
        if let Some(pid) = pid {
            process::terminate(pid, Duration::from_secs(10))?;
        }
        let _ = fs::remove_file(dir.join("pid"));
        Ok(pid.is_some())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.owns_dir {
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    eprintln!("warning: cannot remove `{}`: {e}", self.dir.display());
                }
            }
        }
    }
}

/// The live registry whose pid file is in `dir` and whose command line names `dir`.
fn running_in(dir: &Path) -> Option<i32> {
    let pid = process::read_pidfile(&dir.join("pid"))?;
    (process::alive(pid) && process::mentions(&process::cmdline(pid), dir)).then_some(pid)
}

/// A port on 127.0.0.1 that is free right now.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind `127.0.0.1:0`")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(body: &str) -> Manifest {
        Manifest {
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            digest: "sha256:ab".into(),
            body: body.into(),
        }
    }

    #[test]
    fn lists_the_platforms_of_an_index() {
        let index = manifest(
            r#"{"schemaVersion":2,"manifests":[
                {"digest":"sha256:1","platform":{"architecture":"amd64","os":"linux"}},
                {"digest":"sha256:2","platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
                {"digest":"sha256:3","platform":{"architecture":"unknown","os":"unknown"}}]}"#,
        );
        assert_eq!(
            index.platforms().unwrap(),
            ["linux/amd64", "linux/arm64/v8", "unknown/unknown"]
        );
        assert!(manifest(r#"{"schemaVersion":2,"layers":[]}"#)
            .platforms()
            .unwrap()
            .is_empty());
        assert!(manifest(r#"{"manifests":[{"digest":"sha256:1"}]}"#)
            .platforms()
            .is_err());
        assert!(manifest("{").platforms().is_err());
    }
}

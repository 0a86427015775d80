//! Puts docker's and BuildKit's error messages into classes a user can act on: the registry's,
//! and the engine's where a build failed for want of something the config can give.

/// Why a registry operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryProblem {
    /// The image is not there yet: the first build, or a new cache tag.
    NotFound,
    /// The registry refused, which it also does for repositories that do not exist.
    DeniedOrMissing,
    /// Credentials are missing, wrong or expired.
    Authentication,
    /// The registry could not be reached.
    Unreachable,
    /// The registry asked to slow down.
    RateLimited,
    /// HTTPS was expected and HTTP answered, or the certificate is not trusted.
    Tls,
    /// The registry failed with a 5xx status: often passing (Debian's registry answers 500 to
    /// two pushes of the same blob at once).
    ServerError,
    /// Anything else.
    Other,
}

impl RegistryProblem {
    /// Classifies a message (the whole stderr of a failed command is fine).
    pub fn classify(message: &str) -> RegistryProblem {
        let m = message.to_ascii_lowercase();
        let has = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
        // Order matters: "pull access denied ... may require 'docker login'" is about access,
        // not about a missing image, even though it says "does not exist".
        if has(&[
            "http response to https client",
            "x509:",
            "certificate signed by unknown authority",
            "tls: ",
        ]) {
            RegistryProblem::Tls
        } else if has(&["toomanyrequests", "429 too many requests", "rate limit"]) {
            RegistryProblem::RateLimited
        } else if has(&[
            "pull access denied",
            "insufficient_scope",
            "denied: requested access",
            "403 forbidden",
            "denied:",
        ]) {
            RegistryProblem::DeniedOrMissing
        } else if has(&[
            "unauthorized",
            "authentication required",
            "401 unauthorized",
            "no basic auth credentials",
            "token expired",
        ]) {
            RegistryProblem::Authentication
        } else if has(&[
            "connection refused",
            "no such host",
            "i/o timeout",
            "timeout exceeded",
            "network is unreachable",
            "connection reset",
            "dial tcp",
        ]) {
            RegistryProblem::Unreachable
        } else if has(&[
            "unexpected http status: 5",
            "500 internal server error",
            "502 bad gateway",
            "503 service unavailable",
            "504 gateway timeout",
        ]) {
            RegistryProblem::ServerError
        } else if has(&[
            "manifest unknown",
            "not found",
            "no such manifest",
            "name unknown",
        ]) {
            RegistryProblem::NotFound
        } else {
            RegistryProblem::Other
        }
    }

    /// What it means for a cache image that was to be read.
    pub fn describe(self, image: &str) -> String {
        match self {
            RegistryProblem::NotFound => format!("no cache yet: `{image}` is not in the registry"),
            RegistryProblem::DeniedOrMissing => format!(
                "access to `{image}` was denied: either it does not exist or these credentials may not read it"
            ),
            RegistryProblem::Authentication => format!("the registry of `{image}` wants credentials (`docker login`)"),
            RegistryProblem::Unreachable => format!("the registry of `{image}` could not be reached"),
            RegistryProblem::RateLimited => format!("the registry of `{image}` is rate-limiting"),
            RegistryProblem::Tls => format!(
                "TLS with the registry of `{image}` failed\nnote: for a registry without TLS, list it in the daemon's `insecure-registries`"
            ),
            RegistryProblem::ServerError => {
                format!("the registry of `{image}` failed with a server error (5xx)")
            }
            RegistryProblem::Other => format!("`{image}` could not be used"),
        }
    }
}

/// What to do about a failed build whose output (`text`, the whole of it is fine) shows the
/// engine could not give a `RUN` step what it needs; `None` when nothing is recognized.
pub fn build_hint(text: &str) -> Option<&'static str> {
    // An engine started with `--bridge=none` (as `cargo xtask engine up`'s and the test
    // engines are) has no default network for `RUN`; BuildKit says only this.
    text.to_ascii_lowercase()
        .contains("network bridge not found")
        .then_some(
            "note: the engine has no bridge network (dockerd `--bridge=none`), which a `RUN` step needs by default: set `network = \"none\"` in `[package.metadata.docker]` for builds that need no network, or give the engine a bridge",
        )
}

#[cfg(test)]
mod tests {
    use super::build_hint;
    use super::RegistryProblem::{self, *};

    #[test]
    fn a_missing_bridge_says_what_to_do() {
        // dockerd 20.10's BuildKit through the 20.10 CLI, here, on an engine with
        // `--bridge=none` and a build without `--network`.
        let message =
            "executor failed running [/bin/busybox --install -s /bin]: network bridge not found";
        let hint = build_hint(message).unwrap();
        assert!(hint.contains("`network = \"none\"`"), "{hint}");
        assert!(hint.contains("give the engine a bridge"), "{hint}");
        assert_eq!(
            build_hint("executor failed running [make]: exit code: 2"),
            None
        );
    }

    #[test]
    fn classifies_real_messages() {
        let cases = [
            // docker pull on the 20.10 CLI against Debian's registry, here.
            ("Error response from daemon: manifest for 127.0.0.1:5055/svc:nope not found: manifest unknown: manifest unknown", NotFound),
            ("no such manifest: 127.0.0.1:5055/svc:nope", NotFound),
            ("Error response from daemon: pull access denied for acme/x, repository does not exist or may require 'docker login': denied: requested access to the resource is denied", DeniedOrMissing),
            ("Error response from daemon: Head \"http://127.0.0.1:5056/v2/svc/manifests/dev\": no basic auth credentials", Authentication),
            ("unauthorized: authentication required", Authentication),
            ("Get \"http://127.0.0.1:5999/v2/\": dial tcp 127.0.0.1:5999: connect: connection refused", Unreachable),
            ("toomanyrequests: You have reached your pull rate limit.", RateLimited),
            ("http: server gave HTTP response to HTTPS client", Tls),
            ("x509: certificate signed by unknown authority", Tls),
            // docker push of two tags of one image at once to Debian's registry, here.
            ("received unexpected HTTP status: 500 Internal Server Error", ServerError),
            ("something else entirely", Other),
        ];
        for (message, class) in cases {
            assert_eq!(RegistryProblem::classify(message), class, "{message}");
        }
    }
}

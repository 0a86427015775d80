//! OCI image labels (`org.opencontainers.image.*`) made from Cargo metadata and git.
//!
//! Pure: the caller reads the manifests and git into a [`LabelSource`]; this module only
//! decides which labels follow and how they are passed to `docker build`.

use std::collections::BTreeMap;

/// What the labels are made from (filled by the caller from the manifest and git).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSource {
    /// The package name.
    pub name: String,
    /// The package version.
    pub version: String,
    /// The package description.
    pub description: Option<String>,
    /// The SPDX license expression (`license`).
    pub license: Option<String>,
    /// The `license-file` path.
    pub license_file: Option<String>,
    /// The `repository` URL.
    pub repository: Option<String>,
    /// The `homepage` URL.
    pub homepage: Option<String>,
    /// The `documentation` URL.
    pub documentation: Option<String>,
    /// The `authors`.
    pub authors: Vec<String>,
    /// The git commit sha.
    pub revision: Option<String>,
    /// The commit's time, RFC 3339.
    pub created: Option<String>,
}

/// The prefix of every label the OCI image spec defines.
const PREFIX: &str = "org.opencontainers.image.";

/// The `org.opencontainers.image.*` labels, then `overrides` (the config's `labels` table)
/// added or replacing; sorted by key.
///
/// A label whose value is unknown or blank is left out. Values are kept verbatim (they reach
/// `docker build` as argv, never through a shell), except the description, see below.
pub fn oci_labels(
    source: &LabelSource,
    overrides: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut add = |key: &str, value: Option<String>| {
        if let Some(value) = value.filter(|v| !v.trim().is_empty()) {
            labels.insert(format!("{PREFIX}{key}"), value);
        }
    };
    add("title", Some(source.name.clone()));
    add("version", Some(source.version.clone()));
    // OCI label values may hold anything, but a multi-line description makes `docker inspect`
    // and `docker image ls --format` output ugly: make it one line, whitespace runs one space.
    add(
        "description",
        source
            .description
            .as_deref()
            .map(|d| d.split_whitespace().collect::<Vec<_>>().join(" ")),
    );
    // `licenses` takes an SPDX expression; a `license-file` is a path inside the source tree,
    // which says nothing to someone holding only the image, so it gives no label.
    add("licenses", source.license.clone());
    add("source", source.repository.clone());
    add(
        "url",
        nonblank(&source.homepage)
            .or(nonblank(&source.repository))
            .map(str::to_string),
    );
    add("documentation", source.documentation.clone());
    let authors: Vec<&str> = source
        .authors
        .iter()
        .map(String::as_str)
        .filter(|a| !a.trim().is_empty())
        .collect();
    add("authors", Some(authors.join(", ")));
    add("revision", source.revision.clone());
    add("created", source.created.clone());
    for (key, value) in overrides {
        labels.insert(key.clone(), value.clone());
    }
    labels
}

/// The `docker build` arguments for `labels`: `["--label", "key=value", ...]`, in key order.
pub fn label_args(labels: &BTreeMap<String, String>) -> Vec<String> {
    labels
        .iter()
        .flat_map(|(key, value)| ["--label".to_string(), format!("{key}={value}")])
        .collect()
}

/// Checks a label key from the config: `docker build --label key=value` splits at the first
/// `=`, and a key that is empty, holds whitespace or starts with `-` would be misread.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a label key may not be empty".to_string());
    }
    if key.contains('=') {
        return Err(format!("label key `{key}` may not contain `=`"));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "label key `{}` may not contain whitespace or control characters",
            key.escape_debug()
        ));
    }
    if key.starts_with('-') {
        return Err(format!("label key `{key}` may not start with `-`"));
    }
    Ok(())
}

fn nonblank(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    fn minimal() -> LabelSource {
        LabelSource {
            name: "service".into(),
            version: "0.3.1".into(),
            ..LabelSource::default()
        }
    }

    fn full() -> LabelSource {
        LabelSource {
            name: "service".into(),
            version: "0.3.1".into(),
            description: Some("A service.".into()),
            license: Some("MIT OR Apache-2.0".into()),
            license_file: Some("LICENSE".into()),
            repository: Some("https://github.com/acme/service".into()),
            homepage: Some("https://acme.example/service".into()),
            documentation: Some("https://docs.rs/service".into()),
            authors: vec!["Jane Doe <jane@acme.example>".into(), "Joe".into()],
            revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
            created: Some("2025-01-02T03:04:05+00:00".into()),
        }
    }

    #[test]
    fn full_metadata() {
        expect![[r#"
            {
                "org.opencontainers.image.authors": "Jane Doe <jane@acme.example>, Joe",
                "org.opencontainers.image.created": "2025-01-02T03:04:05+00:00",
                "org.opencontainers.image.description": "A service.",
                "org.opencontainers.image.documentation": "https://docs.rs/service",
                "org.opencontainers.image.licenses": "MIT OR Apache-2.0",
                "org.opencontainers.image.revision": "0123456789abcdef0123456789abcdef01234567",
                "org.opencontainers.image.source": "https://github.com/acme/service",
                "org.opencontainers.image.title": "service",
                "org.opencontainers.image.url": "https://acme.example/service",
                "org.opencontainers.image.version": "0.3.1",
            }
        "#]]
        .assert_debug_eq(&oci_labels(&full(), &BTreeMap::new()));
    }

    #[test]
    fn minimal_metadata() {
        expect![[r#"
            {
                "org.opencontainers.image.title": "service",
                "org.opencontainers.image.version": "0.3.1",
            }
        "#]]
        .assert_debug_eq(&oci_labels(&minimal(), &BTreeMap::new()));
    }

    #[test]
    fn blank_values_license_file_and_url_fallback() {
        let source = LabelSource {
            description: Some(" \n\t".into()),
            license_file: Some("LICENSE".into()),
            repository: Some("https://github.com/acme/service".into()),
            homepage: Some(String::new()),
            authors: vec![String::new(), " ".into()],
            revision: Some(String::new()),
            ..minimal()
        };
        expect![[r#"
            {
                "org.opencontainers.image.source": "https://github.com/acme/service",
                "org.opencontainers.image.title": "service",
                "org.opencontainers.image.url": "https://github.com/acme/service",
                "org.opencontainers.image.version": "0.3.1",
            }
        "#]]
        .assert_debug_eq(&oci_labels(&source, &BTreeMap::new()));
    }

    #[test]
    fn overrides_replace_and_add() {
        let overrides = BTreeMap::from([
            (
                "org.opencontainers.image.title".to_string(),
                "Acme Service".to_string(),
            ),
            ("com.acme.team".to_string(), "platform".to_string()),
            (
                "org.opencontainers.image.vendor".to_string(),
                "Acme".to_string(),
            ),
        ]);
        expect![[r#"
            {
                "com.acme.team": "platform",
                "org.opencontainers.image.title": "Acme Service",
                "org.opencontainers.image.vendor": "Acme",
                "org.opencontainers.image.version": "0.3.1",
            }
        "#]]
        .assert_debug_eq(&oci_labels(&minimal(), &overrides));
    }

    #[test]
    fn description_becomes_one_line() {
        let source = LabelSource {
            description: Some("  A service\nthat does\r\n\n  things,\tfast.\n".into()),
            ..minimal()
        };
        let labels = oci_labels(&source, &BTreeMap::new());
        assert_eq!(
            labels
                .get("org.opencontainers.image.description")
                .map(String::as_str),
            Some("A service that does things, fast.")
        );
    }

    #[test]
    fn args() {
        let labels = BTreeMap::from([
            ("b".to_string(), "x=y z".to_string()),
            ("a".to_string(), String::new()),
        ]);
        expect![[r#"
            [
                "--label",
                "a=",
                "--label",
                "b=x=y z",
            ]
        "#]]
        .assert_debug_eq(&label_args(&labels));
        assert_eq!(label_args(&BTreeMap::new()), Vec::<String>::new());
    }

    #[test]
    fn label_keys() {
        assert_eq!(
            validate_label_key("org.opencontainers.image.vendor"),
            Ok(())
        );
        assert_eq!(validate_label_key("com.acme.team-1"), Ok(()));
        let errors: Vec<String> = ["", "a=b", "a b", "a\nb", "a\u{0}b", "-x", "--label"]
            .iter()
            .filter_map(|key| validate_label_key(key).err())
            .collect();
        expect![[r#"
            [
                "a label key may not be empty",
                "label key `a=b` may not contain `=`",
                "label key `a b` may not contain whitespace or control characters",
                "label key `a\\nb` may not contain whitespace or control characters",
                "label key `a\\0b` may not contain whitespace or control characters",
                "label key `-x` may not start with `-`",
                "label key `--label` may not start with `-`",
            ]
        "#]]
        .assert_debug_eq(&errors);
    }
}

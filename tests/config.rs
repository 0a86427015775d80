//! Loading `[package.metadata.docker]` from real Cargo workspaces (made in temp folders) and
//! the errors for every kind of bad input: each names the key, stage or path at fault.

use std::path::{Path, PathBuf};

use xtask_docker::workspace;
use xtask_docker::SelectArgs;

const DOCKERFILE: &str = "\
FROM scratch AS toolchain
COPY busybox /bin/busybox
FROM toolchain AS compile
RUN make
FROM toolchain AS runtime
COPY --from=compile /out /out
";

/// A workspace of one package `svc` 1.2.3 with `table` under `[package.metadata.docker]`.
fn workspace(table: &str, dockerfile: Option<&str>) -> PathBuf {
    let dir = testbed::temp_dir("config").unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"svc\"\nversion = \"1.2.3\"\nedition = \"2021\"\n\n[lib]\npath = \"lib.rs\"\n\n[package.metadata.docker]\n{table}\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("lib.rs"), "").unwrap();
    if let Some(text) = dockerfile {
        std::fs::write(dir.join("Dockerfile"), text).unwrap();
    }
    dir
}

fn load(dir: &Path, packages: &[&str]) -> anyhow::Result<Vec<xtask_docker::package::Package>> {
    let select = packages
        .iter()
        .fold(SelectArgs::default(), |select, p| select.package(*p))
        .manifest_path(dir.join("Cargo.toml"));
    workspace::load(&select)
}

/// The whole error chain, with the temp folder replaced by `DIR`.
fn error(table: &str, dockerfile: Option<&str>) -> String {
    let dir = workspace(table, dockerfile);
    let message = format!("{:#}", load(&dir, &[]).unwrap_err());
    let _ = std::fs::remove_dir_all(&dir);
    message.replace(dir.to_str().unwrap(), "DIR")
}

#[test]
fn a_valid_table_loads_with_defaults() {
    let dir = workspace(
        "image = \"127.0.0.1:5000/acme/svc\"\nstages = { compile = \"compile\" }",
        Some(DOCKERFILE),
    );
    let packages = load(&dir, &[]).unwrap();
    assert_eq!(packages.len(), 1);
    let package = &packages[0];
    assert_eq!(
        package.config.cache_image.as_str(),
        "127.0.0.1:5000/acme/svc"
    );
    assert_eq!(
        package
            .config
            .tags
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>(),
        ["latest"]
    );
    assert_eq!(package.graph.name(package.target), "runtime");
    assert_eq!(package.config.dockerfile, dir.join("Dockerfile"));
    // The branch boundary holds unless the table lifts it; the default branch is the run's
    // to detect unless the table names it.
    assert!(!package.config.trust_all_branches);
    assert_eq!(package.config.default_branch, None);
    // The final target is cached under its own name.
    let cached: Vec<(String, String)> = package
        .cached
        .iter()
        .map(|(s, t)| (package.graph.name(*s), t.to_string()))
        .collect();
    assert_eq!(
        cached,
        [
            ("compile".into(), "compile".into()),
            ("runtime".into(), "runtime".into())
        ]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn errors_name_the_culprit() {
    let cases: &[(&str, Option<&str>, &str)] = &[
        (
            "image = \"a/b\"\nimagee = \"x\"",
            Some(DOCKERFILE),
            "unknown key `imagee`\nnote: the keys are image, dockerfile",
        ),
        ("image = \"a/b\"\nimagee = \"x\"", Some(DOCKERFILE), "note: the keys are image, dockerfile"),
        ("image = \"a/b\"\ntags = \"latest\"", Some(DOCKERFILE), "key `tags`: invalid type: string \"latest\", expected a sequence"),
        ("stages = {}", Some(DOCKERFILE), "key `image` is missing"),
        ("image = \"Acme/B\"", Some(DOCKERFILE), "key `image`:"),
        ("image = \"acme/b:1.0\"", Some(DOCKERFILE), "key `image`:"),
        ("image = \"a/b\"\ncache-image = \"-x\"", Some(DOCKERFILE), "key `cache-image`:"),
        ("image = \"a/b\"", None, "key `dockerfile`: `DIR/Dockerfile` is not a file"),
        ("image = \"a/b\"\ncontext = \"nowhere\"", Some(DOCKERFILE), "key `context`: `DIR/nowhere` is not a folder"),
        ("image = \"a/b\"\ntarget = \"runtme\"", Some(DOCKERFILE), "key `target`: `DIR/Dockerfile` has no stage `runtme`\nnote: its stages are `toolchain`, `compile`, `runtime`"),
        ("image = \"a/b\"\ntarget = \"-x\"", Some(DOCKERFILE), "key `target`: `-x` starts with `-`"),
        ("image = \"a/b\"\ntarget = 3", Some(DOCKERFILE), "key `target`: `DIR/Dockerfile` has no stage `3`"),
        ("image = \"a/b\"\ntarget = true", Some(DOCKERFILE), "key `target`: expected a stage name or an index"),
        ("image = \"a/b\"\nstages = { compil = \"c\" }", Some(DOCKERFILE), "key `stages.compil`: `DIR/Dockerfile` has no stage `compil`"),
        ("image = \"a/b\"\nstages = { \"-compile\" = \"c\" }", Some(DOCKERFILE), "key `stages`: `-compile` starts with `-`"),
        ("image = \"a/b\"\nstages = { compile = \"-c\" }", Some(DOCKERFILE), "key `stages.compile`:"),
        ("image = \"a/b\"\nstages = { compile = \"c-{git_sha}\" }", Some(DOCKERFILE), "key `stages.compile`: `c-{git_sha}` may not use `{git_sha}`"),
        ("image = \"a/b\"\ntags = [\"{commit}\"]", Some(DOCKERFILE), "key `tags`: `{commit}` uses unknown placeholder `{commit}`"),
        ("image = \"a/b\"\ntags = [\"v{version\"]", Some(DOCKERFILE), "key `tags`: `v{version` has a `{` without `}`"),
        ("image = \"a/b\"\ntags = []", Some(DOCKERFILE), "key `tags` is empty"),
        ("image = \"a/b\"\nbuild-args = { \"-X\" = \"1\" }", Some(DOCKERFILE), "key `build-args`: `-X` is not a build argument name"),
        ("image = \"a/b\"\nbuild-args = { X = 1 }", Some(DOCKERFILE), "key `build-args.X`: invalid type: integer `1`, expected a string"),
        ("image = \"a/b\"\nnetwork = [\"none\"]", Some(DOCKERFILE), "key `network`: invalid type: sequence, expected a string"),
        ("image = \"a/b\"\nsecrets = { npm = { env = 1 } }", Some(DOCKERFILE), "key `secrets.npm.env`: invalid type: integer `1`"),
        ("image = \"a/b\"\nplatform = 1", Some(DOCKERFILE), "key `platform`: expected a string or a list of strings"),
        ("image = \"a/b\"\nsbom = [true]", Some(DOCKERFILE), "key `sbom`: expected a boolean or a string"),
        ("image = \"a/b\"\nnetwork = \"no\\u0000ne\"", Some(DOCKERFILE), "key `network`: the value holds a NUL byte"),
        ("image = \"a/b\"\nbuild-args = { X = \"a\\u0000b\" }", Some(DOCKERFILE), "key `build-args.X`: the value holds a NUL byte"),
        ("image = \"a/b\"\nlabels = { \"a\\u0000b\" = \"x\" }", Some(DOCKERFILE), "key `labels`: a key holds a NUL byte"),
        ("image = \"a/b\"\nnetwork = \"--privileged\"", Some(DOCKERFILE), "key `network`: `--privileged` starts with `-`"),
        ("image = \"a/b\"", Some("FROM scratch AS a\nCOPY --from=b / /\nFROM scratch AS b\nCOPY --from=a / /\n"), "cycle"),
        ("image = \"a/b\"", Some("# nothing here\n"), "cannot read the stages of `DIR/Dockerfile`"),
        ("image = \"a/b\"\ncache = \"s3\"", Some(DOCKERFILE), "key `cache`: `s3` is not a cache mode\nnote: the modes are `inline` and `registry`"),
        ("image = \"a/b\"\ncache = \"registry\"\ncache-tag = \"c-{git_sha}\"", Some(DOCKERFILE), "key `cache-tag`: `c-{git_sha}` may not use `{git_sha}`"),
        ("image = \"a/b\"\npush-cache = \"maybe\"", Some(DOCKERFILE), "key `push-cache`: `maybe` is not a policy"),
        ("image = \"a/b\"\nplatform = [\"linux/amd64\", \"linux/arm64\"]", Some(DOCKERFILE), "key `platform`: a multi-platform image needs `cache = \"registry\"`"),
        ("image = \"a/b\"\nplatform = \"linux/amd64,linux/arm64\"", Some(DOCKERFILE), "give several platforms as a list"),
        ("image = \"a/b\"\nplatform = []", Some(DOCKERFILE), "key `platform` is an empty list"),
        ("image = \"a/b\"\nprovenance = \"--x\"", Some(DOCKERFILE), "key `provenance`: `--x` starts with `-`"),
        ("image = \"a/b\"\nsecrets = { npm = { env = \"A\", file = \"b\" } }", Some(DOCKERFILE), "key `secrets.npm`: give exactly one of `env` and `file`"),
        ("image = \"a/b\"\nsecrets = { npm = { value = \"hunter2\" } }", Some(DOCKERFILE), "unknown field `value`, expected `env` or `file`"),
        ("image = \"a/b\"\nsecrets = { \"-x\" = { env = \"A\" } }", Some(DOCKERFILE), "key `secrets`: `-x` is not a secret id"),
        ("image = \"a/b\"\nlabels = { \"a b\" = \"x\" }", Some(DOCKERFILE), "key `labels`:"),
        ("image = \"a/b\"\ndefault-branch = \"\"", Some(DOCKERFILE), "key `default-branch` is empty"),
        ("image = \"a/b\"\ndefault-branch = \"-main\"", Some(DOCKERFILE), "key `default-branch`: `-main` starts with `-`"),
        ("image = \"a/b\"\ntrust-all-branches = \"yes\"", Some(DOCKERFILE), "key `trust-all-branches`: invalid type: string \"yes\", expected a boolean"),
    ];
    for (table, dockerfile, expected) in cases {
        let message = error(table, *dockerfile);
        assert!(
            message.contains(expected),
            "for table\n{table}\nexpected `{expected}` in:\n{message}"
        );
        assert!(
            message.contains("package `svc`") || message.contains("DIR"),
            "no package or path named in:\n{message}"
        );
    }
}

#[test]
fn a_target_is_a_name_or_an_index() {
    for target in ["0", "\"0\"", "\"toolchain\"", "\"ToolChain\""] {
        let dir = workspace(
            &format!("image = \"a/b\"\ntarget = {target}"),
            Some(DOCKERFILE),
        );
        let packages = load(&dir, &[]).unwrap_or_else(|e| panic!("target = {target}: {e:#}"));
        assert_eq!(packages[0].graph.name(packages[0].target), "toolchain");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn an_unknown_key_lists_the_keys_once() {
    let message = error("image = \"a/b\"\nimagee = \"x\"", Some(DOCKERFILE));
    // `cache-mount-limit` is a key no other key's name contains.
    assert_eq!(
        message.matches("cache-mount-limit").count(),
        1,
        "the keys are listed more than once:\n{message}"
    );
    assert!(message.contains("unknown key `imagee`"), "{message}");
}

#[test]
fn selecting_packages() {
    let dir = workspace("image = \"a/b\"", Some(DOCKERFILE));
    let message = format!("{:#}", load(&dir, &["nope"]).unwrap_err());
    assert!(
        message.contains("package `nope` is not in the workspace\nnote: its packages are `svc`"),
        "{message}"
    );
    assert_eq!(load(&dir, &["svc"]).unwrap().len(), 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_workspace_without_tables_is_an_error() {
    let dir = workspace("", Some(DOCKERFILE));
    // An empty table is still a table; take it away entirely.
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        manifest.replace("[package.metadata.docker]\n", ""),
    )
    .unwrap();
    let message = format!("{:#}", load(&dir, &[]).unwrap_err());
    assert!(
        message.contains("has a `[package.metadata.docker]` table"),
        "{message}"
    );
    let message = format!("{:#}", load(&dir, &["svc"]).unwrap_err());
    assert!(
        message.contains("package `svc` has no `[package.metadata.docker]` table"),
        "{message}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn workspace_defaults_fill_members_and_members_win() {
    let dir = testbed::temp_dir("workspace").unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[workspace]\nmembers = [\"api\", \"worker\", \"lib\"]\n\n[workspace.metadata.docker]\nimage = \"127.0.0.1:5000/acme/{package}\"\ndockerfile = \"{workspace}/Dockerfile\"\ncontext = \"{workspace}\"\nbuild-args = { A = \"1\", B = \"2\" }\nstages = { compile = \"compile\" }\ntrust-all-branches = true\ndefault-branch = \"trunk\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("Dockerfile"), DOCKERFILE).unwrap();
    for (name, table) in [
        ("api", Some("")),
        (
            "worker",
            Some("build-args = { B = \"3\" }\nstages = { runtime = \"dev\" }\ntags = [\"edge\"]\ntrust-all-branches = false"),
        ),
        ("lib", None),
    ] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        let docker = table
            .map(|t| format!("\n[package.metadata.docker]\n{t}\n"))
            .unwrap_or_default();
        std::fs::write(
            dir.join(name).join("Cargo.toml"),
            format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[lib]\npath = \"lib.rs\"\n{docker}"),
        )
        .unwrap();
        std::fs::write(dir.join(name).join("lib.rs"), "").unwrap();
    }
    let packages = load(&dir, &[]).unwrap();
    let names: Vec<&str> = packages.iter().map(|p| p.config.package.as_str()).collect();
    assert_eq!(
        names,
        ["api", "worker"],
        "a member opts in with a table of its own"
    );
    let (api, worker) = (&packages[0].config, &packages[1].config);
    assert_eq!(api.image.as_str(), "127.0.0.1:5000/acme/api");
    assert_eq!(worker.image.as_str(), "127.0.0.1:5000/acme/worker");
    assert_eq!(
        api.dockerfile,
        dir.join("Dockerfile"),
        "`{{workspace}}` is the workspace root"
    );
    assert_eq!(api.context, dir);
    assert_eq!(api.build_args.get("B").map(String::as_str), Some("2"));
    assert_eq!(
        worker.build_args.get("B").map(String::as_str),
        Some("3"),
        "a member's keys win"
    );
    assert_eq!(
        worker.build_args.get("A").map(String::as_str),
        Some("1"),
        "tables merge key by key"
    );
    assert!(
        api.trust_all_branches && !worker.trust_all_branches,
        "`trust-all-branches` comes from the workspace, and a member's own wins"
    );
    assert_eq!(api.default_branch.as_deref(), Some("trunk"));
    let stages: Vec<&str> = worker.stages.keys().map(String::as_str).collect();
    assert_eq!(stages, ["compile", "runtime"]);
    assert_eq!(
        worker.tags.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        ["edge"]
    );

    // Merge first, validate after: a member's Dockerfile must have the inherited stages.
    std::fs::write(dir.join("api").join("Dockerfile"), "FROM scratch AS only\n").unwrap();
    let api_manifest = dir.join("api").join("Cargo.toml");
    let text = std::fs::read_to_string(&api_manifest).unwrap();
    std::fs::write(
        &api_manifest,
        text.replace(
            "[package.metadata.docker]\n",
            "[package.metadata.docker]\ndockerfile = \"Dockerfile\"\n",
        ),
    )
    .unwrap();
    let message = format!("{:#}", load(&dir, &[]).unwrap_err());
    assert!(
        message.contains("package `api`") && message.contains("key `stages.compile`"),
        "{message}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

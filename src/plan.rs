//! The plan: every command a build runs, as a pure value that prints as shell lines.
//!
//! Nothing here runs anything. The executor takes the steps in order (each step comes after
//! the steps it needs), and the dry run prints them.

use std::fmt::Write as _;
use std::path::Path;

use crate::cli::PullCache;
use crate::package::Package;
use crate::template::Vars;

/// How to plan.
#[derive(Debug, Clone)]
pub struct Options {
    /// The docker CLI to run.
    pub docker: String,
    /// Push cache tags and final tags.
    pub push: bool,
    /// When to pull cache images first.
    pub pull_cache: PullCache,
}

/// What a step does, with what the executor and the report need to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `docker pull` of a cache image; a missing image is "no cache yet", not an error.
    Pull {
        /// The image reference.
        image: String,
    },
    /// `docker build` of one stage.
    Build {
        /// The stage's label.
        stage: String,
        /// The cache image it is tagged as.
        cache_image: String,
        /// The cache images it reads, in order.
        cache_from: Vec<String>,
        /// The final tags (only on the final target's build).
        final_images: Vec<String>,
    },
    /// `docker push` of one tag.
    Push {
        /// The image reference.
        image: String,
        /// The step that built it.
        build: usize,
        /// A cache tag (true) or a final tag (false). A cache tag is left as it is when its
        /// build ran no step and the registry already holds it: re-pushing it would replace an
        /// image whose inline cache is complete with one whose cache BuildKit exported from
        /// cache hits, which misses steps on the next build (moby/buildkit#1981).
        cache: bool,
    },
}

/// One command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Its position in the plan.
    pub id: usize,
    /// The package it belongs to.
    pub package: String,
    /// What it does.
    pub action: Action,
    /// The program to run.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables to set.
    pub env: Vec<(String, String)>,
    /// The steps that must finish first.
    pub after: Vec<usize>,
}

/// Every step of a run, each after the steps it needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The steps, in an order that satisfies `after`.
    pub steps: Vec<Step>,
}

/// Plans the pulls, builds and pushes of `packages`, each with the values its tags are filled
/// with.
pub fn plan(packages: &[(Package, Vars)], options: &Options) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    for (package, vars) in packages {
        plan_package(&mut plan, package, vars, options)?;
    }
    Ok(plan)
}

fn plan_package(
    plan: &mut Plan,
    package: &Package,
    vars: &Vars,
    options: &Options,
) -> anyhow::Result<()> {
    let config = &package.config;
    let name = &config.package;
    let cache_ref = |stage: usize| -> anyhow::Result<String> {
        let tag = package.cached[&stage].render(vars).map_err(|e| {
            anyhow::anyhow!(
                "package `{name}`, stage `{}`: {e}",
                package.graph.label(stage)
            )
        })?;
        Ok(config.cache_image.with_tag(&tag))
    };
    let final_images = config
        .tags
        .iter()
        .map(|t| t.render(vars).map(|tag| config.image.with_tag(&tag)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("package `{name}`, key `tags`: {e}"))?;

    let mut pulls = Vec::new();
    if options.pull_cache == PullCache::Always {
        for &stage in package.cached.keys() {
            let image = cache_ref(stage)?;
            pulls.push(plan.push_step(
                name,
                Action::Pull {
                    image: image.clone(),
                },
                &options.docker,
                vec!["pull".into(), image],
                vec![],
                vec![],
            ));
        }
    }

    let mut built = std::collections::BTreeMap::new();
    for stage in package.build_order() {
        let label = package.graph.label(stage);
        let cache_image = cache_ref(stage)?;
        let cache_from = package
            .cache_sources(stage)
            .into_iter()
            .map(cache_ref)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let finals = if stage == package.target {
            final_images.clone()
        } else {
            Vec::new()
        };

        let mut args: Vec<String> = vec![
            "build".into(),
            "--progress=plain".into(),
            "--build-arg".into(),
            "BUILDKIT_INLINE_CACHE=1".into(),
        ];
        for (key, value) in &config.build_args {
            args.extend(["--build-arg".into(), format!("{key}={value}")]);
        }
        args.extend(["--target".into(), label.clone()]);
        for source in &cache_from {
            args.extend(["--cache-from".into(), source.clone()]);
        }
        for image in std::iter::once(&cache_image).chain(&finals) {
            args.extend(["--tag".into(), image.clone()]);
        }
        if let Some(network) = &config.network {
            args.extend(["--network".into(), network.clone()]);
        }
        if let Some(platform) = &config.platform {
            args.extend(["--platform".into(), platform.clone()]);
        }
        args.extend(["-f".into(), path(&config.dockerfile), path(&config.context)]);

        let mut after = pulls.clone();
        after.extend(
            package
                .cached_ancestors(stage)
                .iter()
                .filter_map(|s| built.get(s).copied()),
        );
        let action = Action::Build {
            stage: label,
            cache_image: cache_image.clone(),
            cache_from,
            final_images: finals.clone(),
        };
        let env = vec![("DOCKER_BUILDKIT".to_string(), "1".to_string())];
        let build = plan.push_step(name, action, &options.docker, args, env, after);
        built.insert(stage, build);

        if options.push {
            for (image, cache) in
                std::iter::once((cache_image, true)).chain(finals.into_iter().map(|f| (f, false)))
            {
                let action = Action::Push {
                    image: image.clone(),
                    build,
                    cache,
                };
                plan.push_step(
                    name,
                    action,
                    &options.docker,
                    vec!["push".into(), image],
                    vec![],
                    vec![build],
                );
            }
        }
    }
    Ok(())
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl Plan {
    fn push_step(
        &mut self,
        package: &str,
        action: Action,
        program: &str,
        args: Vec<String>,
        env: Vec<(String, String)>,
        after: Vec<usize>,
    ) -> usize {
        let id = self.steps.len();
        self.steps.push(Step {
            id,
            package: package.to_string(),
            action,
            program: program.to_string(),
            args,
            env,
            after,
        });
        id
    }

    /// The plan as shell lines that a user can copy and run.
    pub fn to_shell(&self) -> String {
        let mut out = String::new();
        let mut package = None;
        for step in &self.steps {
            if package != Some(&step.package) {
                let _ = writeln!(out, "# package `{}`", step.package);
                package = Some(&step.package);
            }
            out.push_str(&step.to_shell());
            out.push('\n');
        }
        out
    }
}

impl Step {
    /// The step as one shell line.
    pub fn to_shell(&self) -> String {
        let mut words: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        words.push(quote(&self.program));
        words.extend(self.args.iter().map(|a| quote(a)));
        let line = words.join(" ");
        match &self.action {
            Action::Pull { .. } => {
                format!("{line} || true  # a missing cache image means no cache yet")
            }
            Action::Push { cache: true, .. } => {
                format!(
                    "{line}  # left as it is when the build ran no step and the registry holds it"
                )
            }
            _ => line,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use expect_test::expect;

    use super::*;
    use crate::config::Config;
    use crate::reference::Repository;
    use crate::template::{Placeholder, Template};

    const SERVICE: &str = "\
FROM scratch AS toolchain
COPY busybox /bin/busybox
FROM toolchain AS compile
RUN make
FROM toolchain AS runtime
COPY --from=compile /out /out
";

    fn config(stages: &[(&str, &str)], tags: &[&str]) -> Config {
        Config {
            package: "service".into(),
            version: "0.3.1".into(),
            manifest_dir: "/src/service".into(),
            image: Repository::parse("registry.example/acme/service").unwrap(),
            dockerfile: "/src/service/Dockerfile".into(),
            context: "/src/service".into(),
            target: None,
            tags: tags
                .iter()
                .map(|t| Template::parse(t, Placeholder::FOR_TAGS).unwrap())
                .collect(),
            cache_image: Repository::parse("registry.example/acme/service").unwrap(),
            build_args: BTreeMap::new(),
            network: None,
            platform: None,
            stages: stages
                .iter()
                .map(|(s, t)| {
                    (
                        s.to_string(),
                        Template::parse(t, Placeholder::FOR_CACHE_TAGS).unwrap(),
                    )
                })
                .collect(),
        }
    }

    fn vars() -> Vars {
        Vars {
            version: "0.3.1".into(),
            git_sha: Some("0123456789abcdef".into()),
            branch: Some("feature/x".into()),
        }
    }

    fn shell(config: Config, dockerfile: &str, options: &Options) -> String {
        let package = Package::resolve(config, dockerfile).unwrap();
        plan(&[(package, vars())], options).unwrap().to_shell()
    }

    fn options(push: bool, pull_cache: PullCache) -> Options {
        Options {
            docker: "docker".into(),
            push,
            pull_cache,
        }
    }

    #[test]
    fn quotes_only_what_a_shell_would_misread() {
        assert_eq!(quote("--progress=plain"), "--progress=plain");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn the_seed_sequence_with_push() {
        let config = config(
            &[("compile", "compile"), ("runtime", "dev")],
            &["{version}", "latest"],
        );
        expect![[r#"
            # package `service`
            DOCKER_BUILDKIT=1 docker build --progress=plain --build-arg BUILDKIT_INLINE_CACHE=1 --target compile --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:compile -f /src/service/Dockerfile /src/service
            docker push registry.example/acme/service:compile  # left as it is when the build ran no step and the registry holds it
            DOCKER_BUILDKIT=1 docker build --progress=plain --build-arg BUILDKIT_INLINE_CACHE=1 --target runtime --cache-from registry.example/acme/service:dev --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:dev --tag registry.example/acme/service:0.3.1 --tag registry.example/acme/service:latest -f /src/service/Dockerfile /src/service
            docker push registry.example/acme/service:dev  # left as it is when the build ran no step and the registry holds it
            docker push registry.example/acme/service:0.3.1
            docker push registry.example/acme/service:latest
        "#]]
        .assert_eq(&shell(config, SERVICE, &options(true, PullCache::Auto)));
    }

    #[test]
    fn pulls_first_when_asked_and_pushes_only_when_asked() {
        let config = config(&[("compile", "compile-{branch}")], &["latest"]);
        expect![[r#"
            # package `service`
            docker pull registry.example/acme/service:compile-feature-x || true  # a missing cache image means no cache yet
            docker pull registry.example/acme/service:runtime || true  # a missing cache image means no cache yet
            DOCKER_BUILDKIT=1 docker build --progress=plain --build-arg BUILDKIT_INLINE_CACHE=1 --target compile --cache-from registry.example/acme/service:compile-feature-x --tag registry.example/acme/service:compile-feature-x -f /src/service/Dockerfile /src/service
            DOCKER_BUILDKIT=1 docker build --progress=plain --build-arg BUILDKIT_INLINE_CACHE=1 --target runtime --cache-from registry.example/acme/service:runtime --cache-from registry.example/acme/service:compile-feature-x --tag registry.example/acme/service:runtime --tag registry.example/acme/service:latest -f /src/service/Dockerfile /src/service
        "#]]
        .assert_eq(&shell(config, SERVICE, &options(false, PullCache::Always)));
    }

    #[test]
    fn args_network_platform_and_quoting() {
        let mut config = config(&[], &["{git_short_sha}"]);
        config.build_args.insert("NOTE".into(), "two words".into());
        config.network = Some("none".into());
        config.platform = Some("linux/amd64".into());
        config.target = Some("compile".into());
        config.context = "/src/my service".into();
        expect![[r#"
            # package `service`
            DOCKER_BUILDKIT=1 docker build --progress=plain --build-arg BUILDKIT_INLINE_CACHE=1 --build-arg 'NOTE=two words' --target compile --cache-from registry.example/acme/service:compile --tag registry.example/acme/service:compile --tag registry.example/acme/service:0123456 --network none --platform linux/amd64 -f /src/service/Dockerfile '/src/my service'
        "#]]
        .assert_eq(&shell(config, SERVICE, &options(false, PullCache::Never)));
    }

    #[test]
    fn steps_wait_for_the_stages_they_need() {
        let five = "\
FROM scratch AS base
FROM base AS compile-a
FROM base AS compile-b
FROM scratch AS tools
FROM base AS runtime
COPY --from=compile-a /a /a
COPY --from=compile-b /b /b
";
        let config = config(
            &[("base", "base"), ("compile-b", "b"), ("compile-a", "a")],
            &["latest"],
        );
        let package = Package::resolve(config, five).unwrap();
        let plan = plan(&[(package, vars())], &options(true, PullCache::Auto)).unwrap();
        let summary: Vec<String> = plan
            .steps
            .iter()
            .map(|s| {
                let what = match &s.action {
                    Action::Build { stage, .. } => format!("build {stage}"),
                    Action::Push { image, .. } => {
                        format!("push {}", image.rsplit(':').next().unwrap())
                    }
                    Action::Pull { image } => format!("pull {image}"),
                };
                format!("{} {what} after {:?}", s.id, s.after)
            })
            .collect();
        expect![[r#"
            [
                "0 build base after []",
                "1 push base after [0]",
                "2 build compile-a after [0]",
                "3 push a after [2]",
                "4 build compile-b after [0]",
                "5 push b after [4]",
                "6 build runtime after [0, 2, 4]",
                "7 push runtime after [6]",
                "8 push latest after [6]",
            ]
        "#]]
        .assert_debug_eq(&summary);
        // Every step comes after the steps it needs.
        for step in &plan.steps {
            assert!(step.after.iter().all(|&a| a < step.id));
        }
    }

    #[test]
    fn a_tag_that_cannot_be_filled_names_package_and_stage() {
        let config = config(&[("compile", "compile-{branch}")], &["latest"]);
        let package = Package::resolve(config, SERVICE).unwrap();
        let no_branch = Vars {
            branch: None,
            ..vars()
        };
        let error = plan(&[(package, no_branch)], &options(false, PullCache::Auto)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "package `service`, stage `compile`: `compile-{branch}` needs a branch name, and none could be found"
        );
    }
}

//! `docker check`: each package's configuration validated against its Dockerfile, and its
//! stage graph printed.

use crate::cli::CheckArgs;
use crate::config::CacheMode;
use crate::failure::Failure;
use crate::package::Package;
use crate::report::Reporter;
use crate::{git, graph, plan};

use super::load::load;

/// Runs `docker check`.
pub(super) fn check(args: &CheckArgs, reporter: &Reporter) -> anyhow::Result<()> {
    let default_branch = git::spawn_default_branch(&super::git_dir(&args.select));
    let packages = load(&args.select).map_err(Failure::config)?;
    let default_branch = default_branch.wait();
    for package in packages {
        for warning in package.graph.lint_stage_names() {
            reporter.warning(&format!(
                "package `{}`: `{}`: {warning}",
                package.config.package,
                package.config.dockerfile.display()
            ));
        }
        for mount in &package.mounts {
            if let Some(warning) = mount.secret_warning(&package.graph) {
                reporter.warning(&warning);
            }
        }
        let text = match args.graph {
            Some(format) => graph::render(&package, format),
            None => describe(&package) + &plan::describe_boundary(&package, &default_branch),
        };
        reporter.stdout(&format!("{text}\n"));
    }
    Ok(())
}

/// A package's stage graph as text, with the cached stages and the final target marked.
pub fn describe(package: &Package) -> String {
    let graph = &package.graph;
    let mut out = format!(
        "package `{}`: {}\n",
        package.config.package,
        package.config.dockerfile.display()
    );
    for stage in &graph.stages {
        let needs: Vec<String> = stage.deps.iter().map(|&d| graph.name(d)).collect();
        let mut marks = Vec::new();
        if package.config.cache == CacheMode::Inline {
            if let Some(tag) = package.cached.get(&stage.index) {
                marks.push(format!("cached as `{}:{tag}`", package.config.cache_image));
            }
        }
        if stage.index == package.target {
            marks.push("final target".to_string());
        }
        out.push_str(&format!(
            "  {}{}{}\n",
            graph.name(stage.index),
            if needs.is_empty() {
                String::new()
            } else {
                format!(" <- {}", needs.join(", "))
            },
            if marks.is_empty() {
                String::new()
            } else {
                format!("  ({})", marks.join("; "))
            },
        ));
    }
    if package.config.cache == CacheMode::Registry {
        out.push_str(&format!(
            "  registry cache: `{}:{}`\n",
            package.config.cache_image, package.config.cache_tag
        ));
    }
    for mount in &package.mounts {
        out.push_str(&format!(
            "  {}\n",
            mount.describe(graph, package.config.cache_image.as_str())
        ));
    }
    out
}

//! Finds the packages and runs a command over them.
use crate::Docker;

/// Runs a parsed `docker` command.
pub fn run(_docker: Docker) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}

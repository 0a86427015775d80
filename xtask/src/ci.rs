//! `cargo xtask ci`: everything CI checks, in the order it checks it.

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::test::{self, TestArgs};

/// Formatting, lints, then the tests (which install the engines' tools first).
pub fn run(args: &TestArgs) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(test::root());
    let cargo = test::cargo();
    cmd!(sh, "{cargo} fmt --all -- --check")
        .run()
        .context("formatting differs from `cargo fmt`; run `cargo fmt --all`")?;
    cmd!(
        sh,
        "{cargo} clippy --workspace --all-targets -- -D warnings"
    )
    .run()
    .context("clippy found problems")?;
    test::run(args)
}

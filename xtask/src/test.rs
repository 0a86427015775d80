//! `cargo xtask test`: the test command, with real engines.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use xshell::{cmd, Shell};

/// Arguments of `test` and `ci`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Passed on to `cargo test` (after `--workspace`, unless they select packages with `-p`),
    /// e.g. `-p testbed -- --nocapture`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<String>,
}

/// The workspace root.
pub fn root() -> PathBuf {
    let xtask = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().map(PathBuf::from).unwrap_or(xtask)
}

/// The cargo that runs us, or `cargo`.
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// Installs what the tests need, then runs `cargo test`.
pub fn run(args: &TestArgs) -> Result<()> {
    testbed::install::install_all()?;
    let sh = Shell::new()?;
    sh.change_dir(root());
    let cargo = cargo();
    let args = &args.args;
    let selects = args
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a.starts_with("-p") || a.starts_with("--package"));
    let workspace: &[&str] = if selects { &[] } else { &["--workspace"] };
    // Stream cargo's output and add up its `test result:` lines, so that the run ends with one
    // line that counts every test binary's tests (the last binary is often a doctest run of 0).
    let mut command =
        std::process::Command::from(cmd!(sh, "{cargo} test {workspace...} {args...}"));
    // Tests that find no engine pass in libtest's count; each also writes a line here, and is
    // counted as skipped instead.
    let skips_file = root().join("target").join("xtask-test-skips");
    let _ = std::fs::remove_file(&skips_file);
    command
        .env(testbed::SKIPS_FILE, &skips_file)
        .stdout(std::process::Stdio::piped());
    let mut child = command.spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut totals = Totals::default();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        totals.add(&line);
    }
    let status = child.wait()?;
    let skips = std::fs::read_to_string(&skips_file).unwrap_or_default();
    let skipped: Vec<&str> = skips.lines().collect();
    totals.skip(skipped.len() as u64);
    println!("{}", totals.summary(skipped.first().copied()));
    anyhow::ensure!(status.success(), "`cargo test` failed ({status})");
    anyhow::ensure!(totals.passed > 0, "`cargo test` ran no test");
    Ok(())
}

/// The sum of libtest's `test result: ok. N passed; M failed; K ignored; ...` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// Tests that returned early without an engine (libtest counts them as passed).
    skipped: u64,
}

impl Totals {
    /// `n` tests that libtest counted as passed returned early without an engine.
    fn skip(&mut self, n: u64) {
        let n = n.min(self.passed);
        self.passed -= n;
        self.skipped += n;
    }

    /// The run's last line; `first_skip` is one skipped test's line, which says why.
    fn summary(&self, first_skip: Option<&str>) -> String {
        let mut line = format!(
            "tests: {} passed, {} failed, {} skipped",
            self.passed,
            self.failed,
            self.ignored + self.skipped
        );
        if let Some(first) = first_skip.filter(|_| self.skipped > 0) {
            line.push_str(&format!(
                " ({} without an engine: not end to end; the first: {first})",
                self.skipped
            ));
        }
        line
    }

    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Totals;

    #[test]
    fn adds_up_libtest_summaries() {
        let mut totals = Totals::default();
        totals.add("test result: ok. 55 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.96s");
        totals.add("test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1s");
        totals.add("running 5 tests");
        assert_eq!(
            totals,
            Totals {
                passed: 58,
                failed: 2,
                ignored: 1,
                skipped: 0,
            }
        );
        assert_eq!(
            totals.summary(None),
            "tests: 58 passed, 2 failed, 1 skipped"
        );
        // Tests that found no engine passed for libtest; they count as skipped.
        totals.skip(8);
        assert_eq!(
            totals.summary(Some("skipped: caching::x: not running as root")),
            "tests: 50 passed, 2 failed, 9 skipped (8 without an engine: not end to end; the first: skipped: caching::x: not running as root)"
        );
    }
}

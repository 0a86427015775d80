//! Why a run failed, as an exit code: 1 a build or push failed, 2 bad configuration or usage,
//! 3 the engine or registry could not be used (preflight), 128 + N a signal N ended it.

use std::fmt;

/// An error with the exit code it calls for.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    /// A build or push failed.
    pub fn build(error: anyhow::Error) -> anyhow::Error {
        Failure { code: 1, error }.into()
    }
    /// The configuration or the command line is wrong.
    pub fn config(error: anyhow::Error) -> anyhow::Error {
        Failure { code: 2, error }.into()
    }
    /// The engine or the registry cannot be used.
    pub fn engine(error: anyhow::Error) -> anyhow::Error {
        Failure { code: 3, error }.into()
    }
    /// A signal ended the run.
    pub fn signal(signal: i32) -> anyhow::Error {
        Failure {
            code: u8::try_from(128 + signal).unwrap_or(u8::MAX),
            error: anyhow::anyhow!("interrupted by signal {signal}"),
        }
        .into()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Failure {}

/// The exit code for an error that [`crate::Docker::run`] returned: 1 a build or push failed,
/// 2 bad configuration or usage, 3 the engine or registry could not be used, 128 + N a signal
/// N ended the run; 1 for an error that does not say.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    error.downcast_ref::<Failure>().map_or(1, |f| f.code)
}

/// How a program that ran [`crate::Docker::run`] ends: on an error, `error: ...` with its
/// whole chain on stderr, and the error's [`exit_code`].
pub fn finish(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(exit_code(&error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_by_kind() {
        assert_eq!(exit_code(&Failure::build(anyhow::anyhow!("x"))), 1);
        assert_eq!(exit_code(&Failure::config(anyhow::anyhow!("x"))), 2);
        assert_eq!(exit_code(&Failure::engine(anyhow::anyhow!("x"))), 3);
        assert_eq!(exit_code(&Failure::signal(2)), 130);
        assert_eq!(exit_code(&anyhow::anyhow!("x")), 1);
        let e = Failure::config(anyhow::anyhow!("inner").context("outer"));
        assert_eq!(e.to_string(), "outer: inner");
    }
}

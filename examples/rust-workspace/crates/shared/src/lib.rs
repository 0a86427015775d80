//! What the api and the worker share: the job they exchange, as JSON.

use serde::{Deserialize, Serialize};

/// One unit of work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Which job.
    pub id: u64,
    /// What to do.
    pub task: String,
}

impl Job {
    /// The job as one line of JSON.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a job serializes")
    }

    /// A job read from one line of JSON.
    pub fn from_line(line: &str) -> Result<Job, serde_json::Error> {
        serde_json::from_str(line)
    }
}

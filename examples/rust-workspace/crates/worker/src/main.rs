//! The worker: reads a job as JSON from its first argument and says what it does.

fn main() {
    let line = std::env::args().nth(1).unwrap_or_else(|| r#"{"id":0,"task":"nothing"}"#.into());
    match shared::Job::from_line(&line) {
        Ok(job) => println!("worker: job {} does {}", job.id, job.task),
        Err(e) => {
            eprintln!("worker: not a job: {e}");
            std::process::exit(2);
        }
    }
}

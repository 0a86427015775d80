//! The api: turns its arguments into a job and prints it as the worker reads it.

fn main() {
    let task = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let job = shared::Job { id: 1, task };
    println!("api: {}", job.to_line());
}

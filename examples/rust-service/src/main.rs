fn main() {
    println!("hello from a real Rust service");
}

fn main() {
    println!("hello from the heavy example");
}

fn main() {
    println!("hello from the five-stage example");
}

fn main() {
    let data = std::fs::read(std::env::args().nth(1).unwrap()).unwrap();
    virtpulse::fuzzing::spool(&data);
    println!("ok");
}

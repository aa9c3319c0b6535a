fn main() {
    afl::fuzz!(|data: &[u8]| tollgate_fuzz::jws(data));
}

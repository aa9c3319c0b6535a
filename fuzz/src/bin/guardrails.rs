fn main() {
    afl::fuzz!(|data: &[u8]| tollgate_fuzz::guardrails(data));
}

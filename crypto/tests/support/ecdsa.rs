//! ECDSA's malleability, computed independently of the code under test (the crate's own tests
//! and the end-to-end tests include this file): `(r, s)` and `(r, n - s)` verify alike for the
//! same input and key (n: the curve's order, SEC 2). Signatures are `r || s`, big-endian.

/// The order `n` of the curve whose signatures have `half`-byte halves (P-256, P-384).
pub fn order(half: usize) -> Vec<u8> {
    let hex = if half == 32 {
        "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551"
    } else {
        "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973"
    };
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

/// `a - b` of equal-width big-endian numbers, `a >= b`.
pub fn minus(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = a.to_vec();
    let mut borrow = 0i16;
    for i in (0..a.len()).rev() {
        let d = i16::from(a[i]) - i16::from(b[i]) - borrow;
        borrow = i16::from(d < 0);
        out[i] = (d + 256 * borrow) as u8;
    }
    out
}

/// `r || s` as `r || n - s`: the other signature ECDSA accepts for the same input and key.
pub fn twin(signature: &[u8]) -> Vec<u8> {
    let half = signature.len() / 2;
    [&signature[..half], &minus(&order(half), &signature[half..])].concat()
}

/// Whether `s` is above `n / 2`, i.e. `2s > n` (n is odd).
pub fn high_s(signature: &[u8]) -> bool {
    let half = signature.len() / 2;
    let mut doubled = vec![0u8; half + 1];
    let mut carry = 0u16;
    for i in (0..half).rev() {
        let v = u16::from(signature[half + i]) * 2 + carry;
        doubled[i + 1] = v as u8;
        carry = v >> 8;
    }
    doubled[0] = carry as u8;
    doubled > [vec![0u8], order(half)].concat()
}

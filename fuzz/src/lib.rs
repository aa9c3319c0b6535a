//! The fuzz targets' bodies: each takes any bytes, calls one entry point that faces untrusted
//! input, and panics (a crash for the fuzzer) if a promise of SPEC or SECURITY.md breaks. The
//! same promises are property-tested in `host/tests/properties.rs`.

use std::path::Path;

use tollgate::http::review::TokenReview;
use tollgate::observe::scrub::{MIN_SCRUB_LEN, Scrubber};
use tollgate::plugins::manifest::Manifest;
use tollgate::plugins::sandbox::{Grant, UserInfo};
use tollgate::policy::guardrails::{GuardrailSpec, Guardrails, identity_checks};
use tollgate::policy::values::GrantLimits;
use tollgate::tenants::scan::TenantsFile;

/// Any request body: a review or a clear error; a parsed review never prints its token.
pub fn token_review(data: &[u8]) {
    if let Ok(review) = TokenReview::parse(data) {
        let shown = format!("{review:?}");
        // Debug shows the token's length, never its content: a review that differs only in its
        // token's bytes prints the same. (The request may itself repeat the token elsewhere, in
        // an audience: that copy is the caller's, not a leak.)
        let other = TokenReview {
            api_version: review.api_version,
            token: "\0".repeat(review.token.len()),
            audiences: review.audiences.clone(),
        };
        assert_eq!(shown, format!("{other:?}"), "Debug printed something of the token");
    }
}

/// Any manifest text: a manifest or an error, never a panic.
pub fn manifest(data: &[u8]) {
    let _ = Manifest::parse(&String::from_utf8_lossy(data));
}

/// Any tenants file: parsed or refused; whatever parses yields guardrails for any tenant.
pub fn tenants_file(data: &[u8]) {
    if let Ok(file) = TenantsFile::parse(&String::from_utf8_lossy(data), Path::new("tenants.toml")) {
        for tenant in ["", "acme", "kubeadm"] {
            let _ = file.guardrails(tenant);
        }
    }
}

/// A grant as a plugin could return it (one field per line), judged by the guardrails of a
/// tenant: what passes carries no unlisted `system:` name, the tenant's prefix, no reserved
/// identity and not the token.
pub fn guardrails(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let token = lines.next().unwrap_or_default().to_owned();
    let mut user = UserInfo {
        username: lines.next().unwrap_or_default().into(),
        uid: String::new(),
        groups: vec![],
        extra: vec![],
    };
    let mut audiences = vec![];
    for line in lines {
        match line.split_once('=') {
            Some(("uid", v)) => user.uid = v.into(),
            Some(("aud", v)) => audiences.push(v.to_owned()),
            Some((k, v)) if k.starts_with("x-") => user.extra.push((k[2..].to_owned(), vec![v.to_owned()])),
            _ => user.groups.push(line.to_owned()),
        }
    }
    let grant = Grant { user, audiences, expires_at: None };
    let _ = GrantLimits::DEFAULT.check(&grant);
    let scrubber = Scrubber::new(&token);
    if identity_checks(&grant, &scrubber).is_ok() {
        let u = &grant.user;
        assert!(!u.username.is_empty());
        for reserved in ["system:anonymous", "system:unauthenticated"] {
            assert!(u.username != reserved && !u.groups.iter().any(|g| g == reserved));
        }
        assert!(!u.extra.iter().any(|(k, _)| k.to_ascii_lowercase().starts_with("authentication.kubernetes.io/")));
        if token.len() >= MIN_SCRUB_LEN {
            assert!(!u.username.contains(&token) && !u.groups.iter().any(|g| g.contains(&token)));
        }
    }
    let listed = flags & 1 == 1;
    let tenant = ["acme", "kubeadm", "a"][usize::from(flags >> 1) % 3];
    let spec = GuardrailSpec {
        allow_system: if listed { vec!["system:masters".into()] } else { vec![] },
        ..GuardrailSpec::default()
    };
    if Guardrails::from_spec(tenant, &spec).check(&grant).is_ok() {
        let u = &grant.user;
        let prefix = format!("tollgate:{tenant}:");
        for name in std::iter::once(&u.username).chain(&u.groups) {
            let masters = listed && name == "system:masters";
            assert!(!name.starts_with("system:") || masters, "{name}");
            assert!(name.starts_with(&prefix) || masters, "{name}");
        }
    }
}

/// Any text a plugin hands the host: the token (8 bytes or more) never comes out, nor a control
/// character, and the length is capped.
pub fn scrubber(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return };
    let split = usize::from(n % 32).min(rest.len());
    let (token, text) = rest.split_at(split);
    let (token, text) = (String::from_utf8_lossy(token), String::from_utf8_lossy(text));
    let max = usize::from(n) * 2;
    let clean = Scrubber::new(&token).clean(&text, max);
    // The host's own markers and escapes are made of `[`, `\` and `…`: a token that holds them
    // can be rebuilt from an escape (a bearer token is base64, hex or a JWT).
    let plain = !token.chars().any(|c| c.is_control() || matches!(c, '[' | '\\' | '…'));
    if token.len() >= MIN_SCRUB_LEN && plain {
        assert!(!clean.contains(token.as_ref()), "{clean:?}");
    }
    assert!(!clean.chars().any(char::is_control), "{clean:?}");
    assert!(clean.len() <= max + "…[18446744073709551615 bytes cut]".len(), "{clean:?}");
}

/// A token and a JWKS (split at the first NUL) through `tollgate:policy/crypto`'s verifier: an
/// answer, never a panic; a refusal never repeats the token; and what verifies (a seed's real
/// token and key) stops verifying when one character of its signature changes.
pub fn jws(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (token, jwks) = text.split_once('\0').unwrap_or((&text, ""));
    let all: Vec<String> = tollgate_crypto::Alg::ALL.iter().map(|a| a.name().to_owned()).collect();
    if let Ok(keys) = tollgate_crypto::KeySet::parse(jwks) {
        let verify_jws = tollgate_crypto::verify_jws;
        match verify_jws(token, &keys, &all) {
            Ok(_) => {
                let (input, signature) = token.rsplit_once('.').expect("a verified JWS has three parts");
                let first = if signature.starts_with('A') { "B" } else { "A" };
                let tampered = format!("{input}.{first}{}", signature.get(1..).unwrap_or_default());
                assert!(verify_jws(&tampered, &keys, &all).is_err(), "a changed signature still verified");
            }
            Err(e) if token.len() >= MIN_SCRUB_LEN => {
                let shown = e.to_string();
                assert!(!shown.contains(token), "an error repeats the token: {shown}");
            }
            Err(_) => {}
        }
    }
}

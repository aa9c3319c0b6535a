//! Issue 8: what verifying a JWT in the sandbox costs. The `oidc-jwt` component with a warm key
//! cache (the JWKS already in its `tollgate:policy/kv`, so a review is: read the cache, parse the
//! JWKS, verify the signature, check the claims) next to the very same code (`jwt-verify`) run
//! natively, RS256 and ES256, in fresh and in warm instances (one plugin call each) — side by side in one run, each
//! round timing a batch of every variant in turn.
//!
//! `cargo bench -p tollgate --bench oidc` (part of `make bench`). Writes
//! `$TOLLGATE_BENCH_OUT/oidc.json` for the report.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use jwt_verify::{Jwt, KeySet, Rules, check_claims, string_list};
use serde_json::{Value, json};
use tollgate::plugin::{Loader, PluginDefaults, PluginSource};
use tollgate::sandbox::{Decision, PluginEnv, Review, Sandbox, SandboxConfig};
use tollgate::tenant::{Generation, Snapshot, TenantsFile, load_generation};
use tollgate_bench::{fixtures, stats};

/// The shipped manifest's vectors: real RS256 and ES256 tokens, their JWKS, and the fixed clock
/// under which they are valid.
struct Fixture {
    tokens: [(String, &'static str); 2],
    jwks: String,
    issuer: String,
    now: u64,
}

fn fixture() -> Result<Fixture> {
    let path = fixtures::repo_root().join("plugins/oidc-jwt/oidc-jwt.toml");
    let manifest: toml::Table = toml::from_str(&std::fs::read_to_string(&path)?).context("oidc-jwt.toml")?;
    let tests = manifest["test"].as_array().context("no vectors")?;
    let vector = |name: &str| tests.iter().find(|t| t["name"].as_str().is_some_and(|n| n.starts_with(name)));
    let rs = vector("RS256").context("the RS256 vector")?;
    let es = vector("ES256").context("the ES256 vector")?;
    let text = |v: &toml::Value| v.as_str().map(str::to_owned).context("a string");
    Ok(Fixture {
        tokens: [(text(&rs["token"])?, "RS256"), (text(&es["token"])?, "ES256")],
        jwks: text(&rs["config"]["jwks"])?,
        issuer: text(&rs["config"]["issuer"])?,
        now: rs["now"].as_integer().context("now")? as u64,
    })
}

/// A generation of just `oidc-jwt`, its cache holding the JWKS and its clock at the vectors'.
fn generation(loader: &Loader, wasm: &Path, f: &Fixture, reuse: bool) -> Result<Generation> {
    let manifest = format!(
        "allowed_outbound_hosts = [\"{issuer}\"]\n[config]\nissuer = \"{issuer}\"\naudiences = \"kubernetes\"\n\
         username_prefix = \"oidc:\"\ngroups_claim = \"groups\"\ngroups_prefix = \"oidc:\"\n{}",
        if reuse { "[instances]\nreuse = true\n" } else { "" },
        issuer = f.issuer,
    );
    let source = PluginSource {
        name: "10-oidc".into(),
        wasm_path: wasm.to_path_buf(),
        folder: std::sync::Arc::new(tollgate::confine::Folder::open(std::path::Path::new("."))?),
        wasm: std::fs::read(wasm)?.into(),
        manifest: Some((PathBuf::from("10-oidc.toml"), manifest)),
    };
    let mut generation = load_generation(
        loader,
        "",
        &Snapshot { sources: vec![source], content: String::new() },
        TenantsFile::default().guardrails(""),
        1,
    )?;
    let plugin = Arc::get_mut(&mut generation.plugins[0]).context("a fresh generation")?;
    plugin.env.kv.set("jwks", f.jwks.as_bytes().to_vec(), 3600).map_err(anyhow::Error::msg)?;
    plugin.env = Arc::new(PluginEnv { clock: Some(f.now), ..PluginEnv::clone(&plugin.env) });
    Ok(generation)
}

/// One call of the plugin (a fresh or warm instance, the call, the host's checks of its answer).
/// Not `chain::evaluate`: the vectors' tokens are valid only under their fixed clock, and the
/// chain's final-grant check rightly refuses a grant that expired by the real one.
fn in_sandbox(sandbox: &Sandbox, generation: &Generation, token: &str) -> Result<Duration> {
    let plugin = &generation.plugins[0];
    let review = Review {
        token: token.into(),
        audiences: vec![],
        tenant: String::new(),
        current: None,
        request_id: "0123456789abcdef".into(),
        client: None,
        attributes: Vec::new(),
    };
    let started = Instant::now();
    let (decision, _) = tollgate_bench::block_on(sandbox.call(
        &plugin.code,
        &plugin.env,
        &review.request_id,
        &review,
        token,
        Instant::now() + Duration::from_secs(5),
    ));
    let took = started.elapsed();
    match decision {
        Ok(Decision::Allow(grant)) => ensure!(grant.user.username.starts_with("oidc:"), "{}", grant.user.username),
        other => anyhow::bail!("not allowed: {other:?}"),
    }
    Ok(took)
}

/// What the guest does per review, natively: the cached JWKS parsed, the signature verified,
/// the claims checked, the user and groups named.
fn native(f: &Fixture, token: &str) -> Result<Duration> {
    let started = Instant::now();
    let jwt = Jwt::parse(token).context("a JWT")?;
    let keys = KeySet::parse(std::hint::black_box(f.jwks.as_bytes())).map_err(anyhow::Error::msg)?;
    let key = keys.find(jwt.kid.as_deref(), &jwt.alg).context("its key")?;
    jwt.verify(key).map_err(anyhow::Error::msg)?;
    let audiences = ["kubernetes".to_owned()];
    let rules = Rules { issuer: &f.issuer, audiences: &audiences, skew: 60, now: f.now };
    check_claims(&jwt.claims, &rules).map_err(anyhow::Error::msg)?;
    let user = format!("oidc:{}", jwt.claims.get("sub").and_then(Value::as_str).context("sub")?);
    let groups: Vec<String> = string_list(&jwt.claims, "groups")
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .map(|g| format!("oidc:{g}"))
        .collect();
    std::hint::black_box((user, groups));
    Ok(started.elapsed())
}

/// The signature check alone, keys parsed beforehand: what a host crypto import could speed up.
fn native_verify_only(keys: &KeySet, token: &str) -> Result<Duration> {
    let jwt = Jwt::parse(token).context("a JWT")?;
    let key = keys.find(jwt.kid.as_deref(), &jwt.alg).context("its key")?;
    let started = Instant::now();
    jwt.verify(key).map_err(anyhow::Error::msg)?;
    Ok(started.elapsed())
}

/// The same signature check with ring, the host's own crypto (rustls): what a host import
/// `verify(alg, key, signing-input, signature)` would cost, keys decoded beforehand.
struct RingKeys {
    rsa: (Vec<u8>, Vec<u8>),
    ec: Vec<u8>,
}

fn ring_keys(jwks: &str) -> Result<RingKeys> {
    use base64::Engine as _;
    let doc: Value = serde_json::from_str(jwks)?;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(v.as_str().unwrap_or_default());
    let keys = doc["keys"].as_array().context("keys")?;
    let rsa = keys.iter().find(|k| k["kty"] == "RSA").context("an RSA key")?;
    let ec = keys.iter().find(|k| k["kty"] == "EC").context("an EC key")?;
    let mut point = vec![4u8];
    point.extend(b64(&ec["x"])?);
    point.extend(b64(&ec["y"])?);
    Ok(RingKeys { rsa: (b64(&rsa["n"])?, b64(&rsa["e"])?), ec: point })
}

fn ring_verify_only(keys: &RingKeys, token: &str) -> Result<Duration> {
    use base64::Engine as _;
    let (input, signature) = token.rsplit_once('.').context("a JWS")?;
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature)?;
    let alg = Jwt::parse(token).context("a JWT")?.alg;
    let started = Instant::now();
    let ok = match alg.as_str() {
        "RS256" => ring::signature::RsaPublicKeyComponents { n: &keys.rsa.0, e: &keys.rsa.1 }
            .verify(&ring::signature::RSA_PKCS1_2048_8192_SHA256, input.as_bytes(), &signature)
            .is_ok(),
        _ => ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &keys.ec)
            .verify(input.as_bytes(), &signature)
            .is_ok(),
    };
    let took = started.elapsed();
    ensure!(ok, "ring refused a good {alg} signature");
    Ok(took)
}

fn main() -> Result<()> {
    let f = fixture()?;
    let wasm = fixtures::guest("oidc_jwt")?;
    let sandbox = Arc::new(Sandbox::new(&SandboxConfig::default())?);
    let loader = Loader::new(sandbox.clone(), PluginDefaults::default(), None);
    let fresh = generation(&loader, &wasm, &f, false)?;
    let warm = generation(&loader, &wasm, &f, true)?;
    let rounds: usize = std::env::var("TOLLGATE_BENCH_OIDC_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(10);
    let batch = 30;
    let keys = KeySet::parse(f.jwks.as_bytes()).map_err(anyhow::Error::msg)?;
    let ring = ring_keys(&f.jwks)?;
    // [alg][fresh, warm, native, native verify only, ring verify only] samples in microseconds.
    let mut samples: Vec<[Vec<f64>; 5]> = vec![Default::default(), Default::default()];
    for round in 0..rounds {
        for (i, (token, _)) in f.tokens.iter().enumerate() {
            for _ in 0..batch {
                samples[i][0].push(in_sandbox(&sandbox, &fresh, token)?.as_secs_f64() * 1e6);
                samples[i][1].push(in_sandbox(&sandbox, &warm, token)?.as_secs_f64() * 1e6);
                samples[i][2].push(native(&f, token)?.as_secs_f64() * 1e6);
                samples[i][3].push(native_verify_only(&keys, token)?.as_secs_f64() * 1e6);
                samples[i][4].push(ring_verify_only(&ring, token)?.as_secs_f64() * 1e6);
            }
        }
        eprintln!("oidc: round {}/{rounds}", round + 1);
    }
    let rows: Vec<Value> = f
        .tokens
        .iter()
        .zip(&mut samples)
        .map(|((_, alg), s)| {
            let [fresh, warm, native, verify, ring] = s.each_mut().map(|v| stats::summarize(v));
            json!({
                "alg": alg,
                "fresh_p50_us": fresh.0, "fresh_p99_us": fresh.1,
                "warm_p50_us": warm.0, "warm_p99_us": warm.1,
                "native_p50_us": native.0, "native_p99_us": native.1,
                "native_verify_p50_us": verify.0,
                "ring_verify_p50_us": ring.0,
                "fresh_over_native": fresh.0 / native.0,
                "warm_over_native": warm.0 / native.0,
                "reviews": s[0].len(),
            })
        })
        .collect();
    for r in &rows {
        eprintln!("{r}");
    }
    if let Some(out) = std::env::var_os("TOLLGATE_BENCH_OUT") {
        std::fs::write(
            Path::new(&out).join("oidc.json"),
            serde_json::to_vec_pretty(&json!({ "rounds": rounds, "batch": batch, "rows": rows }))?,
        )?;
    }
    Ok(())
}

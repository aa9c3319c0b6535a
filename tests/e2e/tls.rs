//! TLS, HTTP/2 and mTLS (SPEC §5, §6): what kube-apiserver's webhook client does.

use std::time::Duration;

use serde_json::json;
use tollgate_tests::*;

fn allow(username: &str) -> String {
    probe_manifest("", "allow", &format!("username = \"{username}\""))
}

#[test]
fn http2_and_http1_both_negotiate_and_answer_over_tls() {
    let pki = Pki::new("main");
    let server_cert = pki.server("server");
    let dir = PluginDir::new();
    dir.probe("10-a", &allow("alice"));
    let mut server = Server::start(dir.path(), &tls_args(&server_cert, &[]));
    assert!(server.tls);
    for (alpn, version) in
        [(&["h2", "http/1.1"][..], reqwest::Version::HTTP_2), (&["http/1.1"][..], reqwest::Version::HTTP_11)]
    {
        let client = tls_client(&pki.ca_pem, None, alpn);
        let body = json!({"apiVersion": V1, "kind": "TokenReview", "spec": {"token": "tok-12345678"}}).to_string();
        let response = client
            .post(server.url("/authenticate"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .unwrap();
        assert_eq!(response.version(), version, "ALPN {alpn:?}");
        assert_eq!(Answer::from(response).review_status(V1)["user"]["username"], "alice");
    }
    // Many concurrent streams on one HTTP/2 connection.
    server.set_client(tls_client(&pki.ca_pem, None, &["h2"]));
    std::thread::scope(|s| {
        for _ in 0..32 {
            s.spawn(|| {
                for version in VERSIONS {
                    let status =
                        server.review_at("/authenticate", version, Some("tok-12345678"), &[]).review_status(version);
                    assert_eq!(status["authenticated"], true);
                }
            });
        }
    });
}

#[test]
fn with_a_client_ca_only_trusted_client_certificates_get_an_answer() {
    let pki = Pki::new("main");
    let other = Pki::new("other");
    let server_cert = pki.server("server");
    let apiserver = pki.client("apiserver", "kube-apiserver", Some("system"));
    let acme_apiserver = pki.client("acme", "kube-apiserver-acme", None);
    let stranger = other.client("stranger", "kube-apiserver", None);

    let dir = PluginDir::new();
    dir.probe("10-echo", &probe_manifest("", "echo", "username = \"alice\""));
    dir.add_in("acme", "10-a", built::PROBE, &allow("tollgate:acme:alice"));
    let tenants = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tenants.path(), "[tenant.acme]\nclients = [\"CN=kube-apiserver-acme\"]\n").unwrap();
    let ca = pki.ca_path.to_str().unwrap().to_string();
    let probe_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let probe_addr = format!("127.0.0.1:{probe_port}");
    let extra = ["--client-ca", &ca, "--tenants", tenants.path().to_str().unwrap(), "--probe-listen", &probe_addr];
    let mut server = Server::start(dir.path(), &tls_args(&server_cert, &extra));

    // No certificate, or one from another CA: the handshake fails, no plugin ever runs.
    for (who, client) in [
        ("no certificate", tls_client(&pki.ca_pem, None, &["h2"])),
        ("another CA", tls_client(&pki.ca_pem, Some(&stranger), &["h2"])),
    ] {
        server.set_client(client);
        let body = json!({"apiVersion": V1, "kind": "TokenReview", "spec": {"token": "tok-12345678"}}).to_string();
        let result = server
            .client()
            .post(server.url("/authenticate"))
            .header("Content-Type", "application/json")
            .body(body)
            .send();
        assert!(result.is_err(), "{who}: {:?}", result.map(|r| r.status()));
    }

    // A trusted client: answered, and plugins see its verified subject.
    server.set_client(tls_client(&pki.ca_pem, Some(&apiserver), &["h2", "http/1.1"]));
    let status = server.review("tok-12345678").review_status(V1);
    // RFC 4514 order: the certificate's last RDN first (rcgen wrote CN, then O).
    assert_eq!(status["user"]["extra"]["seen/client"], json!(["O=system,CN=kube-apiserver"]));
    // The tenant restricted to kube-apiserver-acme refuses this (trusted) client...
    server.review_at("/authenticate/acme", V1, Some("tok-12345678"), &[]).assert_status_object(403, "Forbidden");
    // ...and answers its own.
    server.set_client(tls_client(&pki.ca_pem, Some(&acme_apiserver), &["h2"]));
    assert_eq!(
        granted_username(&server.review_at("/authenticate/acme", V1, Some("tok-12345678"), &[])).as_deref(),
        Some("tollgate:acme:alice")
    );
    let lines = server.wait_audit("audit lines", |l| l.len() >= 2);
    assert_eq!(lines[0]["caller"], "O=system,CN=kube-apiserver");

    // Probes need no client certificate, on their own plain listener; reviews are not there.
    install_crypto_provider();
    let plain = reqwest::blocking::Client::new();
    for path in ["/healthz", "/readyz", "/metrics", "/status"] {
        assert_eq!(plain.get(format!("http://{probe_addr}{path}")).send().unwrap().status(), 200, "{path}");
    }
    // Plain HTTP on the TLS port: no answer, a refused handshake.
    assert!(plain.get(format!("http://{}/healthz", server.addr)).send().is_err());
    let metrics = plain.get(format!("http://{probe_addr}/metrics")).send().unwrap().text().unwrap();
    // Refused handshakes are counted by reason and logged (issue 16), the reason first.
    for reason in ["no-client-certificate", "untrusted-certificate", "protocol"] {
        assert!(
            metrics.contains(&format!("tollgate_tls_handshake_failures_total{{reason=\"{reason}\"}} 1")),
            "{metrics}"
        );
        assert!(
            server.logs.text().lines().any(|l| l.contains("TLS handshake refused") && l.contains(reason)),
            "{reason}"
        );
    }
    let review = plain
        .post(format!("http://{probe_addr}/authenticate"))
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(review.status(), 404);
}

/// `clients` entries are RFC 4514 names compared attribute by attribute with the certificate's
/// subject as it is encoded, never as text: a CN that spells out a longer subject names nobody
/// else, and a bare `CN=` entry compares the certificate's one CN, exactly.
#[test]
fn a_clients_entry_matches_the_subject_attribute_by_attribute_not_as_text() {
    use rcgen::DnType::{CommonName as Cn, OrganizationName as O};
    let pki = Pki::new("main");
    let server_cert = pki.server("server");
    // The genuine caller: O=acme-control-plane, then CN=apiserver (RFC 4514: the CN first).
    let genuine = pki.client_named("genuine", &[(O, "acme-control-plane"), (Cn, "apiserver")]);
    // A CN that reads as the whole subject.
    let crafted = pki.client("crafted", "apiserver,O=acme-control-plane", None);
    let plus = pki.client("plus", "apiserver+O=acme-control-plane", None);
    // The same attributes in the other order: another name.
    let reversed = pki.client_named("reversed", &[(Cn, "apiserver"), (O, "acme-control-plane")]);
    let lone = pki.client("lone", "apiserver", None);

    let dir = PluginDir::new();
    dir.probe("10-echo", &probe_manifest("", "echo", "username = \"alice\""));
    dir.add_in("acme", "10-a", built::PROBE, &allow("tollgate:acme:alice"));
    dir.add_in("bare", "10-a", built::PROBE, &allow("tollgate:bare:alice"));
    let tenants = tenants_file(
        "[tenant.acme]\nclients = [\"CN=apiserver,O=acme-control-plane\"]\n\
         [tenant.bare]\nclients = [\"cn=apiserver\"]\n",
    );
    let ca = pki.ca_path.to_str().unwrap().to_string();
    let extra = ["--client-ca", &ca, "--tenants", tenants.path().to_str().unwrap()];
    let mut server = Server::start(dir.path(), &tls_args(&server_cert, &extra));

    for (who, leaf, acme, bare, seen) in [
        ("crafted CN", &crafted, false, false, "CN=apiserver\\,O=acme-control-plane"),
        ("CN with +", &plus, false, false, "CN=apiserver\\+O=acme-control-plane"),
        ("genuine", &genuine, true, true, "CN=apiserver,O=acme-control-plane"),
        ("reversed", &reversed, false, true, "O=acme-control-plane,CN=apiserver"),
        ("CN alone", &lone, false, true, "CN=apiserver"),
    ] {
        server.set_client(tls_client(&pki.ca_pem, Some(leaf), &["h2"]));
        for (tenant, admitted) in [("acme", acme), ("bare", bare)] {
            let answer = server.review_at(&format!("/authenticate/{tenant}"), V1, Some("tok-12345678"), &[]);
            let got = (answer.status, granted_username(&answer));
            let want = if admitted { (200, Some(format!("tollgate:{tenant}:alice"))) } else { (403, None) };
            assert_eq!(got, want, "{who} at {tenant}: {}", answer.body);
            if !admitted {
                answer.assert_status_object(403, "Forbidden");
            }
        }
        // Plugins see the verified subject in RFC 4514 form, escaped.
        let status = server.review("tok-12345678").review_status(V1);
        assert_eq!(status["user"]["extra"]["seen/client"], json!([seen]), "{who}");
    }
    drop(server);

    // An entry that is not an RFC 4514 name stops the start, saying which and why.
    for (entry, says) in [
        ("CN=apiserver, O=acme-control-plane", "not an RFC 4514"),
        ("CN=a;O=b", "not an RFC 4514"),
        ("apiserver", "not an RFC 4514"),
        ("XX=apiserver", "unknown attribute type"),
        ("", "not an RFC 4514"),
    ] {
        let tenants = tenants_file(&format!("[tenant.acme]\nclients = [{entry:?}]\n"));
        let started =
            Server::try_start(dir.path(), &tls_args(&server_cert, &["--tenants", tenants.path().to_str().unwrap()]));
        let (_, logs) = started.err().unwrap_or_else(|| panic!("started with clients = [{entry:?}]"));
        assert!(logs.contains(says) && logs.contains("clients"), "{entry:?}: {logs}");
    }
}

#[test]
fn a_rotated_certificate_is_served_to_new_connections_without_a_restart() {
    let first = Pki::new("first");
    let second = Pki::new("second");
    let cert = first.server("server");
    let dir = PluginDir::new();
    dir.probe("10-a", &allow("alice"));
    // The files cert-manager would replace: a Secret volume's ..data swap.
    let secret = tempfile::tempdir().unwrap();
    let mut volume = KubeVolume::new(secret.path().join("tls"));
    volume.publish(&[("tls.crt", cert.cert_pem.clone().into_bytes()), ("tls.key", cert.key_pem.clone().into_bytes())]);
    let (crt, key) = (volume.dir.join("tls.crt"), volume.dir.join("tls.key"));
    let mut server =
        Server::start(dir.path(), &["--tls-cert", crt.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    server.set_client(tls_client(&first.ca_pem, None, &["h2"]));
    assert_eq!(granted_username(&server.review("tok-12345678")).as_deref(), Some("alice"));

    let rotated = second.server("server");
    volume.publish(&[
        ("tls.crt", rotated.cert_pem.clone().into_bytes()),
        ("tls.key", rotated.key_pem.clone().into_bytes()),
    ]);
    // New connections get the new certificate (a client trusting only the new CA succeeds).
    wait_for("the rotated certificate", Duration::from_secs(30), || {
        let client = tls_client(&second.ca_pem, None, &["h2"]);
        let body = json!({"apiVersion": V1, "kind": "TokenReview", "spec": {"token": "tok-12345678"}}).to_string();
        client.post(server.url("/authenticate")).header("Content-Type", "application/json").body(body).send().ok()
    });
    let old = tls_client(&first.ca_pem, None, &["h2"]);
    assert!(old.get(server.url("/healthz")).send().is_err(), "the old certificate is no longer served");
    assert!(server.logs.text().contains("TLS certificate reloaded"));
}

#[test]
fn the_example_openssl_script_makes_certificates_tollgate_and_a_webhook_client_accept() {
    let out = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(built::ROOT).join("examples/apiserver/make-certs.sh");
    let status = std::process::Command::new("bash").arg(&script).arg(out.path()).status().unwrap();
    assert!(status.success(), "make-certs.sh failed");
    let read = |f: &str| std::fs::read_to_string(out.path().join(f)).unwrap();
    let dir = PluginDir::new();
    dir.probe("10-a", &allow("alice"));
    let path = |f: &str| out.path().join(f).to_str().unwrap().to_string();
    let (crt, key, ca) = (path("tollgate.crt"), path("tollgate.key"), path("ca.crt"));
    let mut server = Server::start(dir.path(), &["--tls-cert", &crt, "--tls-key", &key, "--client-ca", &ca]);
    let client = Leaf {
        cert_pem: read("kube-apiserver.crt"),
        key_pem: read("kube-apiserver.key"),
        cert_path: out.path().join("kube-apiserver.crt"),
        key_path: out.path().join("kube-apiserver.key"),
    };
    server.set_client(tls_client(&read("ca.crt"), Some(&client), &["h2", "http/1.1"]));
    assert_eq!(granted_username(&server.review("tok-12345678")).as_deref(), Some("alice"));
    let lines = server.wait_audit("audit", |l| !l.is_empty());
    assert_eq!(lines[0]["caller"], "CN=kube-apiserver,O=tollgate-webhook-clients");
}

#[test]
fn an_early_answer_over_http2_is_clean_even_for_a_streamed_body() {
    let pki = Pki::new("main");
    let server_cert = pki.server("server");
    let dir = PluginDir::new();
    dir.probe("10-a", &allow("alice"));
    let mut server = Server::start(dir.path(), &tls_args(&server_cert, &[]));
    server.set_client(tls_client(&pki.ca_pem, None, &["h2"]));
    let body = json!({"apiVersion": V1, "kind": "TokenReview", "spec": {"token": "tok-12345678"}}).to_string();
    for path in ["/authenticate/ghost", "/authenticate"] {
        // A body of unknown length, sent as a stream (as `curl --data-binary @-` does).
        let streamed = reqwest::blocking::Body::new(std::io::Cursor::new(body.clone().into_bytes()));
        let response =
            server.client().post(server.url(path)).header("Content-Type", "application/json").body(streamed).send();
        let answer = Answer::from(response.unwrap_or_else(|e| panic!("{path}: {e}")));
        assert_eq!(answer.status, if path.ends_with("ghost") { 404 } else { 200 }, "{}", answer.body);
    }
}

//! /metrics behind TLS and basic auth from an exporter-toolkit web config
//! file: the right credentials and certificates are let in, everything else
//! is turned away. Requests are made with curl, as an operator would check.

mod common;

use std::process::Command;
use std::time::Duration;

use common::agent::{bin, free_port};
use common::tls::Pki;
use common::wait_for;

struct Secured {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Secured {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(web_config: &str) -> Secured {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(&web, web_config).unwrap();
    let port = free_port();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[libvirt]\nuri = \"test:///default\"\n[sinks.prometheus]\nlisten = \"127.0.0.1:{port}\"\nweb_config_file = \"{}\"\n",
            web.display()
        ),
    )
    .unwrap();
    let child = Command::new(bin()).arg("--config").arg(&cfg).spawn().unwrap();
    wait_for(Duration::from_secs(20), "the agent to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
    Secured { port, child, _dir: dir }
}

/// curl's HTTP status (0 when the connection or handshake failed).
fn curl(args: &[&str]) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

fn curl_body(args: &[&str]) -> String {
    let out = Command::new("curl").args(["-s", "--max-time", "10"]).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tls_and_basic_auth_let_in_only_the_right_clients() {
    let pki = Pki::new();
    let hash = bcrypt::hash("s3cret", 6).unwrap();
    let agent = start(&format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  prometheus: {hash}\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n",
        pki.path("server.pem").display(),
        pki.path("server.key").display()
    ));
    let url = format!("https://localhost:{}/metrics", agent.port);
    let ca = pki.ca();
    let ca = ca.to_str().unwrap();
    wait_for(Duration::from_secs(20), "an answer over TLS", || {
        (curl(&["--cacert", ca, "-u", "prometheus:s3cret", &url]) == 200).then_some(())
    });
    let body = curl_body(&["--cacert", ca, "-u", "prometheus:s3cret", &url]);
    assert!(body.contains("libvirt_up"), "{body}");
    assert_eq!(curl(&["--cacert", ca, "-u", "prometheus:wrong", &url]), 401, "wrong password");
    assert_eq!(curl(&["--cacert", ca, "-u", "nobody:s3cret", &url]), 401, "unknown user");
    assert_eq!(curl(&["--cacert", ca, &url]), 401, "no credentials");
    assert_eq!(curl(&["--cacert", ca, &format!("https://localhost:{}/healthz", agent.port)]), 401, "every endpoint");
    // Without trusting the CA, or in plain HTTP, no answer at all.
    assert_eq!(curl(&["-u", "prometheus:s3cret", &url]), 0, "unknown CA");
    assert_eq!(
        curl(&["-u", "prometheus:s3cret", &format!("http://localhost:{}/metrics", agent.port)]),
        0,
        "plain HTTP"
    );
    let headers = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "--cacert", ca, "-u", "prometheus:s3cret", &url])
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&headers.stdout).to_lowercase();
    assert!(headers.contains("x-frame-options: deny"), "{headers}");
    // The agent still serves after the failed handshakes.
    assert_eq!(curl(&["--cacert", ca, "-u", "prometheus:s3cret", &url]), 200);
}

#[test]
fn client_certificates_are_required_when_configured() {
    let pki = Pki::new();
    let agent = start(&format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n  min_version: TLS13\n",
        pki.path("server.pem").display(),
        pki.path("server.key").display(),
        pki.ca().display()
    ));
    let url = format!("https://127.0.0.1:{}/metrics", agent.port);
    let ca = pki.ca();
    let ca = ca.to_str().unwrap();
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    wait_for(Duration::from_secs(20), "an answer with a client certificate", || {
        (curl(&["--cacert", ca, "--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap(), &url]) == 200)
            .then_some(())
    });
    assert_eq!(curl(&["--cacert", ca, &url]), 0, "no client certificate");
    // A certificate from another CA is refused too.
    let other = Pki::new();
    let (ocert, okey) = (other.path("client.pem"), other.path("client.key"));
    assert_eq!(curl(&["--cacert", ca, "--cert", ocert.to_str().unwrap(), "--key", okey.to_str().unwrap(), &url]), 0);
    assert_eq!(
        curl(&[
            "--cacert",
            ca,
            "--tls-max",
            "1.2",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            &url
        ]),
        0,
        "TLS 1.2 below min_version"
    );
}

#[test]
fn a_bad_web_config_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text, needle) in [
        ("hash.yml", "basic_auth_users:\n  alice: notahash\n", "basic_auth_users.alice"),
        ("typo.yml", "tls_server_conf:\n  cert_file: x\n", "tls_server_conf"),
        ("files.yml", "tls_server_config:\n  cert_file: /nonexistent/c.pem\n  key_file: /nonexistent/k.pem\n", "/nonexistent/c.pem"),
        ("auth.yml", "tls_server_config:\n  cert_file: /etc/hostname\n  key_file: /etc/hostname\n  client_auth_type: Sometimes\n", ""),
    ] {
        let web = dir.path().join(name);
        std::fs::write(&web, text).unwrap();
        let cfg = dir.path().join("config.toml");
        std::fs::write(&cfg, format!("[sinks.prometheus]\nweb_config_file = \"{}\"\n", web.display())).unwrap();
        let out = Command::new(bin()).args(["--check-config", "--config"]).arg(&cfg).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{name}: {err}");
        assert!(err.contains("sinks.prometheus.web_config_file") && err.contains(needle), "{name}: {err}");
    }
}

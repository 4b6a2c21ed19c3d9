//! /metrics behind TLS and basic auth from an exporter-toolkit web config
//! file: the right credentials and certificates are let in, everything else
//! is turned away. Requests are made with curl, as an operator would check.
//! The certificate, key, client CA and the file itself are replaced on disk
//! while the agent runs, as cert-manager and certbot do, and the same
//! process serves the new ones.

mod common;

use std::process::Command;
use std::time::Duration;

use std::path::{Path, PathBuf};

use common::agent::{bin, free_port};
use common::exposition::{parse, Scrape};
use common::tls::{serial_and_subject, served, Pki};
use common::wait_for;

struct Secured {
    port: u16,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Secured {
    /// The web config file the agent reads (`start` wrote it).
    fn web_config(&self) -> PathBuf {
        self.dir.path().join("web.yml")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The agent is the process started at first, still running.
    fn assert_not_restarted(&mut self, pid: u32) {
        assert_eq!(self.child.id(), pid);
        assert!(self.child.try_wait().unwrap().is_none(), "the agent exited:\n{}", self.log());
    }
}

impl Drop for Secured {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- agent log ----\n{}\n---- end of agent log ----", self.log());
        }
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
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let child = Command::new(bin()).arg("--config").arg(&cfg).stderr(log).spawn().unwrap();
    wait_for(Duration::from_secs(20), "the agent to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
    Secured { port, child, dir }
}

/// Replaces `to` as cert-manager and certbot do: the new content written
/// to a file beside it, then renamed over it.
fn replace(to: &Path, content: &[u8]) {
    let tmp = to.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

fn copy(from: &Path, to: &Path) {
    replace(to, &std::fs::read(from).unwrap());
}

/// `serial_and_subject` of a certificate file.
fn identity(pem: &Path) -> String {
    serial_and_subject(&std::fs::read(pem).unwrap()).unwrap()
}

/// The agent's /metrics with curl's `args` (credentials, CA, client
/// certificate); an empty scrape when it does not answer.
fn scrape(args: &[&str]) -> Scrape {
    parse(&curl_body(args))
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

/// The certificate and key, replaced on disk by renames, are served by the
/// next handshakes of the same process; half a certificate, or one whose
/// key is not beside it, is refused (counted, logged with the file) while
/// the previous one goes on being served.
#[test]
fn a_rotated_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let pki = Pki::new();
    pki.server_cert("next", "localhost-next");
    let tls = tempfile::tempdir().unwrap();
    let (cert, key) = (tls.path().join("tls.crt"), tls.path().join("tls.key"));
    copy(&pki.path("server.pem"), &cert);
    copy(&pki.path("server.key"), &key);
    let hash = bcrypt::hash("s3cret", 6).unwrap();
    let mut agent = start(&format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  prometheus: {hash}\n",
        cert.display(),
        key.display()
    ));
    let pid = agent.child.id();
    let url = format!("https://localhost:{}/metrics", agent.port);
    let ca = pki.ca();
    let ca = ca.to_str().unwrap();
    let metrics = || scrape(&["--cacert", ca, "-u", "prometheus:s3cret", &url]);
    let tls_reloads = |result: &str| {
        metrics().value("virtpulse_web_tls_reloads_total", &[("listener", "prometheus"), ("result", result)])
    };
    wait_for(Duration::from_secs(20), "an answer over TLS", || tls_reloads("ok").filter(|v| *v == 0.0));
    let (first, next) = (identity(&pki.path("server.pem")), identity(&pki.path("next.pem")));
    assert_ne!(first, next);
    assert_eq!(served(agent.port).as_deref(), Some(first.as_str()));
    let expiry = |s: &Scrape| {
        s.value("virtpulse_web_tls_certificate_expiry_timestamp_seconds", &[("listener", "prometheus")]).unwrap()
    };
    let first_expiry = expiry(&metrics());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(
        first_expiry > now && first_expiry < now + 2.0 * 86_400.0,
        "{first_expiry}: the 1-day certificate's notAfter"
    );

    // Half-written: refused, the first certificate still served.
    let text = std::fs::read(pki.path("next.pem")).unwrap();
    replace(&cert, &text[..text.len() / 2]);
    wait_for(Duration::from_secs(20), "the half-written certificate to be counted as a failed reload", || {
        (tls_reloads("error")? >= 1.0).then_some(())
    });
    assert_eq!(served(agent.port).as_deref(), Some(first.as_str()));
    let m = metrics();
    assert_eq!(m.value("virtpulse_web_config_last_reload_successful", &[("listener", "prometheus")]), Some(0.0));
    assert_eq!(expiry(&m), first_expiry);
    let log = agent.log();
    assert!(
        log.lines().any(|l| l.contains("WARN") && l.contains("was not loaded") && l.contains(&*cert.to_string_lossy())),
        "no warning naming {}:\n{log}",
        cert.display()
    );

    // The whole new certificate, but with the old key beside it: refused too.
    let errors = tls_reloads("error").unwrap();
    copy(&pki.path("next.pem"), &cert);
    wait_for(Duration::from_secs(20), "the certificate without its key to be refused", || {
        (tls_reloads("error")? > errors).then_some(())
    });
    assert_eq!(served(agent.port).as_deref(), Some(first.as_str()));
    assert!(agent.log().contains("do not make a usable certificate"), "{}", agent.log());

    // Its key arrives: the next handshakes get the new certificate.
    copy(&pki.path("next.key"), &key);
    wait_for(Duration::from_secs(20), "the rotated certificate to be served", || {
        (served(agent.port)? == next).then_some(())
    });
    let m = metrics();
    assert!(
        m.value("virtpulse_web_tls_reloads_total", &[("listener", "prometheus"), ("result", "ok")]).unwrap() >= 1.0
    );
    assert_eq!(m.value("virtpulse_web_config_last_reload_successful", &[("listener", "prometheus")]), Some(1.0));
    assert!(expiry(&m) >= first_expiry);
    // curl, trusting the CA, checks the new certificate end to end.
    assert_eq!(curl(&["--cacert", ca, "-u", "prometheus:s3cret", &url]), 200);
    agent.assert_not_restarted(pid);
}

/// A new client CA, renamed over the old one, lets in the clients it
/// signed and shuts out those of the old CA, without a restart.
#[test]
fn a_rotated_client_ca_lets_in_the_new_clients_and_shuts_out_the_old() {
    let (old, new) = (Pki::new(), Pki::new());
    let tls = tempfile::tempdir().unwrap();
    let clients_ca = tls.path().join("clients-ca.crt");
    copy(&old.ca(), &clients_ca);
    let mut agent = start(&format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
        old.path("server.pem").display(),
        old.path("server.key").display(),
        clients_ca.display()
    ));
    let pid = agent.child.id();
    let url = format!("https://127.0.0.1:{}/metrics", agent.port);
    let server_ca = old.ca();
    let server_ca = server_ca.to_str().unwrap();
    let with = |pki: &Pki| {
        let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
        curl(&["--cacert", server_ca, "--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap(), &url])
    };
    wait_for(Duration::from_secs(20), "an answer to the old CA's client", || (with(&old) == 200).then_some(()));
    assert_eq!(with(&new), 0, "the new CA is not trusted yet");

    copy(&new.ca(), &clients_ca);
    wait_for(Duration::from_secs(20), "the new CA's client to be let in", || (with(&new) == 200).then_some(()));
    assert_eq!(with(&old), 0, "the old CA's client is refused after the rotation");
    let (cert, key) = (new.path("client.pem"), new.path("client.key"));
    let m = scrape(&["--cacert", server_ca, "--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap(), &url]);
    assert!(
        m.value("virtpulse_web_tls_reloads_total", &[("listener", "prometheus"), ("result", "ok")]).unwrap() >= 1.0
    );
    agent.assert_not_restarted(pid);
}

/// Users edited in the web config take effect without a restart; a broken
/// version, or one that asks this plain HTTP listener for TLS, is refused
/// (counted, logged with the key and the reason) and the users in force
/// stay.
#[test]
fn basic_auth_users_change_without_a_restart() {
    let users = |pass: &str| format!("basic_auth_users:\n  prometheus: {}\n", bcrypt::hash(pass, 6).unwrap());
    let mut agent = start(&users("old"));
    let pid = agent.child.id();
    let url = format!("http://127.0.0.1:{}/metrics", agent.port);
    wait_for(Duration::from_secs(20), "an answer with the first password", || {
        (curl(&["-u", "prometheus:old", &url]) == 200).then_some(())
    });

    replace(
        &agent.web_config(),
        format!("{}http_server_config:\n  headers:\n    X-Frame-Options: deny\n", users("new")).as_bytes(),
    );
    wait_for(Duration::from_secs(20), "the new password to be let in", || {
        (curl(&["-u", "prometheus:new", &url]) == 200).then_some(())
    });
    assert_eq!(curl(&["-u", "prometheus:old", &url]), 401, "the old password, accepted a moment ago");
    let headers =
        Command::new("curl").args(["-s", "-D", "-", "-o", "/dev/null", "-u", "prometheus:new", &url]).output().unwrap();
    assert!(String::from_utf8_lossy(&headers.stdout).to_lowercase().contains("x-frame-options: deny"));
    let reloads = |result: &str| {
        scrape(&["-u", "prometheus:new", &url])
            .value("virtpulse_web_config_reloads_total", &[("listener", "prometheus"), ("result", result)])
    };
    assert!(reloads("ok").unwrap() >= 1.0);
    assert_eq!(reloads("error"), Some(0.0));

    // Not a bcrypt hash: refused, the new password still the one.
    replace(&agent.web_config(), b"basic_auth_users:\n  prometheus: plaintext\n");
    wait_for(Duration::from_secs(20), "the broken web config to be counted", || {
        (reloads("error")? >= 1.0).then_some(())
    });
    assert_eq!(curl(&["-u", "prometheus:new", &url]), 200);
    assert_eq!(curl(&["-u", "prometheus:plaintext", &url]), 401);
    let log = agent.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("basic_auth_users.prometheus")
            && l.contains("not a bcrypt hash")),
        "no warning naming the key:\n{log}"
    );

    // TLS on a plain listener: refused until a restart, and said so.
    let pki = Pki::new();
    replace(
        &agent.web_config(),
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n{}",
            pki.path("server.pem").display(),
            pki.path("server.key").display(),
            users("tls")
        )
        .as_bytes(),
    );
    wait_for(Duration::from_secs(20), "the switch to TLS to be refused", || (reloads("error")? >= 2.0).then_some(()));
    assert_eq!(curl(&["-u", "prometheus:new", &url]), 200, "still plain HTTP, still the users in force");
    assert!(agent.log().contains("fixed at start"), "{}", agent.log());
    agent.assert_not_restarted(pid);
}

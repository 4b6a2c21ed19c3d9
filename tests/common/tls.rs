//! A throwaway PKI made with openssl: a CA, a server certificate for
//! localhost/127.0.0.1 and a client certificate, all signed by the CA.

use std::path::{Path, PathBuf};
use std::process::Command;

const SERVER_EXT: &str = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n";

/// `serial=...` and `subject=...` of the first PEM certificate in `pem`
/// (`openssl x509 -noout -serial -subject`); `None` if there is none.
pub fn serial_and_subject(pem: &[u8]) -> Option<String> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-subject"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl");
    let _ = child.stdin.take().unwrap().write_all(pem);
    let out = child.wait_with_output().unwrap();
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The certificate a TLS server on 127.0.0.1:`port` serves for
/// `localhost`, as `serial_and_subject` tells it, by a fresh
/// `openssl s_client` (no session to resume).
pub fn served(port: u16) -> Option<String> {
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    serial_and_subject(&out.stdout)
}

pub struct Pki {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn signed(dir: &Path, name: &str, subject: &str, ext: &str) {
    let (key, csr, cert, cnf) =
        (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.cnf"));
    openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject]);
    std::fs::write(dir.join(&cnf), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "1",
            "-extfile",
            &cnf,
        ],
    );
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=virtpulse test CA",
            ],
        );
        signed(d, "server", "/CN=localhost", SERVER_EXT);
        signed(d, "client", "/CN=prometheus", "extendedKeyUsage=clientAuth\n");
        Pki { dir }
    }

    /// Another server certificate for localhost/127.0.0.1 from the same CA,
    /// with a key of its own: `<name>.pem`, `<name>.key`.
    pub fn server_cert(&self, name: &str, cn: &str) {
        signed(self.dir.path(), name, &format!("/CN={cn}"), SERVER_EXT);
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }
}

//! The TLS half of the web config: what `tls_server_config` asks for
//! (`TlsSpec`), the rustls server built from it and the files it names,
//! and the expiry of the certificate served.
//!
//! A change of the certificate, key or client CA builds a whole new
//! `rustls::ServerConfig` rather than swapping the certificate inside one
//! (a `ResolvesServerCert` over a mutable slot) and the roots inside a
//! verifier: a verifier's `root_hint_subjects` hands out a borrow that a
//! swappable CA cannot give, and a new config starts with an empty session
//! cache, so a client whose certificate only the old CA signed cannot
//! resume its way past the new one. Every handshake takes the config of
//! the moment; one built from a failed read never replaces the last good.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::files::{read_bounded, stamp, Stamp};
use super::TlsServerConfig;

/// Client certificates, as the five exporter-toolkit `client_auth_type`s
/// map onto rustls (which always verifies a certificate it is given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientAuth {
    /// `NoClientCert`.
    None,
    /// `RequestClientCert`, `VerifyClientCertIfGiven`: verified if sent.
    Optional,
    /// `RequireAnyClientCert`, `RequireAndVerifyClientCert`.
    Required,
}

/// `tls_server_config`, checked. Two equal specs build the same server
/// from the same files, so a web config edit that leaves the section alone
/// does not rebuild it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TlsSpec {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    pub client_ca_file: Option<PathBuf>,
    /// Lowest and highest TLS version (12 or 13).
    pub min_version: u8,
    pub max_version: u8,
}

/// TLS versions as an order: 12 or 13.
fn tls_version(v: &str) -> Result<u8, String> {
    match v {
        "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        "TLS10" | "TLS11" => Err(format!("{v} is not supported (too old); use TLS12 or TLS13")),
        other => Err(format!("unknown TLS version {other:?}; use TLS12 or TLS13")),
    }
}

impl TlsSpec {
    /// Checks the section (no file is read here). Errors name the key.
    pub(super) fn from_config(t: &TlsServerConfig) -> Result<TlsSpec, String> {
        if t.cipher_suites.is_some() || t.curve_preferences.is_some() || t.prefer_server_cipher_suites.is_some() {
            tracing::warn!("web config: cipher_suites, curve_preferences and prefer_server_cipher_suites are ignored (rustls uses its modern defaults)");
        }
        let min_version =
            tls_version(t.min_version.as_deref().unwrap_or("TLS12")).map_err(|e| format!("min_version: {e}"))?;
        let max_version =
            tls_version(t.max_version.as_deref().unwrap_or("TLS13")).map_err(|e| format!("max_version: {e}"))?;
        if min_version > max_version {
            return Err("min_version is above max_version".into());
        }
        let auth = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
        let client_auth = match auth {
            "NoClientCert" => ClientAuth::None,
            "RequestClientCert" | "VerifyClientCertIfGiven" => ClientAuth::Optional,
            "RequireAnyClientCert" | "RequireAndVerifyClientCert" => ClientAuth::Required,
            other => {
                return Err(format!(
                    "client_auth_type: unknown value {other:?}; use NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
                ))
            }
        };
        if client_auth != ClientAuth::None && t.client_ca_file.is_none() {
            return Err(format!(
                "client_ca_file: client_auth_type {auth} needs client_ca_file (the CA that signs client certificates)"
            ));
        }
        Ok(TlsSpec {
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
            client_auth,
            client_ca_file: if client_auth == ClientAuth::None { None } else { t.client_ca_file.clone() },
            min_version,
            max_version,
        })
    }

    /// The files the server is built from.
    pub(super) fn files(&self) -> Vec<&Path> {
        let mut f = vec![self.cert_file.as_path(), self.key_file.as_path()];
        f.extend(self.client_ca_file.as_deref());
        f
    }

    /// Their stamps now, in the order of `files`.
    pub(super) fn stamps(&self) -> Vec<Option<Stamp>> {
        self.files().into_iter().map(stamp).collect()
    }
}

/// A rustls server built from the files, and what it serves.
pub(super) struct Built {
    pub config: Arc<rustls::ServerConfig>,
    /// When the served (leaf) certificate expires, in Unix seconds.
    pub not_after: Option<i64>,
}

/// A PEM error in words an operator acts on: the parser's own quotes
/// markers and lines as byte arrays.
fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "a PEM block does not end (no \"-----END {}-----\" line): cut short, or still being written",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => {
            format!("malformed PEM header line {:?}", String::from_utf8_lossy(line))
        }
        other => other.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_bounded(path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    let certs = certs.map_err(|e| format!("{}: not a PEM certificate file: {}", path.display(), pem_problem(&e)))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Reads the files and builds the server. Errors name the file and what is
/// wrong with it (unreadable, not PEM, a key that is not the certificate's).
pub(super) fn build(spec: &TlsSpec) -> Result<Built, String> {
    let certs = read_certs(&spec.cert_file)?;
    let key_bytes = read_bounded(&spec.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!("{} holds no PEM private key", spec.key_file.display()),
        e => format!("cannot read a PEM private key from {}: {}", spec.key_file.display(), pem_problem(&e)),
    })?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(n, _)| (spec.min_version..=spec.max_version).contains(n))
            .map(|(_, v)| v)
            .collect();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let builder = match (&spec.client_auth, &spec.client_ca_file) {
        (ClientAuth::Optional | ClientAuth::Required, Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: unusable CA certificate: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier =
                if spec.client_auth == ClientAuth::Optional { verifier.allow_unauthenticated() } else { verifier };
            builder.with_client_cert_verifier(
                verifier.build().map_err(|e| format!("{}: client certificate verifier: {e}", ca.display()))?,
            )
        }
        _ => builder.with_no_client_auth(),
    };
    let not_after = certs.first().and_then(|c| not_after(c));
    // with_single_cert checks that the key is the certificate's: a key
    // renamed into place before its certificate (or the other way round)
    // fails here instead of failing every handshake.
    let mut cfg = builder.with_single_cert(certs, key).map_err(|e| {
        format!("{} and {} do not make a usable certificate: {e}", spec.cert_file.display(), spec.key_file.display())
    })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Built { config: Arc::new(cfg), not_after })
}

/// One DER element with tag `tag` at the start of `input`: its content and
/// what follows it. `None` on any other tag, a length this walk does not
/// take (indefinite, over 4 bytes) or one running past the input.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = rest.get(..n)?.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b));
        (len, rest.get(n..)?)
    };
    Some((rest.get(..len)?, rest.get(len..)?))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An X.509 `Time` (RFC 5280 4.1.2.5: UTCTime `YYMMDDHHMMSSZ`, years
/// 1950-2049, or GeneralizedTime `YYYYMMDDHHMMSSZ`) as Unix seconds.
fn x509_time(tag: u8, t: &[u8]) -> Option<i64> {
    let digits = t.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |s: &[u8]| s.iter().fold(0i64, |a, d| a * 10 + i64::from(d - b'0'));
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy = num(&digits[..2]);
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        (0x18, 14) => (num(&digits[..4]), &digits[4..]),
        _ => return None,
    };
    let f = |i: usize| num(&rest[i * 2..i * 2 + 2]);
    let (month, day, hour, minute, second) = (f(0), f(1), f(2), f(3), f(4));
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// The notAfter of a DER certificate, in Unix seconds: a walk over the
/// fields before it (RFC 5280 4.1: version, serial, signature algorithm,
/// issuer, validity). One date does not need an X.509 parser crate; rustls'
/// own parser (webpki) does not expose it.
pub(super) fn not_after(der: &[u8]) -> Option<i64> {
    let (cert, _) = element(der, 0x30)?;
    let (tbs, _) = element(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = element(rest, 0xa0)?.1;
    }
    rest = element(rest, 0x02)?.1; // serialNumber
    rest = element(rest, 0x30)?.1; // signature
    rest = element(rest, 0x30)?.1; // issuer
    let (validity, _) = element(rest, 0x30)?;
    let not_before_tag = *validity.first()?;
    let after = element(validity, not_before_tag)?.1;
    let tag = *after.first()?;
    let (t, _) = element(after, tag)?;
    x509_time(tag, t)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::process::Command;

    pub(crate) fn openssl(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A self-signed certificate and its key, `<name>.pem` and `<name>.key`,
    /// valid for `days`. EC keys: quick to make.
    pub(crate) fn self_signed(dir: &Path, name: &str, cn: &str, days: u32) {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                &days.to_string(),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
    }

    fn der(dir: &Path, name: &str) -> Vec<u8> {
        let certs = read_certs(&dir.join(format!("{name}.pem"))).unwrap();
        certs[0].to_vec()
    }

    /// The notAfter as openssl reads it, through GNU date.
    fn openssl_not_after(dir: &Path, name: &str) -> i64 {
        let end = openssl(dir, &["x509", "-noout", "-enddate", "-in", &format!("{name}.pem")]);
        let end = end.trim().strip_prefix("notAfter=").unwrap().to_string();
        let out = Command::new("date").args(["-u", "-d", &end, "+%s"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    #[test]
    fn not_after_reads_utc_and_generalized_times_as_openssl_does() {
        let dir = tempfile::tempdir().unwrap();
        // 1 day: a UTCTime; 10000 days reach past 2049: a GeneralizedTime.
        for (name, days) in [("soon", 1), ("far", 10_000)] {
            self_signed(dir.path(), name, "localhost", days);
            assert_eq!(not_after(&der(dir.path(), name)), Some(openssl_not_after(dir.path(), name)), "{name}");
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1) * 86_400, 951_868_800);
        assert_eq!(x509_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(x509_time(0x17, b"500101000000Z"), Some(-631_152_000));
        assert_eq!(x509_time(0x18, b"20500101000000Z"), Some(2_524_608_000));
        assert_eq!(x509_time(0x18, b"2050010100000Z"), None, "short");
        assert_eq!(x509_time(0x17, b"49123123595+Z"), None);
        assert_eq!(x509_time(0x17, b"491331235959Z"), None, "month 13");
    }

    #[test]
    fn not_after_never_panics_on_damaged_der() {
        let dir = tempfile::tempdir().unwrap();
        self_signed(dir.path(), "c", "localhost", 1);
        let der = der(dir.path(), "c");
        for n in 0..der.len() {
            let _ = not_after(&der[..n]);
            let mut flipped = der.clone();
            flipped[n] ^= 0xff;
            let _ = not_after(&flipped);
        }
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(not_after(&[0x30, 0x80]), None, "indefinite length");
    }

    fn spec(dir: &Path, name: &str) -> TlsSpec {
        TlsSpec {
            cert_file: dir.join(format!("{name}.pem")),
            key_file: dir.join(format!("{name}.key")),
            client_auth: ClientAuth::None,
            client_ca_file: None,
            min_version: 12,
            max_version: 13,
        }
    }

    #[test]
    fn a_key_that_is_not_the_certificates_or_a_half_written_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        self_signed(dir.path(), "a", "a", 1);
        self_signed(dir.path(), "b", "b", 1);
        let built = build(&spec(dir.path(), "a")).unwrap();
        assert_eq!(built.not_after, Some(openssl_not_after(dir.path(), "a")));
        let mut mixed = spec(dir.path(), "a");
        mixed.key_file = dir.path().join("b.key");
        let e = build(&mixed).err().unwrap();
        assert!(e.contains("a.pem and") && e.contains("b.key do not make a usable certificate"), "{e}");
        let text = std::fs::read_to_string(dir.path().join("a.pem")).unwrap();
        std::fs::write(dir.path().join("a.pem"), &text[..text.len() / 2]).unwrap();
        let e = build(&spec(dir.path(), "a")).err().unwrap();
        assert!(
            e.contains(
                "a.pem: not a PEM certificate file: a PEM block does not end (no \"-----END CERTIFICATE-----\" line)"
            ),
            "{e}"
        );
        std::fs::write(dir.path().join("a.key"), "").unwrap();
        let e = build(&spec(dir.path(), "a")).err().unwrap();
        assert!(e.contains("a.pem: not a PEM certificate file"), "the certificate is read first: {e}");
        std::fs::write(dir.path().join("a.pem"), std::fs::read(dir.path().join("b.pem")).unwrap()).unwrap();
        let e = build(&spec(dir.path(), "a")).err().unwrap();
        assert!(e.contains("a.key holds no PEM private key"), "{e}");
        std::fs::write(dir.path().join("a.pem"), "").unwrap();
        let e = build(&spec(dir.path(), "a")).err().unwrap();
        assert!(e.contains("a.pem holds no PEM certificate"), "{e}");
    }
}

//! TLS and basic authentication for the HTTP endpoints, configured with the
//! Prometheus exporter-toolkit web configuration file (the `--web.config.file`
//! of node_exporter and friends), so operators reuse the file they have.
//!
//! Supported: `tls_server_config` (`cert_file`, `key_file`,
//! `client_auth_type`, `client_ca_file`, `min_version`, `max_version`),
//! `basic_auth_users` (bcrypt hashes) and `http_server_config.headers`.
//! Go-specific tuning (`cipher_suites`, `curve_preferences`,
//! `prefer_server_cipher_suites`, `http2`) is accepted and ignored with a
//! warning: rustls' defaults are the modern subset of those.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebConfig {
    #[serde(default)]
    pub tls_server_config: Option<TlsServerConfig>,
    #[serde(default)]
    pub basic_auth_users: BTreeMap<String, String>,
    #[serde(default)]
    pub http_server_config: Option<HttpServerConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsServerConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub client_auth_type: Option<String>,
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub min_version: Option<String>,
    #[serde(default)]
    pub max_version: Option<String>,
    #[serde(default)]
    pub cipher_suites: Option<serde_yaml::Value>,
    #[serde(default)]
    pub curve_preferences: Option<serde_yaml::Value>,
    #[serde(default)]
    pub prefer_server_cipher_suites: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpServerConfig {
    #[serde(default)]
    pub http2: Option<bool>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// What the server enforces, built once from the file.
pub(crate) struct Security {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    users: BTreeMap<String, String>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Authorization headers that passed (bcrypt is slow on purpose; a
    /// scrape every few seconds must not pay it each time). Failures are
    /// never cached, so a stream of wrong credentials cannot push a good
    /// one out.
    verified: Mutex<HashSet<String>>,
    /// bcrypt checks running at once at most: distinct wrong credentials
    /// each cost one, and must not take every blocking thread.
    pub checks: Arc<tokio::sync::Semaphore>,
}

/// Verified credentials kept at most (one per user and client is typical).
const VERIFIED_CACHE: usize = 64;
/// Whether a bcrypt hash can be verified at all. Its shape parsing is not
/// enough: a salt or digest with stray trailing bits (a typo) parses but
/// fails every check, locking the user out without a word. The same salt
/// and digest are tried once at the lowest cost, which takes a millisecond.
fn usable_bcrypt(hash: &str) -> Result<(), String> {
    let parts = hash.parse::<bcrypt::HashParts>().map_err(|e| e.to_string())?;
    if !(4..=31).contains(&parts.get_cost()) {
        return Err(format!("cost {} is not between 4 and 31", parts.get_cost()));
    }
    let digest = hash.get(hash.len().saturating_sub(31)..).unwrap_or("");
    let cheap = format!("$2b$04${}{digest}", parts.get_salt());
    bcrypt::verify("", &cheap).map(|_| ()).map_err(|e| format!("its salt or digest does not decode: {e}"))
}

/// bcrypt checks at once at most.
pub(crate) const CONCURRENT_CHECKS: usize = 2;

/// TLS versions as an order: 12 or 13.
fn tls_version(v: &str) -> Result<u8, String> {
    match v {
        "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        "TLS10" | "TLS11" => Err(format!("{v} is not supported (too old); use TLS12 or TLS13")),
        other => Err(format!("unknown TLS version {other:?}; use TLS12 or TLS13")),
    }
}

fn read_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect();
    let certs = certs.map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn tls_acceptor(t: &TlsServerConfig) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
    if t.cipher_suites.is_some() || t.curve_preferences.is_some() || t.prefer_server_cipher_suites.is_some() {
        tracing::warn!("web config: cipher_suites, curve_preferences and prefer_server_cipher_suites are ignored (rustls uses its modern defaults)");
    }
    let certs = read_certs(&t.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&t.key_file)
        .map_err(|e| format!("cannot read a PEM private key from {}: {e}", t.key_file.display()))?;
    let min = tls_version(t.min_version.as_deref().unwrap_or("TLS12"))?;
    let max = tls_version(t.max_version.as_deref().unwrap_or("TLS13"))?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(n, _)| (min..=max).contains(n))
            .map(|(_, v)| v)
            .collect();
    if versions.is_empty() {
        return Err("min_version is above max_version".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let auth = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let builder = match auth {
        "NoClientCert" => builder.with_no_client_auth(),
        "RequestClientCert" | "RequireAnyClientCert" | "VerifyClientCertIfGiven" | "RequireAndVerifyClientCert" => {
            let ca = t.client_ca_file.as_ref().ok_or_else(|| {
                format!("client_auth_type {auth} needs client_ca_file (the CA that signs client certificates)")
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: unusable CA certificate: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if matches!(auth, "RequestClientCert" | "VerifyClientCertIfGiven") {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| format!("client certificate verifier: {e}"))?)
        }
        other => {
            return Err(format!(
                "unknown client_auth_type {other:?}; use NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
            ))
        }
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(|e| {
        format!("{} and {} do not make a usable certificate: {e}", t.cert_file.display(), t.key_file.display())
    })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

impl Security {
    /// Reads and checks the file; errors say what is wrong and where.
    pub(crate) fn load(path: &Path) -> Result<Security, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// Parses and checks the text of a web config file; `source` (the
    /// file's path) starts every error message. TLS files named in it are
    /// read from the disk.
    pub(crate) fn from_yaml(text: &str, source: &str) -> Result<Security, String> {
        let cfg: WebConfig = serde_yaml::from_str(text).map_err(|e| format!("{source}: {e}"))?;
        let tls = cfg
            .tls_server_config
            .as_ref()
            .map(tls_acceptor)
            .transpose()
            .map_err(|e| format!("{source}: tls_server_config: {e}"))?;
        for (user, hash) in &cfg.basic_auth_users {
            usable_bcrypt(hash).map_err(|e| {
                format!("{source}: basic_auth_users.{user}: not a bcrypt hash ({e}); make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`")
            })?;
        }
        let mut headers = Vec::new();
        if let Some(h) = &cfg.http_server_config {
            if h.http2.is_some() {
                tracing::warn!("web config: http_server_config.http2 is ignored (HTTP/1.1 only)");
            }
            for (k, v) in &h.headers {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("{source}: http_server_config.headers: {k:?} is not a header name"))?;
                let value = HeaderValue::from_str(v)
                    .map_err(|_| format!("{source}: http_server_config.headers.{k}: not a valid value"))?;
                headers.push((name, value));
            }
        }
        Ok(Security {
            tls,
            users: cfg.basic_auth_users,
            headers,
            verified: Mutex::new(HashSet::new()),
            checks: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CHECKS)),
        })
    }

    pub(crate) fn requires_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether the request carries a credential that passed before (no
    /// bcrypt needed): `Some(true)`; `None` when it must be checked.
    pub(crate) fn known(&self, headers: &HeaderMap) -> Option<bool> {
        if self.users.is_empty() {
            return Some(true);
        }
        let Some(raw) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return Some(false) };
        self.verified.lock().ok().filter(|c| c.contains(raw)).map(|_| true)
    }

    /// Checks an `Authorization: Basic ...` header against the users.
    pub(crate) fn authorized(&self, headers: &HeaderMap) -> bool {
        if let Some(known) = self.known(headers) {
            return known;
        }
        let Some(raw) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
        let ok = raw
            .strip_prefix("Basic ")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
            .and_then(|d| String::from_utf8(d).ok())
            .and_then(|d| d.split_once(':').map(|(u, p)| (u.to_string(), p.to_string())))
            .and_then(|(user, pass)| self.users.get(&user).map(|hash| bcrypt::verify(pass, hash).unwrap_or(false)))
            .unwrap_or(false);
        if ok {
            if let Ok(mut c) = self.verified.lock() {
                if c.len() >= VERIFIED_CACHE {
                    c.clear();
                }
                c.insert(raw.to_string());
            }
        }
        ok
    }

    pub(crate) fn add_headers(&self, resp: &mut Response) {
        for (k, v) in &self.headers {
            resp.headers_mut().insert(k.clone(), v.clone());
        }
    }
}

/// axum middleware: 401 without valid credentials, configured headers on
/// every answer.
pub(crate) async fn guard(
    axum::extract::State(sec): axum::extract::State<Arc<Security>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let ok = match sec.known(req.headers()) {
        Some(known) => known,
        None => {
            // bcrypt takes tens of milliseconds: off the async workers, a
            // few at a time (the others wait their turn here).
            match sec.checks.clone().acquire_owned().await {
                Ok(permit) => {
                    let s = sec.clone();
                    let headers = req.headers().clone();
                    tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        s.authorized(&headers)
                    })
                    .await
                    .unwrap_or(false)
                }
                Err(_) => false,
            }
        }
    };
    let mut resp = if ok {
        next.run(req).await
    } else {
        (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Basic realm=\"virtpulse\"")], "Unauthorized\n")
            .into_response()
    };
    sec.add_headers(&mut resp);
    resp
}

/// Serves `app` over TLS until `shutdown` completes. A client that does
/// not finish the handshake in 10 s (or speaks plain HTTP) is dropped.
pub(crate) async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    acceptor: tokio_rustls::TlsAcceptor,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an HTTPS connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let acceptor = acceptor.clone();
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await {
                tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
            }
        });
    }
}

/// Liveness: 200 while every loop turns (what the systemd watchdog checks).
pub(crate) async fn healthz(health: Arc<dyn crate::selfmon::Probe>) -> Response {
    match health.liveness() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {why}\n")).into_response(),
    }
}

/// Readiness: 200 when connected to libvirt with fresh collections; the
/// body tells the state of every part either way.
pub(crate) async fn readyz(health: Arc<dyn crate::selfmon::Probe>) -> Response {
    let (ready, body) = health.readiness();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CONTENT_TYPE, "application/json")], format!("{body}\n")).into_response()
}

/// `/healthz` and `/readyz` on a router.
pub(crate) fn with_health<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    health: Arc<dyn crate::selfmon::Probe>,
) -> axum::Router<S> {
    router
        .route(
            "/healthz",
            axum::routing::get({
                let h = health.clone();
                move || healthz(h.clone())
            }),
        )
        .route("/readyz", axum::routing::get(move || readyz(health.clone())))
}

/// A server running until `stop` is notified.
pub(crate) struct Server {
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `app` on `listener`, behind `security` (TLS, basic auth) if given.
    pub(crate) fn start(
        listener: tokio::net::TcpListener,
        mut app: axum::Router,
        security: Option<Arc<Security>>,
    ) -> Self {
        if let Some(sec) = &security {
            app = app.layer(axum::middleware::from_fn_with_state(sec.clone(), guard));
        }
        let tls = security.as_ref().and_then(|s| s.tls.clone());
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = {
            let stop = stop.clone();
            async move { stop.notified().await }
        };
        let task = tokio::spawn(async move {
            match tls {
                Some(acceptor) => serve_tls(listener, app, acceptor, stopped).await,
                None => {
                    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
                        tracing::error!(error = %e, "HTTP server failed");
                    }
                }
            }
        });
        Self { stop, task }
    }

    /// Stops accepting; requests under way finish.
    pub(crate) async fn stop(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    /// Found by the `web_config` fuzz target: a hash whose digest ends in a
    /// character with stray low bits parsed, then failed every login.
    fn a_hash_that_parses_but_cannot_verify_is_refused() {
        let typo = "$2b$04$mT.x9mPuVqx0ForkCVI4ujymnAtYNZ7Xja/VaMceF.4XvKFFidMW.";
        let e = Security::from_yaml(&format!("basic_auth_users:\n  carol: '{typo}'\n"), "web.yml").err().unwrap();
        assert!(e.contains("basic_auth_users.carol") && e.contains("does not decode"), "{e}");
        let good = bcrypt::hash("pw", 4).unwrap();
        assert!(usable_bcrypt(&good).is_ok());
        assert!(usable_bcrypt("$2b$99$mT.x9mPuVqx0ForkCVI4ujymnAtYNZ7Xja/VaMceF.4XvKFFidMW").is_err());
    }

    #[test]
    fn basic_auth_checks_bcrypt_hashes_and_names_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let p = write(dir.path(), "web.yml", &format!("basic_auth_users:\n  alice: {hash}\n"));
        let sec = Security::load(&p).unwrap();
        let auth = |user: &str, pass: &str| {
            let mut h = HeaderMap::new();
            let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            h.insert(header::AUTHORIZATION, format!("Basic {v}").parse().unwrap());
            sec.authorized(&h)
        };
        assert!(auth("alice", "s3cret"));
        assert!(auth("alice", "s3cret"), "cached");
        assert!(!auth("alice", "wrong"));
        assert!(!auth("bob", "s3cret"));
        assert!(!sec.authorized(&HeaderMap::new()));
        // A stream of distinct wrong credentials does not push the good one
        // out of the cache (it used to: failures were cached and evicted it).
        for i in 0..200 {
            assert!(!auth("alice", &format!("guess-{i}")));
        }
        let mut good = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        good.insert(header::AUTHORIZATION, format!("Basic {v}").parse().unwrap());
        assert_eq!(sec.known(&good), Some(true), "the verified credential needs no new bcrypt check");
        assert_eq!(sec.checks.available_permits(), CONCURRENT_CHECKS);

        let bad = write(dir.path(), "bad.yml", "basic_auth_users:\n  alice: plaintext\n");
        let e = Security::load(&bad).err().unwrap();
        assert!(e.contains("basic_auth_users.alice") && e.contains("bcrypt"), "{e}");
        let typo = write(dir.path(), "typo.yml", "basic_auth_user:\n  alice: x\n");
        let e = Security::load(&typo).err().unwrap();
        assert!(e.contains("basic_auth_user"), "{e}");
        let missing = write(
            dir.path(),
            "tls.yml",
            "tls_server_config:\n  cert_file: /nonexistent.pem\n  key_file: /nonexistent.key\n",
        );
        let e = Security::load(&missing).err().unwrap();
        assert!(e.contains("/nonexistent.pem"), "{e}");
    }
}

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
//!
//! The file, and the certificate, key and client CA it names, are re-read
//! when they change on disk (`security`): certificate rotation needs no
//! restart and no signal. Whether a listener speaks HTTPS or HTTP is fixed
//! at start.

mod files;
mod security;
mod tls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

#[allow(unused_imports, reason = "the SIGHUP hook: src/app.rs calls it once SIGHUP reload lands")]
pub(crate) use security::reload_all;
pub(crate) use security::{Security, METRICS};

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

/// axum middleware: 401 without valid credentials, configured headers on
/// every answer. A request first gives the settings a chance to catch up
/// with their files (at most once a second, see `Security::refresh_if_due`)
/// and is then judged by one version of them throughout.
pub(crate) async fn guard(
    axum::extract::State(sec): axum::extract::State<Arc<Security>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    sec.refresh_if_due().await;
    let settings = sec.settings();
    let ok = match settings.known(req.headers()) {
        Some(known) => known,
        None => {
            // bcrypt takes tens of milliseconds: off the async workers, a
            // few at a time (the others wait their turn here).
            match sec.checks.clone().acquire_owned().await {
                Ok(permit) => {
                    let s = settings.clone();
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
    settings.add_headers(&mut resp);
    resp
}

/// Serves `app` over TLS until `shutdown` completes. Each handshake uses
/// the TLS server in force when it starts (certificates re-read from disk
/// as they change). A client that does not finish the handshake in 10 s
/// (or speaks plain HTTP) is dropped.
pub(crate) async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    security: Arc<Security>,
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
        let sec = security.clone();
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let handshake = async {
                sec.refresh_if_due().await;
                match sec.acceptor() {
                    Some(acceptor) => Some(acceptor.accept(tcp).await),
                    None => None,
                }
            };
            let stream = match tokio::time::timeout(std::time::Duration::from_secs(10), handshake).await {
                Ok(Some(Ok(s))) => s,
                Ok(Some(Err(e))) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Ok(None) | Err(_) => return,
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
        let tls = security.filter(|s| s.is_tls());
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = {
            let stop = stop.clone();
            async move { stop.notified().await }
        };
        let task = tokio::spawn(async move {
            match tls {
                Some(sec) => serve_tls(listener, app, sec, stopped).await,
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

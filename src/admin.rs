//! The agent's own endpoint (`[admin]`): `/healthz`, `/readyz` and the
//! agent's own metrics on `/metrics`, for hosts that ship to Kafka or OTLP
//! only. Off by default when the Prometheus sink serves the same on its
//! port; it serves nothing about libvirt.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::http::header;
use axum::routing::get;

use crate::config::AdminConfig;
use crate::exposition::{write_families, CONTENT_TYPE};
use crate::selfmon::{Probe, Registry};
use crate::web::{Security, Server};

/// Whether the listener runs: as configured, else when no sink serves
/// these endpoints.
pub(crate) fn wanted(cfg: &AdminConfig, a_sink_serves_health: bool) -> bool {
    cfg.enabled.unwrap_or(!a_sink_serves_health)
}

/// The listener's TLS and basic auth, if configured.
pub(crate) fn security(cfg: &AdminConfig) -> Result<Option<Arc<Security>>, String> {
    match &cfg.web_config_file {
        Some(f) => Security::load(f, "admin").map(Some).map_err(|e| format!("admin.web_config_file: {e}")),
        None => Ok(None),
    }
}

async fn own_metrics(registry: Arc<Registry>) -> impl axum::response::IntoResponse {
    let text = tokio::task::spawn_blocking(move || {
        let mut out = String::with_capacity(16 * 1024);
        write_families(&crate::selfmon::render::render(&registry), &mut out);
        out
    })
    .await
    .unwrap_or_default();
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text)
}

/// Starts the listener.
pub(crate) async fn start(cfg: &AdminConfig, registry: Arc<Registry>, probe: Arc<dyn Probe>) -> anyhow::Result<Server> {
    let security = security(cfg).map_err(|e| anyhow::anyhow!(e))?;
    let addr: SocketAddr =
        cfg.listen.parse().with_context(|| format!("admin.listen {:?} is not an address", cfg.listen))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (admin.listen): is another process using the port?"))?;
    if let Some(sec) = &security {
        // Its reloads and certificate expiry among the agent's own metrics.
        registry.add_report(sec.clone());
    }
    let app = axum::Router::new().route("/metrics", get(move || own_metrics(registry.clone())));
    let app = crate::web::with_health(app, probe);
    tracing::info!(%addr, tls = security.as_ref().is_some_and(|s| s.is_tls()), "serving /healthz, /readyz and the agent's own metrics");
    Ok(Server::start(listener, app, security))
}

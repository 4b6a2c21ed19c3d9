//! Sends export requests over OTLP/gRPC (tonic) or OTLP/HTTP with protobuf
//! bodies (hyper), and sorts failures into retryable and permanent the way
//! the OTLP specification does.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::config::{OtlpCompression, OtlpProtocol, OtlpSettings};

/// Why an export failed.
#[derive(Debug, Clone)]
pub(crate) struct ExportError {
    /// Worth trying again (receiver down, overloaded, timed out).
    pub retryable: bool,
    pub message: String,
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What the receiver accepted: items it refused (partial success) and why.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Accepted {
    pub rejected: i64,
    pub message: String,
}

/// What differs between the two signals' export calls.
trait ExportRequest: Message + Sized + Send + 'static {
    type Response: Message + Default;
    const METRICS: bool;
    fn grpc(
        channel: Channel,
        gzip: bool,
        req: tonic::Request<Self>,
    ) -> impl std::future::Future<Output = Result<Self::Response, tonic::Status>> + Send;
    fn accepted(resp: Self::Response) -> Accepted;
}

/// An `ExportMetricsServiceRequest` already in protobuf (see `wire`): sent
/// as it is, never decoded here.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct EncodedMetrics(pub Bytes);

impl Message for EncodedMetrics {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

const METRICS_EXPORT: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

impl ExportRequest for EncodedMetrics {
    type Response = ExportMetricsServiceResponse;
    const METRICS: bool = true;

    async fn grpc(channel: Channel, gzip: bool, req: tonic::Request<Self>) -> Result<Self::Response, tonic::Status> {
        // What the generated MetricsServiceClient::export does, with a body
        // that is already encoded.
        let mut grpc = tonic::client::Grpc::new(channel);
        if gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        grpc.ready().await.map_err(|e| tonic::Status::unknown(format!("service was not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<EncodedMetrics, ExportMetricsServiceResponse>::default();
        let path = http::uri::PathAndQuery::from_static(METRICS_EXPORT);
        Ok(grpc.unary(req, path, codec).await?.into_inner())
    }

    fn accepted(resp: Self::Response) -> Accepted {
        let p = resp.partial_success.unwrap_or_default();
        Accepted { rejected: p.rejected_data_points, message: p.error_message }
    }
}

impl ExportRequest for ExportLogsServiceRequest {
    type Response = ExportLogsServiceResponse;
    const METRICS: bool = false;

    async fn grpc(channel: Channel, gzip: bool, req: tonic::Request<Self>) -> Result<Self::Response, tonic::Status> {
        let mut client = LogsServiceClient::new(channel);
        if gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        Ok(client.export(req).await?.into_inner())
    }

    fn accepted(resp: Self::Response) -> Accepted {
        let p = resp.partial_success.unwrap_or_default();
        Accepted { rejected: p.rejected_log_records, message: p.error_message }
    }
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

enum Kind {
    Grpc {
        metrics: Channel,
        logs: Channel,
        metadata: MetadataMap,
        gzip: bool,
    },
    Http {
        client: HttpClient,
        metrics_url: hyper::Uri,
        logs_url: hyper::Uri,
        headers: Vec<(String, String)>,
        gzip: bool,
    },
}

pub(crate) struct Transport {
    kind: Kind,
    timeout: Duration,
}

fn read_ca(settings: &OtlpSettings) -> Result<Option<Vec<u8>>, String> {
    settings
        .ca_file
        .as_ref()
        .map(|p| std::fs::read(p).map_err(|e| format!("cannot read the CA file {}: {e}", p.display())))
        .transpose()
}

fn grpc_channel(url: &str, timeout: Duration, ca: Option<&[u8]>) -> Result<Channel, String> {
    let mut ep = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("{url:?} is not a valid gRPC endpoint: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(pem) = ca {
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        ep = ep.tls_config(tls).map_err(|e| format!("TLS setup for {url:?} failed: {e}"))?;
    }
    // Lazy: the agent starts (and collects) while the receiver is down.
    Ok(ep.connect_lazy())
}

fn http_client(ca: Option<&[u8]>) -> Result<HttpClient, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = ca {
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("the CA file holds an unreadable certificate: {e}"))?;
            roots.add(cert).map_err(|e| format!("the CA file holds an unusable certificate: {e}"))?;
            n += 1;
        }
        if n == 0 {
            return Err("the CA file holds no PEM certificate".into());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector))
}

fn metadata(headers: &[(String, String)]) -> Result<MetadataMap, String> {
    let mut m = MetadataMap::new();
    for (k, v) in headers {
        let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("header {k:?} is not a valid gRPC metadata key"))?;
        let value =
            MetadataValue::try_from(v.as_str()).map_err(|_| format!("the value of header {k:?} is not valid"))?;
        m.insert(key, value);
    }
    Ok(m)
}

/// gRPC status codes the OTLP specification says to retry.
fn grpc_retryable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Cancelled | DeadlineExceeded | ResourceExhausted | Aborted | OutOfRange | Unavailable | DataLoss | Unknown
    )
}

fn grpc_error(s: tonic::Status) -> ExportError {
    let retryable = grpc_retryable(s.code());
    let mut message = format!("gRPC {:?}: {}", s.code(), s.message());
    if let Some(src) = std::error::Error::source(&s) {
        message.push_str(&format!(" ({src})"));
    }
    ExportError { retryable, message }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

impl Transport {
    pub(crate) fn new(settings: &OtlpSettings) -> Result<Self, String> {
        let ca = read_ca(settings)?;
        let gzip = settings.compression == OtlpCompression::Gzip;
        let kind = match settings.protocol {
            OtlpProtocol::Grpc => Kind::Grpc {
                metrics: grpc_channel(&settings.metrics_endpoint, settings.timeout, ca.as_deref())?,
                logs: grpc_channel(&settings.logs_endpoint, settings.timeout, ca.as_deref())?,
                metadata: metadata(&settings.headers)?,
                gzip,
            },
            OtlpProtocol::Http => {
                let uri = |u: &str| u.parse::<hyper::Uri>().map_err(|e| format!("{u:?} is not a valid URL: {e}"));
                for (k, v) in &settings.headers {
                    hyper::header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| format!("header {k:?} is not a valid HTTP header name"))?;
                    hyper::header::HeaderValue::from_str(v)
                        .map_err(|_| format!("the value of header {k:?} is not valid"))?;
                }
                Kind::Http {
                    client: http_client(ca.as_deref())?,
                    metrics_url: uri(&settings.metrics_endpoint)?,
                    logs_url: uri(&settings.logs_endpoint)?,
                    headers: settings.headers.clone(),
                    gzip,
                }
            }
        };
        Ok(Self { kind, timeout: settings.timeout })
    }

    /// Sends an encoded `ExportMetricsServiceRequest`.
    pub(crate) async fn export_metrics(&self, req: Bytes) -> Result<Accepted, ExportError> {
        self.export(EncodedMetrics(req)).await
    }

    pub(crate) async fn export_logs(&self, req: ExportLogsServiceRequest) -> Result<Accepted, ExportError> {
        self.export(req).await
    }

    async fn export<R: ExportRequest>(&self, req: R) -> Result<Accepted, ExportError> {
        match &self.kind {
            Kind::Grpc { metrics, logs, metadata, gzip } => {
                let channel = if R::METRICS { metrics } else { logs };
                let mut request = tonic::Request::new(req);
                *request.metadata_mut() = metadata.clone();
                request.set_timeout(self.timeout);
                let resp = R::grpc(channel.clone(), *gzip, request).await.map_err(grpc_error)?;
                Ok(R::accepted(resp))
            }
            Kind::Http { client, metrics_url, logs_url, headers, gzip } => {
                let url = if R::METRICS { metrics_url } else { logs_url };
                let body = self.post(client, url, headers, *gzip, req.encode_to_vec()).await?;
                // A receiver may answer 200 with an empty or non-protobuf body.
                Ok(R::accepted(R::Response::decode(body).unwrap_or_default()))
            }
        }
    }

    async fn post(
        &self,
        client: &HttpClient,
        url: &hyper::Uri,
        headers: &[(String, String)],
        gzip_body: bool,
        body: Vec<u8>,
    ) -> Result<Bytes, ExportError> {
        let body = if gzip_body { gzip(&body) } else { body };
        let mut b = hyper::Request::post(url.clone()).header(hyper::header::CONTENT_TYPE, "application/x-protobuf");
        if gzip_body {
            b = b.header(hyper::header::CONTENT_ENCODING, "gzip");
        }
        for (k, v) in headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let req = b
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ExportError { retryable: false, message: format!("cannot build the request: {e}") })?;
        let fut = async {
            let resp = client
                .request(req)
                .await
                .map_err(|e| ExportError { retryable: true, message: format!("POST {url}: {}", error_chain(&e)) })?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ExportError {
                    retryable: true,
                    message: format!("POST {url}: reading the response: {e}"),
                })?
                .to_bytes();
            if status.is_success() {
                return Ok(body);
            }
            // The OTLP/HTTP specification: retry only these.
            let retryable = matches!(status.as_u16(), 429 | 502 | 503 | 504);
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            Err(ExportError { retryable, message: format!("POST {url}: HTTP {status}: {}", text.trim()) })
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ExportError {
                retryable: true,
                message: format!("POST {url}: no answer within {:?}", self.timeout),
            }),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::otlp::config::OtlpConfig;
    use axum::http::StatusCode;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess;

    /// An OTLP/HTTP endpoint that answers every request with `status` and `body`.
    async fn fake_receiver(status: StatusCode, body: Vec<u8>) -> String {
        let app = axum::Router::new().route(
            "/v1/logs",
            axum::routing::post(move |headers: axum::http::HeaderMap, req: axum::body::Bytes| {
                let body = body.clone();
                async move {
                    // The request is what the sink promised: protobuf, gzip, our header.
                    assert_eq!(headers["content-type"], "application/x-protobuf");
                    assert_eq!(headers["content-encoding"], "gzip");
                    assert_eq!(headers["x-tenant"], "t1");
                    let mut raw = Vec::new();
                    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&req[..]), &mut raw).unwrap();
                    ExportLogsServiceRequest::decode(&raw[..]).unwrap();
                    (status, body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    async fn export_to(status: StatusCode, body: Vec<u8>) -> Result<Accepted, ExportError> {
        let mut cfg = OtlpConfig {
            endpoint: Some(fake_receiver(status, body).await),
            protocol: Some(OtlpProtocol::Http),
            ..Default::default()
        };
        cfg.headers.insert("x-tenant".into(), "t1".into());
        let t = Transport::new(&cfg.settings(&Default::default()).unwrap()).unwrap();
        t.export_logs(ExportLogsServiceRequest::default()).await
    }

    #[tokio::test]
    async fn http_failures_are_sorted_as_the_specification_says() {
        assert_eq!(export_to(StatusCode::OK, Vec::new()).await.unwrap(), Accepted::default());
        let partial = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: 3,
                error_message: "too old".into(),
            }),
        };
        let got = export_to(StatusCode::OK, partial.encode_to_vec()).await.unwrap();
        assert_eq!((got.rejected, got.message.as_str()), (3, "too old"));
        for (status, retryable) in [
            (StatusCode::SERVICE_UNAVAILABLE, true),
            (StatusCode::TOO_MANY_REQUESTS, true),
            (StatusCode::BAD_GATEWAY, true),
            (StatusCode::BAD_REQUEST, false),
            (StatusCode::UNAUTHORIZED, false),
            (StatusCode::NOT_FOUND, false),
        ] {
            let e = export_to(status, b"no thanks".to_vec()).await.unwrap_err();
            assert_eq!(e.retryable, retryable, "{status}: {e}");
            assert!(e.message.contains(status.as_str()) && e.message.contains("no thanks"), "{e}");
        }
    }

    #[tokio::test]
    async fn an_absent_receiver_is_retryable_and_named() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        for protocol in [OtlpProtocol::Http, OtlpProtocol::Grpc] {
            let cfg = OtlpConfig {
                endpoint: Some(format!("http://127.0.0.1:{port}")),
                protocol: Some(protocol),
                timeout: Some(Duration::from_secs(2)),
                ..Default::default()
            };
            let t = Transport::new(&cfg.settings(&Default::default()).unwrap()).unwrap();
            let e = t.export_metrics(Bytes::new()).await.unwrap_err();
            assert!(e.retryable, "{protocol:?}: {e}");
            assert!(e.message.to_lowercase().contains("connect") || e.message.contains("refused"), "{protocol:?}: {e}");
        }
        assert!(grpc_retryable(tonic::Code::Unavailable) && !grpc_retryable(tonic::Code::InvalidArgument));
        assert!(!grpc_retryable(tonic::Code::Unauthenticated) && !grpc_retryable(tonic::Code::PermissionDenied));
    }
}

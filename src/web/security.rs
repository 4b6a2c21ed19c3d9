//! A listener's live security settings, read from its web config file and
//! re-read when that file, or a certificate, key or client CA it names,
//! changes on disk.
//!
//! When: at most once a second, on the first request or TLS handshake
//! after the second has passed (a stat of each file, on a blocking thread;
//! nothing is read unless a stamp changed), and whenever `reload_now` is
//! called (the SIGHUP hook: everything is read again, changed or not).
//! A new version that does not load (half-written, a bad hash, a key that
//! is not the certificate's) changes nothing: the previous settings stay
//! in force, the failure is logged once per change of the file and
//! counted (`virtpulse_web_*_reloads_total{result="error"}`).
//!
//! Whether the listener speaks HTTPS or HTTP is fixed at start (the
//! accept loop differs): a file that adds or removes `tls_server_config`
//! is refused like any other broken version.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use base64::Engine;

use super::files::{read_bounded, stamp, Stamp};
use super::tls::{build, TlsSpec};
use super::WebConfig;
use crate::selfmon::{find, MetricDesc, MetricWriter, Report};

/// Verified credentials kept at most (one per user and client is typical).
const VERIFIED_CACHE: usize = 64;

/// bcrypt checks at once at most.
pub(crate) const CONCURRENT_CHECKS: usize = 2;

/// How often the files are looked at, at most. A stat of three files
/// costs about 1 µs here against about 260 µs for the RSA-2048 signature
/// of one handshake (`openssl speed rsa2048`), so a look per handshake
/// would be cheap in CPU; but it would put file system calls on the async
/// workers (a hung NFS mount would stall them) or one blocking-pool task
/// per connection (which libvirt calls share). Once a second on a blocking
/// thread bounds both, and a rotation is seen within a second.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long a request or handshake waits for the look it started; past
/// it (a file system that hangs) it goes on with the settings in force.
const CHECK_WAIT: Duration = Duration::from_secs(2);

/// The metrics every listener with a web config reports.
pub(crate) const METRICS: &[MetricDesc] = &[
    MetricDesc::counter(
        "virtpulse_web_config_reloads_total",
        "Re-reads of a listener's web config file (sinks.prometheus.web_config_file, admin.web_config_file) after it changed on disk or a reload was asked for, by result (error: the previous settings stay in force; the log names the key and the reason).",
    ),
    MetricDesc::counter(
        "virtpulse_web_tls_reloads_total",
        "Re-reads of a listener's TLS certificate, key and client CA files after one of them or the web config's tls_server_config changed, or a reload was asked for, by result (error: the previous certificate and CA stay in use; the log names the file and the reason).",
    ),
    MetricDesc::gauge(
        "virtpulse_web_config_last_reload_successful",
        "1 when the newest version of the listener's web config file and of the TLS files it names is in force; 0 while a changed one could not be loaded and the previous one is used.",
    ),
    MetricDesc::gauge(
        "virtpulse_web_tls_certificate_expiry_timestamp_seconds",
        "When the certificate the listener serves expires (its notAfter, Unix time).",
    ),
];

/// Whether a bcrypt hash can be verified at all. Its shape parsing is not
/// enough: a salt or digest with stray trailing bits (a typo) parses but
/// fails every check, locking the user out without a word. The same salt
/// and digest are tried once at the lowest cost, which takes a millisecond.
pub(super) fn usable_bcrypt(hash: &str) -> Result<(), String> {
    let parts = hash.parse::<bcrypt::HashParts>().map_err(|e| e.to_string())?;
    if !(4..=31).contains(&parts.get_cost()) {
        return Err(format!("cost {} is not between 4 and 31", parts.get_cost()));
    }
    let digest = hash.get(hash.len().saturating_sub(31)..).unwrap_or("");
    let cheap = format!("$2b$04${}{digest}", parts.get_salt());
    bcrypt::verify("", &cheap).map(|_| ()).map_err(|e| format!("its salt or digest does not decode: {e}"))
}

/// What requests are checked against, from one version of the file.
pub(crate) struct Settings {
    users: BTreeMap<String, String>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Authorization headers that passed (bcrypt is slow on purpose; a
    /// scrape every few seconds must not pay it each time). Failures are
    /// never cached, so a stream of wrong credentials cannot push a good
    /// one out. Each version of the file starts with an empty cache, so a
    /// password changed or a user removed is refused at once.
    verified: Mutex<HashSet<String>>,
}

impl Settings {
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

/// One version of the file, parsed and checked (no TLS file read yet).
struct Parsed {
    settings: Settings,
    tls: Option<TlsSpec>,
}

/// Parses and checks the text of a web config file; `source` (the file's
/// path) starts every error message, followed by the key.
fn parse(text: &str, source: &str) -> Result<Parsed, String> {
    let cfg: WebConfig = serde_yaml::from_str(text).map_err(|e| format!("{source}: {e}"))?;
    let tls = cfg
        .tls_server_config
        .as_ref()
        .map(TlsSpec::from_config)
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
    Ok(Parsed {
        settings: Settings { users: cfg.basic_auth_users, headers, verified: Mutex::new(HashSet::new()) },
        tls,
    })
}

fn read_text(path: &Path) -> Result<String, String> {
    String::from_utf8(read_bounded(path)?).map_err(|_| format!("{}: not UTF-8 text", path.display()))
}

/// The TLS server in force and the files it was built from.
struct TlsWatch {
    spec: TlsSpec,
    /// The files' stamps when they were last read, whether or not that
    /// read loaded: a failed version is not tried (nor logged) again until
    /// the file changes once more.
    stamps: Vec<Option<Stamp>>,
}

/// What the last look saw (guarded: one look at a time).
struct Watch {
    /// The web config file's stamp when it was last read.
    web: Option<Stamp>,
    tls: Option<TlsWatch>,
    /// New TLS files named by a version of the web config that was refused
    /// because they did not load: that version is read again when one of
    /// them changes, as such files often land after the file naming them.
    waiting: Option<TlsWatch>,
}

/// Reload counters, by what was read and how it went.
#[derive(Default)]
struct Stats {
    config_ok: AtomicU64,
    config_error: AtomicU64,
    tls_ok: AtomicU64,
    tls_error: AtomicU64,
    /// The newest version could not be loaded (each: until one does).
    config_failing: AtomicBool,
    tls_failing: AtomicBool,
    /// notAfter of the served certificate; `i64::MIN`: not known.
    not_after: AtomicI64,
}

impl Stats {
    /// One read of the web config file (`tls` false) or of the TLS files.
    fn count(&self, tls: bool, ok: bool) {
        let counter = match (tls, ok) {
            (false, true) => &self.config_ok,
            (false, false) => &self.config_error,
            (true, true) => &self.tls_ok,
            (true, false) => &self.tls_error,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the newest version of the web config file (`tls` false) or
    /// of the TLS files in force is the one in force.
    fn state(&self, tls: bool, ok: bool) {
        if tls { &self.tls_failing } else { &self.config_failing }.store(!ok, Ordering::Relaxed);
    }
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(PoisonError::into_inner).clone()
}

fn write<T>(lock: &RwLock<T>, value: T) {
    *lock.write().unwrap_or_else(PoisonError::into_inner) = value;
}

/// What a listener enforces (TLS, basic auth, headers), kept current with
/// its files.
pub(crate) struct Security {
    /// The `listener` label of its metrics and logs: `prometheus`, `admin`.
    listener: &'static str,
    /// The web config file; `None` when built from text (tests, fuzzing).
    path: Option<PathBuf>,
    settings: RwLock<Arc<Settings>>,
    /// The TLS server in force; `None`: plain HTTP, for good.
    tls: Option<RwLock<Arc<rustls::ServerConfig>>>,
    watch: Mutex<Watch>,
    /// When this was built: the origin of `last_look_ms`.
    created: Instant,
    /// Milliseconds from `created` to the last look (see `claim`).
    last_look_ms: AtomicU64,
    stats: Stats,
    /// bcrypt checks running at once at most: distinct wrong credentials
    /// each cost one, and must not take every blocking thread.
    pub(crate) checks: Arc<tokio::sync::Semaphore>,
}

/// Every listener's security that came from a file, for `reload_all`.
/// Weak: a listener that stops takes its settings with it; dead entries
/// are dropped at each registration, so the list is as long as the number
/// of listeners.
static LIVE: Mutex<Vec<Weak<Security>>> = Mutex::new(Vec::new());

/// Re-reads the web config and TLS files of every listener now, changed or
/// not (see `Security::reload_now`). The hook for a SIGHUP: blocking (file
/// reads and a bcrypt check per user), so call it on a blocking thread.
/// `Err` joins the failures; each was also logged and counted, and left
/// the previous settings of its listener in force.
pub(crate) fn reload_all() -> Result<(), String> {
    reload_each(&live())
}

/// The listeners' security settings in force now.
fn live() -> Vec<Arc<Security>> {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner).iter().filter_map(Weak::upgrade).collect()
}

fn reload_each(list: &[Arc<Security>]) -> Result<(), String> {
    let errors: Vec<String> = list.iter().filter_map(|s| s.reload_now().err()).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

impl Security {
    /// Reads and checks the file and the TLS files it names; errors say
    /// what is wrong and where. `listener` labels the metrics and logs.
    pub(crate) fn load(path: &Path, listener: &'static str) -> Result<Arc<Security>, String> {
        // Stamps before reading: a change made during the read is seen
        // (and read again) at the next look.
        let web = stamp(path);
        let text = read_text(path)?;
        let parsed = parse(&text, &path.display().to_string())?;
        let sec = Arc::new(Self::new(parsed, listener, Some(path.to_path_buf()), web, &path.display().to_string())?);
        let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&sec));
        Ok(sec)
    }

    /// Parses and checks the text of a web config file; `source` (the
    /// file's path) starts every error message. TLS files named in it are
    /// read from the disk (and re-read when they change); the text itself
    /// is never re-read.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn from_yaml(text: &str, source: &str) -> Result<Security, String> {
        Self::new(parse(text, source)?, "none", None, None, source)
    }

    fn new(
        parsed: Parsed,
        listener: &'static str,
        path: Option<PathBuf>,
        web: Option<Stamp>,
        source: &str,
    ) -> Result<Security, String> {
        let stats = Stats { not_after: AtomicI64::new(i64::MIN), ..Default::default() };
        let (tls, watch) = match parsed.tls {
            Some(spec) => {
                let stamps = spec.stamps();
                let built = build(&spec).map_err(|e| format!("{source}: tls_server_config: {e}"))?;
                stats.not_after.store(built.not_after.unwrap_or(i64::MIN), Ordering::Relaxed);
                (Some(RwLock::new(built.config)), Some(TlsWatch { spec, stamps }))
            }
            None => (None, None),
        };
        Ok(Security {
            listener,
            path,
            settings: RwLock::new(Arc::new(parsed.settings)),
            tls,
            watch: Mutex::new(Watch { web, tls: watch, waiting: None }),
            created: Instant::now(),
            last_look_ms: AtomicU64::new(0),
            stats,
            checks: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CHECKS)),
        })
    }

    /// The settings in force (a request keeps the ones it started with).
    pub(crate) fn settings(&self) -> Arc<Settings> {
        read(&self.settings)
    }

    /// Whether the listener serves HTTPS (fixed at start).
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS server for the next handshake; `None` on a plain listener.
    pub(crate) fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(read(t)))
    }

    pub(crate) fn requires_auth(&self) -> bool {
        self.settings().requires_auth()
    }

    /// See `Settings::known` (the fuzz harness asks the listener).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn known(&self, headers: &HeaderMap) -> Option<bool> {
        self.settings().known(headers)
    }

    /// See `Settings::authorized`.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn authorized(&self, headers: &HeaderMap) -> bool {
        self.settings().authorized(headers)
    }

    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn add_headers(&self, resp: &mut Response) {
        self.settings().add_headers(resp)
    }

    /// Whether this caller should look at the files now: a second has
    /// passed since the last look, and no other caller took the turn.
    fn claim(&self) -> bool {
        if self.path.is_none() && self.tls.is_none() {
            return false;
        }
        let now = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_look_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= CHECK_EVERY.as_millis() as u64
            && self.last_look_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// Looks at the files if a second has passed since the last look, and
    /// re-reads what changed, before a request or handshake goes on (so it
    /// meets the new settings). Others meanwhile use the settings in force.
    pub(crate) async fn refresh_if_due(self: &Arc<Self>) {
        if !self.claim() {
            return;
        }
        let me = self.clone();
        let look = tokio::task::spawn_blocking(move || {
            // A look still under way (a hung file system) keeps its turn:
            // at most one blocking thread waits on these files.
            let Some(mut w) = (match me.watch.try_lock() {
                Ok(w) => Some(w),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            }) else {
                return;
            };
            let _ = me.look(&mut w, false);
        });
        let _ = tokio::time::timeout(CHECK_WAIT, look).await;
    }

    /// Re-reads the web config file and the TLS files now, whether or not
    /// they changed (an edit that keeps a file's inode, size and times is
    /// invisible to the once-a-second look). The hook for a SIGHUP; blocks
    /// (file reads, a cheap bcrypt check per user). A version that does
    /// not load leaves the previous settings in force; `Err` says why (it
    /// is also logged and counted).
    pub(crate) fn reload_now(&self) -> Result<(), String> {
        let mut w = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
        self.look(&mut w, true)
    }

    /// The web config file first (it may name other TLS files), then the
    /// TLS files in force. `force`: read even what did not change.
    fn look(&self, w: &mut Watch, force: bool) -> Result<(), String> {
        let mut result = Ok(());
        let mut tls_rebuilt = false;
        if let Some(path) = &self.path {
            let now = stamp(path);
            let waited_for = w.waiting.as_ref().is_some_and(|t| t.spec.stamps() != t.stamps);
            if force || now != w.web || waited_for {
                w.web = now;
                w.waiting = None;
                let outcome = self.reload_config(path, w);
                self.stats.count(false, outcome.is_ok());
                self.stats.state(false, outcome.is_ok());
                match outcome {
                    Ok(rebuilt) => tls_rebuilt = rebuilt,
                    Err(e) => {
                        tracing::warn!(listener = self.listener, file = %path.display(), error = %e,
                            "web config: the changed file was not applied; the previous settings stay in force");
                        result = Err(e);
                    }
                }
            }
        }
        if let (Some(t), false) = (&mut w.tls, tls_rebuilt) {
            let now = t.spec.stamps();
            if force || now != t.stamps {
                t.stamps = now;
                let outcome = self.install_tls(&t.spec);
                self.stats.state(true, outcome.is_ok());
                match outcome {
                    Ok(()) => tracing::info!(listener = self.listener, cert_file = %t.spec.cert_file.display(),
                        not_after = self.not_after(), "TLS: certificate, key and client CA re-read"),
                    Err(e) => {
                        tracing::warn!(listener = self.listener, error = %e,
                            "TLS: a changed certificate, key or client CA file was not loaded; the previous ones stay in use");
                        result = result.and(Err(e));
                    }
                }
            }
        }
        result
    }

    /// Builds the TLS server from `spec` and puts it in force; counted.
    fn install_tls(&self, spec: &TlsSpec) -> Result<(), String> {
        let built = build(spec);
        self.stats.count(true, built.is_ok());
        let built = built?;
        if let Some(slot) = &self.tls {
            write(slot, built.config);
        }
        self.stats.not_after.store(built.not_after.unwrap_or(i64::MIN), Ordering::Relaxed);
        Ok(())
    }

    /// Applies a new version of the web config file, all or nothing.
    /// `Ok(true)`: the TLS section changed and the server was rebuilt.
    fn reload_config(&self, path: &Path, w: &mut Watch) -> Result<bool, String> {
        let source = path.display().to_string();
        let parsed = parse(&read_text(path)?, &source)?;
        let mut rebuilt = false;
        match (&parsed.tls, &mut w.tls) {
            (Some(_), None) | (None, Some(_)) => {
                let (was, now) = if self.tls.is_some() { ("HTTPS", "removes") } else { ("HTTP", "adds") };
                return Err(format!(
                    "{source}: tls_server_config: the new version {now} it, but whether this listener speaks HTTPS or HTTP is fixed at start (it serves {was}); restart the agent to switch"
                ));
            }
            (Some(spec), Some(t)) if *spec != t.spec => {
                // New files or new rules: built before anything changes, so
                // a failure leaves the old server and users alike.
                let stamps = spec.stamps();
                if let Err(e) = self.install_tls(spec) {
                    w.waiting = Some(TlsWatch { spec: spec.clone(), stamps });
                    return Err(format!("{source}: tls_server_config: {e}"));
                }
                *t = TlsWatch { spec: spec.clone(), stamps };
                // The TLS files now in force loaded: whatever failed before
                // was about files no longer used.
                self.stats.state(true, true);
                rebuilt = true;
            }
            _ => {}
        }
        let users = parsed.settings.users.len();
        write(&self.settings, Arc::new(parsed.settings));
        tracing::info!(listener = self.listener, file = %source, users, tls_rebuilt = rebuilt, not_after = self.not_after(), "web config: re-read");
        Ok(rebuilt)
    }

    /// notAfter of the served certificate (Unix seconds), if known.
    fn not_after(&self) -> Option<i64> {
        Some(self.stats.not_after.load(Ordering::Relaxed)).filter(|v| *v != i64::MIN)
    }
}

impl Report for Security {
    fn metrics(&self, out: &mut dyn MetricWriter) {
        let s = &self.stats;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        let put = |out: &mut dyn MetricWriter, name: &'static str, result: Option<&str>, v: f64| {
            let d = find(METRICS, name);
            match result {
                Some(r) => out.sample(&d, &[("listener", self.listener), ("result", r)], v),
                None => out.sample(&d, &[("listener", self.listener)], v),
            }
        };
        if self.path.is_some() {
            put(out, "virtpulse_web_config_reloads_total", Some("ok"), n(&s.config_ok));
            put(out, "virtpulse_web_config_reloads_total", Some("error"), n(&s.config_error));
        }
        if self.tls.is_some() {
            put(out, "virtpulse_web_tls_reloads_total", Some("ok"), n(&s.tls_ok));
            put(out, "virtpulse_web_tls_reloads_total", Some("error"), n(&s.tls_error));
            if let Some(t) = self.not_after() {
                put(out, "virtpulse_web_tls_certificate_expiry_timestamp_seconds", None, t as f64);
            }
        }
        let failing = s.config_failing.load(Ordering::Relaxed) || s.tls_failing.load(Ordering::Relaxed);
        put(out, "virtpulse_web_config_last_reload_successful", None, if failing { 0.0 } else { 1.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::tls::tests::{openssl, self_signed};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Replaces `to` as cert-manager and certbot do: a new file renamed
    /// over the old one.
    fn replace(dir: &Path, to: &str, text: &[u8]) {
        let tmp = dir.join(format!(".{to}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(to)).unwrap();
    }

    fn copy(dir: &Path, from: &str, to: &str) {
        replace(dir, to, &std::fs::read(dir.join(from)).unwrap());
    }

    fn basic(user: &str, pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        h.insert(header::AUTHORIZATION, format!("Basic {v}").parse().unwrap());
        h
    }

    impl Security {
        /// The look the first request after a second takes.
        fn look_now(&self) -> Result<(), String> {
            let mut w = self.watch.lock().unwrap();
            self.look(&mut w, false)
        }

        fn counts(&self) -> [u64; 4] {
            let s = &self.stats;
            [&s.config_ok, &s.config_error, &s.tls_ok, &s.tls_error].map(|c| c.load(Ordering::Relaxed))
        }

        fn successful(&self) -> bool {
            !(self.stats.config_failing.load(Ordering::Relaxed) || self.stats.tls_failing.load(Ordering::Relaxed))
        }
    }

    /// Accepts any server certificate: the tests look at which one is served.
    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

    impl rustls::client::danger::ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// A client; with `<name>.pem` and `<name>.key` as its certificate.
    fn client(dir: &Path, cert: Option<&str>) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
        Arc::new(match cert {
            Some(n) => {
                let certs: Vec<_> =
                    CertificateDer::pem_file_iter(dir.join(format!("{n}.pem"))).unwrap().map(Result::unwrap).collect();
                let key = PrivateKeyDer::from_pem_file(dir.join(format!("{n}.key"))).unwrap();
                b.with_client_auth_cert(certs, key).unwrap()
            }
            None => b.with_no_client_auth(),
        })
    }

    /// A real handshake in memory with the listener's TLS server of the
    /// moment; the certificate it served.
    fn handshake(sec: &Security, client: Arc<rustls::ClientConfig>) -> Result<Vec<u8>, rustls::Error> {
        connect(sec, client).map(|c| c.peer_certificates().unwrap()[0].to_vec())
    }

    fn connect(sec: &Security, client: Arc<rustls::ClientConfig>) -> Result<rustls::ClientConnection, rustls::Error> {
        let server = sec.acceptor().unwrap().config().clone();
        let mut s = rustls::ServerConnection::new(server)?;
        let mut c = rustls::ClientConnection::new(client, "localhost".try_into().unwrap())?;
        // Both sides until neither has anything to say (TLS 1.3 session
        // tickets come after the handshake).
        for _ in 0..16 {
            let mut moved = false;
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                moved = true;
                s.read_tls(&mut rd).unwrap();
                s.process_new_packets()?;
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                moved = true;
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets()?;
            }
            if !moved {
                break;
            }
        }
        assert!(!s.is_handshaking() && !c.is_handshaking(), "the handshake did not finish");
        Ok(c)
    }

    fn leaf(dir: &Path, name: &str) -> Vec<u8> {
        CertificateDer::pem_file_iter(dir.join(format!("{name}.pem"))).unwrap().next().unwrap().unwrap().to_vec()
    }

    /// A CA (`<name>.pem`, `<name>.key`).
    fn ca(dir: &Path, name: &str) {
        self_signed(dir, name, &format!("{name} CA"), 1);
    }

    /// A client certificate signed by `ca`.
    fn client_cert(dir: &Path, ca: &str, name: &str) {
        let (key, csr, cert, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        std::fs::write(dir.join(&ext), "extendedKeyUsage=clientAuth\n").unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "1",
                "-extfile",
                &ext,
            ],
        );
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
        let sec = Security::load(&p, "test").unwrap();
        let auth = |user: &str, pass: &str| sec.authorized(&basic(user, pass));
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
        assert_eq!(
            sec.known(&basic("alice", "s3cret")),
            Some(true),
            "the verified credential needs no new bcrypt check"
        );
        assert_eq!(sec.checks.available_permits(), CONCURRENT_CHECKS);

        let bad = write(dir.path(), "bad.yml", "basic_auth_users:\n  alice: plaintext\n");
        let e = Security::load(&bad, "test").err().unwrap();
        assert!(e.contains("basic_auth_users.alice") && e.contains("bcrypt"), "{e}");
        let typo = write(dir.path(), "typo.yml", "basic_auth_user:\n  alice: x\n");
        let e = Security::load(&typo, "test").err().unwrap();
        assert!(e.contains("basic_auth_user"), "{e}");
        let missing = write(
            dir.path(),
            "tls.yml",
            "tls_server_config:\n  cert_file: /nonexistent.pem\n  key_file: /nonexistent.key\n",
        );
        let e = Security::load(&missing, "test").err().unwrap();
        assert!(e.contains("/nonexistent.pem"), "{e}");
    }

    #[test]
    fn a_changed_web_config_is_applied_and_a_broken_one_keeps_the_previous_settings() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let users = |pass: &str| format!("basic_auth_users:\n  alice: {}\n", bcrypt::hash(pass, 4).unwrap());
        let p = write(d, "web.yml", &users("one"));
        let sec = Security::load(&p, "test").unwrap();
        assert!(sec.authorized(&basic("alice", "one")));
        assert_eq!(sec.look_now(), Ok(()), "nothing changed");
        assert_eq!(sec.counts(), [0; 4]);

        replace(d, "web.yml", format!("{}http_server_config:\n  headers:\n    X-Test: yes\n", users("two")).as_bytes());
        assert_eq!(sec.look_now(), Ok(()));
        assert!(sec.authorized(&basic("alice", "two")));
        assert!(!sec.authorized(&basic("alice", "one")), "the old password, cached before, is refused at once");
        let mut resp = Response::new(axum::body::Body::empty());
        sec.add_headers(&mut resp);
        assert_eq!(resp.headers()["x-test"], "yes");
        assert_eq!(sec.counts(), [1, 0, 0, 0]);

        // A bad hash, then text that is not YAML: each refused once, the
        // previous users stay.
        replace(d, "web.yml", b"basic_auth_users:\n  alice: plaintext\n");
        let e = sec.look_now().unwrap_err();
        assert!(e.contains("web.yml: basic_auth_users.alice: not a bcrypt hash"), "{e}");
        assert_eq!(sec.look_now(), Ok(()), "the same broken version is not tried (nor logged) again");
        assert_eq!(sec.counts(), [1, 1, 0, 0]);
        assert!(!sec.successful());
        replace(d, "web.yml", b"basic_auth_users: [\n");
        assert!(sec.look_now().unwrap_err().contains("web.yml"));
        assert!(sec.authorized(&basic("alice", "two")));
        assert_eq!(sec.counts(), [1, 2, 0, 0]);
        // Gone: the same.
        std::fs::remove_file(&p).unwrap();
        assert!(sec.look_now().unwrap_err().contains("cannot read"));
        assert!(sec.authorized(&basic("alice", "two")));

        replace(d, "web.yml", users("three").as_bytes());
        assert_eq!(sec.look_now(), Ok(()));
        assert!(sec.authorized(&basic("alice", "three")) && !sec.authorized(&basic("alice", "two")));
        assert!(sec.successful());
        let mut resp = Response::new(axum::body::Body::empty());
        sec.add_headers(&mut resp);
        assert!(!resp.headers().contains_key("x-test"), "headers are part of the version");
    }

    #[test]
    fn a_rotated_certificate_is_served_and_a_broken_one_keeps_the_previous() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        self_signed(d, "a", "a", 1);
        self_signed(d, "b", "b", 10_000);
        copy(d, "a.pem", "server.pem");
        copy(d, "a.key", "server.key");
        let sec = Security::from_yaml(
            &format!("tls_server_config:\n  cert_file: {0}/server.pem\n  key_file: {0}/server.key\n", d.display()),
            "web.yml",
        )
        .unwrap();
        assert_eq!(handshake(&sec, client(d, None)).unwrap(), leaf(d, "a"));
        let a_expiry = sec.not_after().unwrap();

        // The key first, then the certificate: a look between the two
        // renames would see a pair that does not match and keep "a".
        copy(d, "b.key", "server.key");
        copy(d, "b.pem", "server.pem");
        assert_eq!(sec.look_now(), Ok(()));
        assert_eq!(handshake(&sec, client(d, None)).unwrap(), leaf(d, "b"));
        assert_eq!(sec.counts(), [0, 0, 1, 0]);
        assert!(sec.not_after().unwrap() > a_expiry + 9_000 * 86_400, "the expiry follows the served certificate");

        // Half a certificate: refused once, "b" still served.
        let text = std::fs::read(d.join("a.pem")).unwrap();
        replace(d, "server.pem", &text[..text.len() / 2]);
        let e = sec.look_now().unwrap_err();
        assert!(e.contains("server.pem"), "{e}");
        assert_eq!(sec.look_now(), Ok(()));
        assert_eq!(handshake(&sec, client(d, None)).unwrap(), leaf(d, "b"));
        assert_eq!(sec.counts(), [0, 0, 1, 1]);
        assert!(!sec.successful());
        // A whole certificate whose key is not the one beside it: the same.
        copy(d, "a.pem", "server.pem");
        let e = sec.look_now().unwrap_err();
        assert!(e.contains("server.pem and") && e.contains("do not make a usable certificate"), "{e}");
        assert_eq!(handshake(&sec, client(d, None)).unwrap(), leaf(d, "b"));
        assert_eq!(sec.counts(), [0, 0, 1, 2]);
        // Its key arrives: served.
        copy(d, "a.key", "server.key");
        assert_eq!(sec.look_now(), Ok(()));
        assert_eq!(handshake(&sec, client(d, None)).unwrap(), leaf(d, "a"));
        assert_eq!(sec.not_after(), Some(a_expiry));
        assert!(sec.successful());
    }

    #[test]
    fn a_rotated_client_ca_lets_in_its_clients_only_and_old_sessions_do_not_resume() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        self_signed(d, "server", "localhost", 1);
        for n in ["old", "new"] {
            ca(d, &format!("{n}-ca"));
            client_cert(d, &format!("{n}-ca"), &format!("{n}-client"));
        }
        copy(d, "old-ca.pem", "clients-ca.pem");
        let sec = Security::from_yaml(
            &format!(
                "tls_server_config:\n  cert_file: {0}/server.pem\n  key_file: {0}/server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {0}/clients-ca.pem\n",
                d.display()
            ),
            "web.yml",
        )
        .unwrap();
        // One client config throughout: it keeps the session it was given.
        let old_client = client(d, Some("old-client"));
        assert!(handshake(&sec, old_client.clone()).is_ok());
        let again = connect(&sec, old_client.clone()).unwrap();
        assert_eq!(again.handshake_kind(), Some(rustls::HandshakeKind::Resumed), "it resumes while nothing changed");
        assert!(handshake(&sec, client(d, Some("new-client"))).is_err());
        assert!(handshake(&sec, client(d, None)).is_err(), "a certificate is required");

        copy(d, "new-ca.pem", "clients-ca.pem");
        assert_eq!(sec.look_now(), Ok(()));
        assert!(handshake(&sec, client(d, Some("new-client"))).is_ok());
        assert!(handshake(&sec, client(d, Some("old-client"))).is_err());
        assert!(
            handshake(&sec, old_client).is_err(),
            "a session from before the rotation must not resume past the new CA"
        );
        // A CA file that is not PEM: the new CA stays.
        replace(d, "clients-ca.pem", b"-----BEGIN CERTIFICATE-----\nnot base64\n");
        assert!(sec.look_now().unwrap_err().contains("clients-ca.pem"));
        assert!(handshake(&sec, client(d, Some("new-client"))).is_ok());
        assert_eq!(sec.counts(), [0, 0, 1, 1]);
    }

    #[test]
    fn the_tls_section_follows_the_web_config_and_waits_for_files_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        self_signed(d, "a", "a", 1);
        self_signed(d, "b", "b", 1);
        let tls = |name: &str, extra: &str| {
            format!("tls_server_config:\n  cert_file: {0}/{name}.pem\n  key_file: {0}/{name}.key\n{extra}", d.display())
        };
        let p = write(d, "web.yml", &tls("a", ""));
        let sec = Security::load(&p, "test").unwrap();
        assert_eq!(handshake(&sec, client(d, None)).unwrap(), leaf(d, "a"));

        // Other files, and TLS 1.3 only.
        replace(d, "web.yml", tls("b", "  min_version: TLS13\n").as_bytes());
        assert_eq!(sec.look_now(), Ok(()));
        assert_eq!(handshake(&sec, client(d, None)).unwrap(), leaf(d, "b"));
        assert_eq!(sec.acceptor().unwrap().config().alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(sec.counts(), [1, 0, 1, 0]);

        // Files that are not there yet: refused, "b" stays; tried again
        // when they land, without touching the web config.
        replace(d, "web.yml", tls("c", "").as_bytes());
        let e = sec.look_now().unwrap_err();
        assert!(e.contains("web.yml: tls_server_config: cannot read") && e.contains("c.pem"), "{e}");
        assert_eq!(handshake(&sec, client(d, None)).unwrap(), leaf(d, "b"));
        assert_eq!(sec.look_now(), Ok(()), "nothing new: not tried again");
        assert_eq!(sec.counts(), [1, 1, 1, 1]);
        self_signed(d, "c", "c", 1);
        assert_eq!(sec.look_now(), Ok(()));
        assert_eq!(handshake(&sec, client(d, None)).unwrap(), leaf(d, "c"));
        assert_eq!(sec.counts(), [2, 1, 2, 1]);
        assert!(sec.successful());

        // HTTPS cannot become HTTP: refused, naming why.
        let hash = bcrypt::hash("pw", 4).unwrap();
        replace(d, "web.yml", format!("basic_auth_users:\n  alice: {hash}\n").as_bytes());
        let e = sec.look_now().unwrap_err();
        assert!(e.contains("removes it") && e.contains("fixed at start"), "{e}");
        assert!(!sec.requires_auth(), "the refused version's users are not in force either");
        assert_eq!(handshake(&sec, client(d, None)).unwrap(), leaf(d, "c"));
    }

    #[test]
    fn http_cannot_become_https_by_editing_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        self_signed(d, "a", "a", 1);
        let p = write(d, "web.yml", "http_server_config:\n  headers:\n    X-A: a\n");
        let sec = Security::load(&p, "test").unwrap();
        replace(
            d,
            "web.yml",
            format!("tls_server_config:\n  cert_file: {0}/a.pem\n  key_file: {0}/a.key\n", d.display()).as_bytes(),
        );
        let e = sec.look_now().unwrap_err();
        assert!(e.contains("adds it") && e.contains("restart the agent"), "{e}");
        assert!(!sec.is_tls() && sec.acceptor().is_none());
    }

    #[test]
    fn reload_now_reads_everything_again_changed_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        self_signed(d, "a", "a", 1);
        let p = write(
            d,
            "web.yml",
            &format!("tls_server_config:\n  cert_file: {0}/a.pem\n  key_file: {0}/a.key\n", d.display()),
        );
        let sec = Security::load(&p, "test").unwrap();
        assert_eq!(sec.reload_now(), Ok(()));
        assert_eq!(sec.counts(), [1, 0, 1, 0], "one read of each, though nothing changed");
        // reload_all reaches every listener loaded from a file (not called
        // here: it would reload the other tests' listeners under them).
        assert!(live().iter().any(|s| Arc::ptr_eq(s, &sec)));
        assert_eq!(reload_each(std::slice::from_ref(&sec)), Ok(()));
        assert_eq!(sec.counts(), [2, 0, 2, 0]);
        // A broken file already seen by a look: an explicit reload says so again.
        replace(d, "a.pem", b"garbage");
        assert!(sec.look_now().is_err());
        let e = sec.reload_now().unwrap_err();
        assert!(e.contains("a.pem"), "{e}");
        assert!(reload_each(std::slice::from_ref(&sec)).unwrap_err().contains("a.pem"));
        let gone = Arc::downgrade(&sec);
        drop(sec);
        assert!(gone.upgrade().is_none(), "the list does not keep a stopped listener's settings alive");
    }

    #[tokio::test]
    async fn handshakes_and_requests_look_at_most_once_a_second_and_meet_the_change() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        self_signed(d, "a", "a", 1);
        self_signed(d, "b", "b", 1);
        copy(d, "a.pem", "server.pem");
        copy(d, "a.key", "server.key");
        let mut sec = Security::from_yaml(
            &format!("tls_server_config:\n  cert_file: {0}/server.pem\n  key_file: {0}/server.key\n", d.display()),
            "web.yml",
        )
        .unwrap();
        assert!(!sec.claim(), "just read: no look before a second has passed");
        // As if it had started five seconds ago (no sleeping in tests).
        sec.created = Instant::now().checked_sub(Duration::from_secs(5)).unwrap();
        let sec = Arc::new(sec);
        assert!(sec.claim());
        assert!(!sec.claim(), "one look a second, whoever asks");

        copy(d, "b.key", "server.key");
        copy(d, "b.pem", "server.pem");
        sec.refresh_if_due().await;
        assert_eq!(handshake(&sec, client(d, None)).unwrap(), leaf(d, "a"), "within the second: not looked at yet");
        sec.last_look_ms.store(0, Ordering::Relaxed);
        sec.refresh_if_due().await;
        assert_eq!(handshake(&sec, client(d, None)).unwrap(), leaf(d, "b"), "the caller that looked meets the change");
        assert_eq!(sec.counts(), [0, 0, 1, 0]);
    }

    #[test]
    fn every_reported_metric_is_declared() {
        struct Check(Vec<String>);
        impl MetricWriter for Check {
            fn sample(&mut self, desc: &MetricDesc, labels: &[(&str, &str)], _: f64) {
                assert!(METRICS.contains(desc), "{} is not declared", desc.name);
                assert_eq!(labels[0], ("listener", "test"));
                self.0.push(desc.name.to_string());
            }
            fn histogram(&mut self, _: &MetricDesc, _: &[(&str, &str)], _: &[(f64, u64)], _: f64, _: u64) {
                unreachable!()
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        self_signed(d, "a", "a", 1);
        let p = write(
            d,
            "web.yml",
            &format!("tls_server_config:\n  cert_file: {0}/a.pem\n  key_file: {0}/a.key\n", d.display()),
        );
        let sec = Security::load(&p, "test").unwrap();
        let mut out = Check(Vec::new());
        sec.metrics(&mut out);
        let mut names = out.0.clone();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "{names:?}");
    }
}

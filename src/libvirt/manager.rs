//! Keeps one libvirt connection open: connects in the background (the agent
//! starts even when libvirtd is down), notices loss through the close
//! callback, keepalive or failed calls, and reconnects with capped backoff.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::connection::{Connection, OpenOptions, CLOSE_REASON_CALL_FAILED, CLOSE_REASON_RETARGETED};
use super::error::LibvirtError;

/// A live connection plus a generation number that changes on every
/// reconnect, so per-connection facts (probed stats groups, registered event
/// callbacks) can be redone.
#[derive(Clone)]
pub struct Session {
    pub conn: Arc<Connection>,
    pub generation: u64,
}

#[derive(Clone)]
pub struct ManagerOptions {
    pub uri: String,
    pub read_only: bool,
    pub keepalive_interval: Duration,
    pub keepalive_count: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

pub struct ConnectionManager {
    /// Where and how to connect; a reload may retarget it.
    opts: std::sync::RwLock<ManagerOptions>,
    /// Wakes a connect loop sleeping in its backoff (a retarget).
    retargeted: tokio::sync::Notify,
    current: watch::Sender<Option<Session>>,
    up: AtomicBool,
    connects: AtomicU64,
    failed_attempts: AtomicU64,
    disconnects: AtomicU64,
}

impl ConnectionManager {
    pub fn new(opts: ManagerOptions) -> Arc<Self> {
        let (current, _) = watch::channel(None);
        Arc::new(Self {
            opts: std::sync::RwLock::new(opts),
            retargeted: tokio::sync::Notify::new(),
            current,
            up: AtomicBool::new(false),
            connects: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
        })
    }

    pub fn uri(&self) -> String {
        self.opts().uri
    }

    fn opts(&self) -> ManagerOptions {
        self.opts.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Connects elsewhere (or otherwise) from now on: the current connection
    /// is closed and the loop reconnects with `opts` at once. Everything
    /// that follows sessions (event callbacks, collectors) moves along as
    /// after any reconnect.
    pub fn retarget(&self, opts: ManagerOptions) {
        *self.opts.write().unwrap_or_else(|e| e.into_inner()) = opts;
        if let Some(s) = self.current() {
            s.conn.close_signal().trip(CLOSE_REASON_RETARGETED);
        }
        self.retargeted.notify_one();
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Successful connections so far (the first one included).
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts.load(Ordering::Relaxed)
    }

    pub fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::Relaxed)
    }

    pub fn current(&self) -> Option<Session> {
        self.current.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Session>> {
        self.current.subscribe()
    }

    /// The current session, waiting up to `max` for one (at start-up the
    /// first connection may still be in progress).
    pub async fn session_within(&self, max: Duration) -> Option<Session> {
        if let Some(s) = self.current() {
            return Some(s);
        }
        let mut rx = self.subscribe();
        let waited = tokio::time::timeout(max, rx.wait_for(|s| s.is_some())).await;
        match waited {
            Ok(Ok(s)) => s.clone(),
            _ => None,
        }
    }

    /// Called from a blocking thread after a failed libvirt call: if the
    /// error means the connection is gone, tells the manager to reconnect.
    /// `is_alive` is a local check (no RPC), so this is cheap.
    pub fn note_error(&self, session: &Session, err: &LibvirtError) {
        if session.conn.lost(err) {
            session.conn.close_signal().trip(CLOSE_REASON_CALL_FAILED);
        }
    }

    fn open_options(&self) -> OpenOptions {
        let o = self.opts();
        OpenOptions {
            uri: o.uri,
            read_only: o.read_only,
            keepalive_interval: o.keepalive_interval.as_secs().min(i32::MAX as u64) as i32,
            keepalive_count: o.keepalive_count,
        }
    }

    /// Opens one connection synchronously (used by `--once`).
    pub fn connect_once(&self) -> Result<Session, LibvirtError> {
        let conn = Connection::open(&self.open_options())?;
        Ok(self.publish(conn))
    }

    fn publish(&self, conn: Connection) -> Session {
        let generation = self.connects.fetch_add(1, Ordering::Relaxed) + 1;
        let session = Session { conn: Arc::new(conn), generation };
        self.up.store(true, Ordering::Relaxed);
        self.current.send_replace(Some(session.clone()));
        session
    }

    /// Runs forever: connect, wait for loss, reconnect.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = self.opts().min_backoff;
        loop {
            let opts = self.open_options();
            let (uri, read_only) = (opts.uri.clone(), opts.read_only);
            let attempt = tokio::task::spawn_blocking(move || Connection::open(&opts)).await;
            match attempt {
                Ok(Ok(conn)) => {
                    backoff = self.opts().min_backoff;
                    let session = self.publish(conn);
                    tracing::info!(
                        uri = %uri,
                        generation = session.generation,
                        read_only,
                        keepalive = session.conn.has_keepalive(),
                        "connected to libvirt"
                    );
                    let signal = session.conn.close_signal().clone();
                    drop(session);
                    signal.wait().await;
                    self.up.store(false, Ordering::Relaxed);
                    self.disconnects.fetch_add(1, Ordering::Relaxed);
                    self.current.send_replace(None);
                    if signal.reason_code() == CLOSE_REASON_RETARGETED {
                        tracing::info!(uri = %uri, "closing the libvirt connection to connect as reconfigured");
                    } else {
                        tracing::warn!(uri = %uri, reason = signal.reason(), "libvirt connection lost; reconnecting");
                    }
                }
                Ok(Err(err)) => {
                    self.up.store(false, Ordering::Relaxed);
                    self.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        uri = %uri,
                        error = %err,
                        retry_in = ?backoff,
                        "cannot connect to libvirt; is libvirtd (or virtqemud) running and is the socket readable?"
                    );
                    // A retarget tries the new place at once.
                    if tokio::time::timeout(backoff, self.retargeted.notified()).await.is_ok() {
                        backoff = self.opts().min_backoff;
                    } else {
                        backoff = (backoff * 2).min(self.opts().max_backoff);
                    }
                }
                Err(join_err) => {
                    tracing::error!(error = %join_err, "libvirt connect task failed");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }
}

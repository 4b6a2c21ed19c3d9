//! Is the agent alive, and is it ready? The systemd watchdog, `/healthz`
//! and `/readyz` ask here.
//!
//! Alive: every collector's control loop came round within twice its
//! interval plus a grace (a loop waits at most an interval, and a cycle
//! lasts at most its deadline, which never exceeds the interval), and
//! libvirt's event loop thread ran its heartbeat timer lately. A hung QEMU
//! does not make the agent unhealthy (cycles time out and the loop goes
//! on); a wedged loop or event thread does, and then systemd restarts it.
//!
//! Ready: alive, connected to libvirt, and every collector succeeded
//! lately. Sink state is reported, but a sink outage does not make the
//! agent unready: it keeps collecting and buffering.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::libvirt::ConnectionManager;
use crate::selfmon::{Probe, Registry};

/// How long past its expected silence a loop may stay quiet.
const GRACE: Duration = Duration::from_secs(10);
/// The event loop heartbeat timer fires every second.
const EVENT_LOOP_MAX_SILENCE: Duration = Duration::from_secs(15);

pub(crate) struct Health {
    registry: Arc<Registry>,
    manager: Arc<ConnectionManager>,
}

impl Health {
    pub(crate) fn new(registry: Arc<Registry>, manager: Arc<ConnectionManager>) -> Arc<Self> {
        Arc::new(Self { registry, manager })
    }

    /// `Err` names what is stuck.
    pub(crate) fn liveness(&self) -> Result<(), String> {
        for c in self.registry.collectors() {
            let quiet = c.since_beat();
            let allowed = c.interval() * 2 + GRACE;
            if quiet > allowed {
                return Err(format!(
                    "the {} collector's loop has not come round for {:.0} s (allowed {:.0} s)",
                    c.name,
                    quiet.as_secs_f64(),
                    allowed.as_secs_f64()
                ));
            }
        }
        // `None` until libvirt is initialised (before the first connection).
        if let Some(age) = crate::libvirt::event_loop::heartbeat_age().filter(|a| *a > EVENT_LOOP_MAX_SILENCE) {
            return Err(format!("libvirt's event loop thread has not run for {:.0} s", age.as_secs_f64()));
        }
        Ok(())
    }

    /// (ready, the state of every part, as JSON for `/readyz`).
    pub(crate) fn readiness(&self) -> (bool, Value) {
        let alive = self.liveness();
        let libvirt_up = self.manager.is_up();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut collectors = serde_json::Map::new();
        let mut fresh = true;
        for c in self.registry.collectors() {
            let last = c.last_success_unix();
            let age = (last > 0.0).then(|| (now.as_secs_f64() - last).max(0.0));
            let ok = age.is_some_and(|a| a <= (c.interval() * 2 + GRACE).as_secs_f64());
            fresh &= ok;
            collectors.insert(c.name.to_string(), json!({ "ok": ok, "last_success_age_seconds": age }));
        }
        let mut sinks = serde_json::Map::new();
        for s in self.registry.sinks() {
            sinks.insert(
                s.name.to_string(),
                json!({ "queue_depth": s.depth(), "queue_capacity": s.capacity, "records_dropped": s.dropped_records() }),
            );
        }
        for (name, state) in self.registry.reports().iter().filter_map(|r| r.readiness()) {
            sinks.insert(name.into(), state);
        }
        let ready = alive.is_ok() && libvirt_up && fresh;
        let body = json!({
            "ready": ready,
            "alive": alive.as_ref().map(|_| "ok").unwrap_or_else(|e| e.as_str()),
            "libvirt": { "uri": self.manager.uri(), "up": libvirt_up },
            "collectors": collectors,
            "sinks": sinks,
        });
        (ready, body)
    }
}

impl Probe for Health {
    fn liveness(&self) -> Result<(), String> {
        Health::liveness(self)
    }

    fn readiness(&self) -> (bool, Value) {
        Health::readiness(self)
    }
}

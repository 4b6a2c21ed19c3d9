//! The shared libvirt connection's own metrics (every collector and the
//! event stream use one manager).

use std::sync::Arc;

use crate::libvirt::ConnectionManager;
use crate::selfmon::{find, MetricDesc, MetricWriter, Report};

pub(crate) const METRICS: &[MetricDesc] = &[
    MetricDesc::gauge("libvirt_up", "1 if the agent is connected to libvirt, else 0."),
    MetricDesc::counter("virtpulse_libvirt_connects_total", "Successful libvirt connections (the first included)."),
    MetricDesc::counter("virtpulse_libvirt_connect_failures_total", "Failed libvirt connection attempts."),
    MetricDesc::counter("virtpulse_libvirt_disconnects_total", "libvirt connections lost."),
];

/// The shared connection's report, or with `Some(collector)` that of a
/// collector's own connection (labelled `connection="<collector>"`).
pub(crate) struct ConnectionReport(pub Arc<ConnectionManager>, pub Option<&'static str>);

impl Report for ConnectionReport {
    fn metrics(&self, out: &mut dyn MetricWriter) {
        let m = &self.0;
        let own = self.1.map(|c| ("connection", c));
        let target = m.uri();
        let uri: Vec<(&str, &str)> = std::iter::once(("uri", target.as_str())).chain(own).collect();
        for (name, v) in [
            ("libvirt_up", if m.is_up() { 1.0 } else { 0.0 }),
            ("virtpulse_libvirt_connects_total", m.connects() as f64),
            ("virtpulse_libvirt_connect_failures_total", m.failed_attempts() as f64),
            ("virtpulse_libvirt_disconnects_total", m.disconnects() as f64),
        ] {
            out.sample(&find(METRICS, name), &uri, v);
        }
    }
}

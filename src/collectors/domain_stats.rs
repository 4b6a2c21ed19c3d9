//! Domain statistics: one `virConnectGetAllDomainStats` call per cycle for
//! every stats group the daemon supports, with NOWAIT so that a domain whose
//! job lock is held (a hung QEMU, a migration) gives what it can without
//! blocking the others.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::domain_info::{parse_domain_xml, InfoCache};
use super::{CollectError, Collector, CollectorContext};
use crate::libvirt::stats::{group_names, DomainStats, StatsCapabilities, FLAG_BACKING, FLAG_NOWAIT};
use crate::libvirt::typed_params::KeyInterner;
use crate::libvirt::{LibvirtError, Session};
use crate::record::{Batch, DomainInfo, DomainRef, Field, Record, RecordKind, SCHEMA};
use crate::stat_keys::unit_of;

pub const SOURCE: &str = "domain_stats";

/// Domain XML reads per cycle at most, so a host with hundreds of new
/// domains spreads the work over a few cycles.
const MAX_INFO_READS_PER_CYCLE: usize = 64;

/// Pause before re-asking for records cut short by a busy domain job.
const PARTIAL_RETRY_DELAY: Duration = Duration::from_millis(30);

#[derive(Debug, Clone)]
pub struct Settings {
    pub groups: u32,
    pub backing_chain: bool,
    pub nowait: bool,
    /// How long a cycle waits for a connection in progress (at start-up)
    /// before reporting "not connected"; kept well inside the deadline.
    pub connect_wait: Duration,
}

pub struct DomainStatsCollector {
    ctx: CollectorContext,
    settings: Settings,
    caps: Option<(u64, StatsCapabilities)>,
    info: InfoCache,
    warned_undecoded: HashSet<String>,
    /// Keys in each running domain's last record, to spot records that
    /// NOWAIT cut short because someone else held the domain's job.
    key_counts: HashMap<String, usize>,
    /// Parameter names shared across collections (see `KeyInterner`).
    names: Option<KeyInterner>,
}

impl DomainStatsCollector {
    pub fn new(ctx: CollectorContext, settings: Settings, info: InfoCache) -> Self {
        ctx.registry.wanted_groups.store(u64::from(settings.groups), Ordering::Relaxed);
        Self {
            ctx,
            settings,
            caps: None,
            info,
            warned_undecoded: HashSet::new(),
            key_counts: HashMap::new(),
            names: None,
        }
    }

    /// Lets the events subsystem ask for a domain's XML to be read again.
    pub fn info_invalidation(&self) -> Arc<std::sync::Mutex<HashSet<String>>> {
        self.info.invalidation_handle()
    }

    fn flags(&self) -> u32 {
        let mut f = 0;
        if self.settings.nowait {
            f |= FLAG_NOWAIT;
        }
        if self.settings.backing_chain {
            f |= FLAG_BACKING;
        }
        f
    }

    /// Probes once per connection which groups and flags the daemon accepts.
    async fn capabilities(&mut self, session: &Session) -> Result<StatsCapabilities, CollectError> {
        if let Some((gen, caps)) = self.caps {
            if gen == session.generation {
                return Ok(caps);
            }
        }
        let (wanted, flags) = (self.settings.groups, self.flags());
        let s = session.clone();
        let manager = self.ctx.manager.clone();
        let caps = self
            .ctx
            .tracker
            .run(move || s.conn.probe_stats(wanted, flags).inspect_err(|e| manager.note_error(&s, e)))
            .await??;
        let missing = wanted & !caps.groups;
        tracing::info!(
            groups = ?group_names(caps.groups),
            unsupported = ?group_names(missing),
            nowait = caps.flags & FLAG_NOWAIT != 0,
            backing = caps.flags & FLAG_BACKING != 0,
            "probed domain stats support"
        );
        self.ctx.registry.supported_groups.store(u64::from(caps.groups), Ordering::Relaxed);
        self.caps = Some((session.generation, caps));
        Ok(caps)
    }

    /// Runs `f` with the key interner on a blocking thread. A call stuck
    /// past the deadline keeps its interner; the next call starts a new one.
    async fn with_names<T, F>(&mut self, f: F) -> Result<T, CollectError>
    where
        F: FnOnce(&mut KeyInterner) -> T + Send + 'static,
        T: Send + 'static,
    {
        let mut names = self.names.take().unwrap_or_default();
        let (result, names) = self
            .ctx
            .tracker
            .run(move || {
                let r = f(&mut names);
                (r, names)
            })
            .await?;
        self.names = Some(names);
        Ok(result)
    }

    async fn fetch_stats(
        &mut self,
        session: &Session,
        caps: StatsCapabilities,
    ) -> Result<Vec<DomainStats>, CollectError> {
        let s = session.clone();
        let manager = self.ctx.manager.clone();
        let filter = self.ctx.filter.clone();
        let stats = self
            .with_names(move |names| -> Result<Vec<DomainStats>, LibvirtError> {
                let result = if filter.is_all() {
                    s.conn.all_domain_stats(caps.groups, caps.flags, names)
                } else {
                    // Only the selected domains are asked for, so excluded
                    // domains cost the daemon nothing.
                    s.conn.list_all_domains(0).and_then(|doms| {
                        let chosen: Vec<_> = doms.into_iter().filter(|d| filter.allows(&d.name())).collect();
                        s.conn.domain_list_stats(&chosen, caps.groups, caps.flags, names)
                    })
                };
                result.inspect_err(|e| manager.note_error(&s, e))
            })
            .await??;
        Ok(stats)
    }

    /// With NOWAIT, a domain whose job another client holds at that moment
    /// reports only the stats that need no QEMU monitor. Such records are
    /// asked for once more, shortly after; what is still short is exported
    /// as it is (a hung QEMU stays partial until it resumes) and counted.
    async fn retry_partial(&mut self, session: &Session, caps: StatsCapabilities, stats: &mut [DomainStats]) {
        let suspects: Vec<String> = stats
            .iter()
            .filter(|d| is_running(d) && self.key_counts.get(&d.uuid).is_some_and(|&n| d.params.params.len() < n))
            .map(|d| d.uuid.clone())
            .collect();
        if suspects.is_empty() || caps.flags & FLAG_NOWAIT == 0 {
            return;
        }
        tokio::time::sleep(PARTIAL_RETRY_DELAY).await;
        let s = session.clone();
        let again = self
            .with_names(move |names| {
                let doms: Vec<_> = suspects.iter().filter_map(|u| s.conn.lookup_domain_by_uuid(u).ok()).collect();
                s.conn.domain_list_stats(&doms, caps.groups, caps.flags, names)
            })
            .await;
        let Ok(Ok(again)) = again else { return };
        for fresh in again {
            if let Some(old) = stats.iter_mut().find(|d| d.uuid == fresh.uuid) {
                if fresh.params.params.len() > old.params.params.len() {
                    *old = fresh;
                }
            }
        }
        for d in stats.iter() {
            if is_running(d) && self.key_counts.get(&d.uuid).is_some_and(|&n| d.params.params.len() < n) {
                self.ctx.stats.partial_record();
                tracing::debug!(domain = d.name, "domain stats incomplete: its job is held (busy or hung QEMU)");
            }
        }
    }

    fn remember_key_counts(&mut self, stats: &[DomainStats]) {
        self.key_counts =
            stats.iter().filter(|d| is_running(d)).map(|d| (d.uuid.clone(), d.params.params.len())).collect();
    }

    /// Reads the XML of domains whose cached info is missing or old.
    async fn refresh_info(&mut self, session: &Session, stats: &[DomainStats]) {
        let now = Instant::now();
        let mut due = self.info.due(stats.iter().map(|d| d.uuid.as_str()), now);
        if due.is_empty() {
            return;
        }
        due.truncate(MAX_INFO_READS_PER_CYCLE);
        let s = session.clone();
        let fetched = self
            .ctx
            .tracker
            .run(move || {
                due.into_iter()
                    .map(|uuid| {
                        let r = read_info(&s, &uuid);
                        (uuid, r)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
        let Ok(fetched) = fetched else { return };
        for (uuid, r) in fetched {
            match r {
                Ok(info) => self.info.put(uuid, info, now),
                Err(e) if e.is_no_domain() => {}
                Err(e) => tracing::debug!(uuid, error = %e, "cannot read domain info; will retry"),
            }
        }
    }

    fn make_record(&mut self, d: DomainStats, time: SystemTime) -> Record {
        for u in &d.params.undecoded {
            if self.warned_undecoded.insert(u.name.clone()) {
                tracing::warn!(
                    key = u.name,
                    type_code = u.type_code,
                    "libvirt sent a typed parameter of a type this build does not know; it is skipped (upgrade virtpulse)"
                );
            }
        }
        let info = self.info.get(&d.uuid);
        let fields = d
            .params
            .params
            .into_iter()
            .map(|p| {
                let unit = unit_of(RecordKind::DomainStats, &p.name, &p.value);
                Field { key: p.name, value: p.value, unit }
            })
            .collect();
        Record {
            schema: SCHEMA,
            kind: RecordKind::DomainStats,
            time,
            host: self.ctx.identity.host.clone(),
            libvirt_uri: self.ctx.identity.uri.clone(),
            pool: None,
            event: None,
            domain: Some(DomainRef { name: d.name.into(), uuid: d.uuid.into(), info }),
            fields,
        }
    }
}

/// state.state 1 = running (only running domains can have monitor stats).
fn is_running(d: &DomainStats) -> bool {
    d.params.get("state.state").and_then(|v| v.as_u64()) == Some(1)
}

fn read_info(s: &Session, uuid: &str) -> Result<DomainInfo, LibvirtError> {
    let dom = s.conn.lookup_domain_by_uuid(uuid)?;
    let xml = dom.xml_desc(0)?;
    let mut info = parse_domain_xml(&xml).map_err(|m| LibvirtError::new(0, m))?;
    info.persistent = dom.is_persistent().ok();
    info.autostart = dom.autostart().ok();
    Ok(info)
}

impl Collector for DomainStatsCollector {
    fn name(&self) -> &'static str {
        SOURCE
    }

    async fn collect(&mut self) -> Result<Batch, CollectError> {
        let session =
            self.ctx.manager.session_within(self.settings.connect_wait).await.ok_or(CollectError::NotConnected)?;
        let caps = self.capabilities(&session).await?;
        let mut stats = self.fetch_stats(&session, caps).await?;
        let time = SystemTime::now();
        if !self.ctx.filter.is_all() {
            // The listing and the stats call are not atomic; re-check names.
            stats.retain(|d| self.ctx.filter.allows(&d.name));
        }
        self.retry_partial(&session, caps, &mut stats).await;
        self.remember_key_counts(&stats);
        self.refresh_info(&session, &stats).await;
        let present: HashSet<&str> = stats.iter().map(|d| d.uuid.as_str()).collect();
        self.info.retain(&present);
        let records = stats.into_iter().map(|d| self.make_record(d, time)).collect();
        Ok(Batch { source: SOURCE, snapshot: true, records, ..Default::default() })
    }
}

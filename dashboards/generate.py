#!/usr/bin/env python3
"""Writes the Grafana dashboards (virtpulse-fleet.json, virtpulse-domain.json).

The JSON files are generated: edit this script, run it, commit both. The
test suite (tests/dashboards.rs) checks the files are what this script
writes, and runs every query against a real Prometheus scraping the agent.

    python3 dashboards/generate.py [OUTPUT_DIR]
"""
import json
import os
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
HERE = os.path.dirname(os.path.abspath(__file__))


class Layout:
    """Places panels left to right, wrapping at 24 columns."""

    def __init__(self):
        self.panels = []
        self.x = 0
        self.y = 0
        self.row_h = 0

    def _id(self):
        return len(self.panels) + 1

    def row(self, title):
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0
        self.panels.append({"type": "row", "id": self._id(), "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def add(self, panel, w, h):
        if self.x + w > 24:
            self.y += self.row_h
            self.x, self.row_h = 0, 0
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def target(expr, legend="", ref="A", instant=False):
    return {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend,
            "range": not instant, "instant": instant, "editorMode": "code"}


def targets(*pairs, instant=False):
    return [target(e, l, chr(ord("A") + i), instant) for i, (e, l) in enumerate(pairs)]


def timeseries(title, desc, pairs, unit="short", stack=False, axis=""):
    return {
        "type": "timeseries", "title": title, "description": desc, "datasource": DS,
        "fieldConfig": {"defaults": {
            "unit": unit, "color": {"mode": "palette-classic"}, "min": 0,
            "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                       "spanNulls": False, "axisLabel": axis,
                       "stacking": {"mode": "normal" if stack else "none", "group": "A"}},
        }, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                               "calcs": ["mean", "max", "lastNotNull"], "sortBy": "Max", "sortDesc": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": targets(*pairs),
    }


def stat(title, desc, pairs, unit="none", red_at=None, decimals=0):
    steps = [{"color": "green", "value": None}]
    if red_at is not None:
        steps.append({"color": "red", "value": red_at})
    return {
        "type": "stat", "title": title, "description": desc, "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit, "decimals": decimals, "color": {"mode": "thresholds"},
                                     "thresholds": {"mode": "absolute", "steps": steps}}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "area", "textMode": "auto"},
        "targets": targets(*pairs),
    }


def bargauge(title, desc, pairs, unit="short", max_=None):
    defaults = {"unit": unit, "color": {"mode": "continuous-GrYlRd"}, "min": 0}
    if max_ is not None:
        defaults["max"] = max_
    return {
        "type": "bargauge", "title": title, "description": desc, "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"orientation": "horizontal", "displayMode": "gradient",
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        "targets": [dict(t, instant=True, range=False) for t in targets(*pairs)],
    }


def table(title, desc, pairs):
    return {
        "type": "table", "title": title, "description": desc, "datasource": DS,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True},
        "transformations": [{"id": "merge"}, {"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True, "job": True}}}],
        "targets": [dict(t, format="table") for t in targets(*pairs, instant=True)],
    }


def state_timeline(title, desc, pairs, mappings=None):
    return {
        "type": "state-timeline", "title": title, "description": desc, "datasource": DS,
        "fieldConfig": {"defaults": {"color": {"mode": "thresholds"}, "mappings": mappings or [],
                                     "thresholds": {"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]}},
                        "overrides": []},
        "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8},
        "targets": targets(*pairs),
    }


def variable(name, label, query, multi=True):
    v = {"name": name, "label": label, "type": "query", "datasource": DS, "definition": query,
         "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
         "refresh": 2, "regex": "", "sort": 1, "multi": multi, "includeAll": multi, "options": [], "hide": 0}
    if multi:
        v["allValue"] = ".*"
        v["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    else:
        v["current"] = {}
    return v


def dashboard(uid, title, desc, variables, panels, links):
    return {
        "__inputs": [], "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
                                       {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"}],
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                                  "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": desc, "editable": True, "graphTooltip": 1, "id": None, "uid": uid, "links": links,
        "refresh": "1m", "schemaVersion": 39, "tags": ["virtpulse", "libvirt", "kvm"],
        "templating": {"list": [{"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
                                 "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1, "regex": ""}]
                       + variables},
        "time": {"from": "now-6h", "to": "now"}, "timepicker": {}, "timezone": "", "title": title, "version": 1,
        "panels": panels,
    }


H = 'instance=~"$instance"'
HD = 'instance=~"$instance", domain=~"$domain"'
RI = "[$__rate_interval]"


def node_device_panels(L):
    """Fleet capacity of passthrough hardware: vGPU (mediated device) instances
    left and in use, SR-IOV VFs in use. Hosts without such hardware have no
    series: the stats read 0, the bar gauges stay empty."""
    L.row("Node devices: vGPU and SR-IOV capacity")
    L.add(stat("vGPU (mdev) instances left", "Mediated devices the parents can still create, all types (availableInstances).",
               [(f"sum(libvirt_node_device_mdev_available_instances{{{H}}}) or vector(0)", "left")]), 6, 4)
    L.add(stat("vGPU (mdev) devices created", "Mediated devices that exist, all types.",
               [(f"sum(libvirt_node_device_mdev_devices{{{H}}}) or vector(0)", "created")]), 6, 4)
    L.add(stat("SR-IOV VFs in use", "VFs that running domains hold (hostdev or interface type='hostdev'), over all physical functions.",
               [(f"sum(libvirt_node_device_sriov_vfs_assigned{{{H}}}) or vector(0)", "in use")]), 6, 4)
    L.add(stat("SR-IOV VFs free", "VFs configured on the physical functions that no running domain holds.",
               [(f"sum(libvirt_node_device_sriov_vfs{{{H}}} - libvirt_node_device_sriov_vfs_assigned{{{H}}}) or vector(0)", "free")]), 6, 4)
    L.add(bargauge("vGPU instances left by type", "Per mediated device type, summed over the selected hosts' parents.",
                   [(f"sort_desc(sum by (type) (libvirt_node_device_mdev_available_instances{{{H}}}))", "{{type}}")]), 12, 8)
    L.add(bargauge("SR-IOV VFs in use per host", "Share of each host's configured VFs that running domains hold.",
                   [(f"sort_desc(sum by (instance) (libvirt_node_device_sriov_vfs_assigned{{{H}}}) / (sum by (instance) (libvirt_node_device_sriov_vfs{{{H}}}) > 0))", "{{instance}}")],
                   unit="percentunit", max_=1), 12, 8)
def fleet_snapshots(L):
    """Snapshots across the fleet (the snapshots collector, every 5 minutes)."""
    L.row("Snapshots")
    L.add(stat("Snapshots", "Snapshots libvirt keeps for the selected domains (internal, external and disk-only).",
               [(f"sum(libvirt_domain_snapshots{{{HD}}}) or vector(0)", "snapshots")]), 4, 8)
    L.add(stat("Domains with a snapshot older than 7 days", "What the DomainSnapshotTooOld alert counts (its threshold: 7 days).",
               [(f"count(time() - libvirt_domain_snapshot_oldest_timestamp_seconds{{{HD}}} > 7 * 86400) or vector(0)", "domains")], red_at=1), 4, 8)
    L.add(bargauge("Top 10 domains by oldest snapshot age", "Age of each domain's oldest snapshot: forgotten snapshots fill storage and slow I/O.",
                   [(f"topk(10, time() - libvirt_domain_snapshot_oldest_timestamp_seconds{{{HD}}})", "{{domain}} @ {{instance}}")], unit="s"), 8, 8)
    L.add(bargauge("Top 10 domains by snapshot count", "",
                   [(f"topk(10, libvirt_domain_snapshots{{{HD}}})", "{{domain}} @ {{instance}}")]), 8, 8)


def fleet():
    L = Layout()
    L.row("Fleet overview")
    L.add(stat("Hosts up", "Agents connected to libvirt (libvirt_up == 1).",
               [(f"count(libvirt_up{{{H}}} == 1) or vector(0)", "up")]), 4, 4)
    L.add(stat("Hosts with libvirt down", "Agents answering but not connected to libvirt. Hosts whose agent is not scraped at all are the VirtpulseAgentDown alert.",
               [(f"count(libvirt_up{{{H}}} == 0) or vector(0)", "down")], red_at=1), 4, 4)
    L.add(stat("Domains", "Domains libvirt knows on the selected hosts, running or not.",
               [(f"count(libvirt_domain_info{{{HD}}}) or vector(0)", "domains")]), 4, 4)
    L.add(stat("Crashed or paused on I/O error", "Domains in state crashed (6), or paused (3) with reason I/O error (5).",
               [(f"count(libvirt_domain_state{{{HD}}} == 6 or (libvirt_domain_state{{{HD}}} == 3 and on (instance, uuid) libvirt_domain_state_reason{{{HD}}} == 5)) or vector(0)", "domains")], red_at=1), 4, 4)
    L.add(stat("Oldest collection", "The longest time since any collector last succeeded.",
               [(f"max(virtpulse_collection_age_seconds{{{H}}})", "age")], unit="s", red_at=600), 4, 4)
    L.add(stat("Records dropped (rate)", "Records sinks dropped (queue full) plus events lost before normalization.",
               [(f"sum(rate(virtpulse_sink_records_dropped_total{{{H}}}{RI})) + sum(rate(virtpulse_events_dropped_total{{{H}}}{RI}))", "dropped/s")], unit="short", red_at=0.001, decimals=2), 4, 4)
    L.add(bargauge("Domains by state", "From libvirt_domain_state (codes in docs/metrics.md).",
                   [(f"count(libvirt_domain_state{{{HD}}} == {code}) or vector(0)", name)
                    for code, name in [(1, "running"), (3, "paused"), (5, "shutoff"), (6, "crashed"), (7, "pmsuspended")]]
                   + [(f"count(libvirt_domain_state{{{HD}}} == 0 or libvirt_domain_state{{{HD}}} == 2 or libvirt_domain_state{{{HD}}} == 4) or vector(0)", "other")]), 8, 8)
    L.add(bargauge("Running domains per host", "",
                   [(f"sort_desc(count by (instance) (libvirt_domain_state{{{HD}}} == 1))", "{{instance}}")]), 8, 8)
    L.add(table("Domains not running", "The value is the reason code of the domain's state; state and reason codes are libvirt's (docs/metrics.md).",
                [(f"libvirt_domain_state_reason{{{HD}}} and on (instance, uuid) (libvirt_domain_state{{{HD}}} != 1)", "")]), 8, 8)

    L.row("Top consumers")
    L.add(bargauge("Top 10 by CPU (cores)", "Host CPU time of all the domain's QEMU threads.",
                   [(f"topk(10, sum by (instance, domain) (rate(libvirt_domain_cpu_time_seconds_total{{{HD}}}{RI})))", "{{domain}} @ {{instance}}")]), 6, 8)
    L.add(bargauge("Top 10 by memory (QEMU RSS)", "Resident memory of the QEMU process on the host.",
                   [(f"topk(10, libvirt_domain_balloon_rss_bytes{{{HD}}})", "{{domain}} @ {{instance}}")], unit="bytes"), 6, 8)
    L.add(bargauge("Top 10 by disk I/O", "Read + write bytes per second over every disk (guest I/O is counted on the top layer of each backing chain; max by device picks it).",
                   [(f"topk(10, sum by (instance, domain) (max by (instance, domain, device) (rate(libvirt_domain_block_read_bytes_total{{{HD}}}{RI}) + rate(libvirt_domain_block_write_bytes_total{{{HD}}}{RI}))))", "{{domain}} @ {{instance}}")], unit="Bps"), 6, 8)
    L.add(bargauge("Top 10 by network", "Received + transmitted bytes per second over every interface.",
                   [(f"topk(10, sum by (instance, domain) (rate(libvirt_domain_interface_receive_bytes_total{{{HD}}}{RI}) + rate(libvirt_domain_interface_transmit_bytes_total{{{HD}}}{RI})))", "{{domain}} @ {{instance}}")], unit="Bps"), 6, 8)

    L.row("Events")
    L.add(timeseries("Event rate by type", "Every libvirt event callback the agents receive, per host.",
                     [(f"sum by (family, event, type) (rate(libvirt_events_total{{{H}}}{RI}))", "{{family}} {{event}} {{type}}")], unit="short", axis="events/s"), 12, 8)
    L.add(timeseries("I/O errors, watchdogs and crashes", "Events that usually page someone (0 when none happened).",
                     [(f"sum(increase(libvirt_events_total{{{H}, family=\"domain\", event=~\"io_error|io_error_reason\"}}{RI})) or vector(0)", "I/O errors"),
                      (f"sum(increase(libvirt_events_total{{{H}, family=\"domain\", event=\"watchdog\"}}{RI})) or vector(0)", "watchdogs"),
                      (f"sum(increase(libvirt_events_total{{{H}, family=\"domain\", event=\"lifecycle\", type=~\"crashed|stopped\", detail=~\"panicked|crashloaded|crashed\"}}{RI})) or vector(0)", "crashes")], unit="short"), 12, 8)

    L.row("Domain CPU and memory")
    L.add(timeseries("CPU usage (cores)", "Host CPU time consumed by each domain (all QEMU threads).",
                     [(f"sum by (instance, domain) (rate(libvirt_domain_cpu_time_seconds_total{{{HD}}}{RI}))", "{{domain}} @ {{instance}}")], axis="cores"), 12, 8)
    L.add(timeseries("vCPU steal (host run-queue delay)", "Share of time vCPUs waited for a host CPU, averaged over the domain's vCPUs.",
                     [(f"sum by (instance, domain) (rate(libvirt_domain_vcpu_delay_seconds_total{{{HD}}}{RI})) / count by (instance, domain) (libvirt_domain_vcpu_delay_seconds_total{{{HD}}})", "{{domain}} @ {{instance}}")], unit="percentunit"), 12, 8)
    L.add(timeseries("Assigned memory (balloon current)", "", [(f"libvirt_domain_balloon_current_bytes{{{HD}}}", "{{domain}} @ {{instance}}")], unit="bytes"), 12, 8)
    L.add(timeseries("QEMU RSS on host", "", [(f"libvirt_domain_balloon_rss_bytes{{{HD}}}", "{{domain}} @ {{instance}}")], unit="bytes"), 12, 8)

    L.row("Disk and network")
    L.add(timeseries("Disk throughput", "Top layer of each disk.",
                     [(f"max by (instance, domain, device) (rate(libvirt_domain_block_read_bytes_total{{{HD}}}{RI}))", "read {{domain}} {{device}}"),
                      (f"max by (instance, domain, device) (rate(libvirt_domain_block_write_bytes_total{{{HD}}}{RI}))", "write {{domain}} {{device}}")], unit="Bps"), 12, 8)
    L.add(bargauge("Fullest disks (allocation / capacity)", "",
                   [(f"topk(20, libvirt_domain_block_allocation_bytes{{{HD}}} / (libvirt_domain_block_capacity_bytes{{{HD}}} > 0))", "{{domain}} {{device}} {{backing_index}}")], unit="percentunit", max_=1), 12, 8)
    L.add(timeseries("Network throughput", "",
                     [(f"rate(libvirt_domain_interface_receive_bytes_total{{{HD}}}{RI})", "rx {{domain}} {{interface}}"),
                      (f"rate(libvirt_domain_interface_transmit_bytes_total{{{HD}}}{RI})", "tx {{domain}} {{interface}}")], unit="Bps"), 12, 8)
    L.add(timeseries("Network drops and errors", "Packets dropped or in error, all interfaces of the selection.",
                     [(f"sum(rate(libvirt_domain_interface_receive_drops_total{{{HD}}}{RI}) + rate(libvirt_domain_interface_transmit_drops_total{{{HD}}}{RI}))", "drops"),
                      (f"sum(rate(libvirt_domain_interface_receive_errors_total{{{HD}}}{RI}) + rate(libvirt_domain_interface_transmit_errors_total{{{HD}}}{RI}))", "errors")], unit="pps"), 12, 8)

    L.row("QEMU health, I/O limits and block jobs")
    L.add(stat("QEMU monitors stuck", "Domains whose QEMU monitor a call has waited on for over 30 s (control state occupied): a hung QEMU (the DomainMonitorStuck alert).",
               [(f"count(libvirt_domain_control_state{{{HD}}} == 2 and on (instance, uuid) libvirt_domain_control_state_seconds{{{HD}}} > 30) or vector(0)", "stuck")], red_at=1), 4, 8)
    L.add(bargauge("Disks nearest their IOPS limit", "Read + write operations per second as a share of the disk's total <iotune> operations limit (disks with one).",
                   [(f"topk(10, max by (instance, domain, device) (rate(libvirt_domain_block_read_requests_total{{{HD}}}{RI}) + rate(libvirt_domain_block_write_requests_total{{{HD}}}{RI})) / on (instance, domain, device) max by (instance, domain, device) (libvirt_domain_block_iotune_operations_per_second{{{HD}, direction=\"total\", limit=\"base\"}}))", "{{domain}} {{device}} @ {{instance}}")],
                   unit="percentunit", max_=1), 10, 8)
    L.add(table("Block jobs in flight", "Copy, commit and pull jobs: how far each has come (current / end; 1: a mirror ready to pivot).",
                [(f"libvirt_domain_block_job_current_bytes{{{HD}}} / (libvirt_domain_block_job_end_bytes{{{HD}}} > 0)", "")]), 10, 8)
    networks(L)

    node_device_panels(L)
    L.row("Agent health")
    L.add(state_timeline("libvirt connection", "", [(f"libvirt_up{{{H}}}", "{{instance}}")],
                         mappings=[{"type": "value", "options": {"0": {"text": "down", "color": "red"}, "1": {"text": "up", "color": "green"}}}]), 12, 6)
    L.add(timeseries("Collection duration (last cycle)", "", [(f"virtpulse_collection_duration_seconds{{{H}}}", "{{collector}} @ {{instance}}")], unit="s"), 12, 6)
    L.add(timeseries("Collection cycles by result", "ok, error, timeout, not_connected; skipped while calls are stuck.",
                     [(f"sum by (collector, result) (rate(virtpulse_collections_total{{{H}}}{RI}))", "{{collector}} {{result}}"),
                      (f"sum by (collector) (rate(virtpulse_collection_skipped_total{{{H}}}{RI}))", "{{collector}} skipped")]), 12, 8)
    L.add(timeseries("Stuck libvirt calls", "Calls still running past their deadline (hung QEMU).", [(f"virtpulse_libvirt_stuck_calls{{{H}}}", "{{collector}} @ {{instance}}")]), 12, 8)
    L.add(timeseries("Drops", "Records dropped by sink queues, events lost before normalization, Kafka and OTLP drops by reason.",
                     [(f"sum by (instance, sink) (rate(virtpulse_sink_records_dropped_total{{{H}}}{RI}))", "sink {{sink}} @ {{instance}}"),
                      (f"sum by (instance) (rate(virtpulse_events_dropped_total{{{H}}}{RI}))", "events @ {{instance}}"),
                      (f"sum by (instance, reason) (rate(virtpulse_kafka_records_dropped_total{{{H}}}{RI}))", "kafka {{reason}} @ {{instance}}"),
                      (f"sum by (instance, reason) (rate(virtpulse_otlp_items_dropped_total{{{H}}}{RI}))", "otlp {{reason}} @ {{instance}}")]), 12, 8)
    L.add(timeseries("Kafka spool and OTLP log queue", "Events waiting for the broker (spool) or the OTLP receiver.",
                     [(f"virtpulse_kafka_spool_records{{{H}}}", "kafka spool @ {{instance}}"),
                      (f"virtpulse_otlp_log_queue_records{{{H}}}", "otlp queue @ {{instance}}")]), 12, 8)
    L.add(timeseries("Sink queue fill", "Batches waiting per sink, as a share of the queue.",
                     [(f"virtpulse_sink_queue_depth{{{H}}} / (virtpulse_sink_queue_capacity{{{H}}} > 0)", "{{sink}} @ {{instance}}")], unit="percentunit"), 12, 8)
    L.add(timeseries("Agent memory and CPU", "",
                     [(f"process_resident_memory_bytes{{{H}}} and on (instance, job) virtpulse_build_info", "RSS {{instance}}")], unit="bytes"), 12, 8)
    fleet_snapshots(L)
    return dashboard("virtpulse-fleet", "virtpulse / KVM fleet",
                     "KVM fleet overview from the virtpulse libvirt telemetry agent (metrics in docs/metrics.md).",
                     [variable("instance", "Host", "label_values(libvirt_up, instance)"),
                      variable("domain", "Domain", 'label_values(libvirt_domain_info{instance=~"$instance"}, domain)')],
                     L.panels,
                     [{"title": "Domain drill-down", "type": "link", "url": "/d/virtpulse-domain", "includeVars": True, "keepTime": True}])


def networks(L):
    """Virtual networks and their DHCP pools ([collectors.networks])."""
    L.row("Virtual networks")
    L.add(stat("Active networks", "Virtual networks libvirt runs on the selected hosts (libvirt_network_up == 1).",
               [(f"count(libvirt_network_up{{{H}}} == 1) or vector(0)", "active")]), 4, 8)
    L.add(stat("Inactive networks", "Defined virtual networks that are not running.",
               [(f"count(libvirt_network_up{{{H}}} == 0) or vector(0)", "inactive")]), 4, 8)
    L.add(stat("DHCP pools over 90%", "Networks whose leases fill more than 90% of their DHCP ranges (the DhcpPoolNearlyFull alert fires after 10 minutes).",
               [(f"count(libvirt_network_dhcp_leases{{{H}}} / (libvirt_network_dhcp_addresses{{{H}}} > 0) > 0.9) or vector(0)", "networks")], red_at=1), 4, 8)
    L.add(table("Networks", "Bridge, forward mode, persistence and autostart of every network (libvirt_network_info).",
                [(f"libvirt_network_info{{{H}}}", "")]), 12, 8)
    L.add(bargauge("DHCP pool use", "Leases in use over the addresses in each network's DHCP ranges (IPv4 and IPv6 summed).",
                   [(f"sort_desc(libvirt_network_dhcp_leases{{{H}}} / (libvirt_network_dhcp_addresses{{{H}}} > 0))", "{{network}} @ {{instance}}")],
                   unit="percentunit", max_=1), 12, 8)
    L.add(timeseries("DHCP leases and pool size", "Leases in use (virNetworkGetDHCPLeases) and the addresses in the DHCP ranges, per network.",
                     [(f"libvirt_network_dhcp_leases{{{H}}}", "leases {{network}} @ {{instance}}"),
                      (f"libvirt_network_dhcp_addresses{{{H}}}", "addresses {{network}} @ {{instance}}")]), 12, 8)


D = 'instance=~"$instance", domain="$domain"'


def domain_snapshots(L):
    """One domain's snapshots and checkpoints (the snapshots collector)."""
    L.row("Snapshots")
    L.add(stat("Snapshots", "Snapshots libvirt keeps for the domain.",
               [(f"libvirt_domain_snapshots{{{D}}}", "snapshots")]), 4, 6)
    L.add(stat("Oldest snapshot age", "Age of the domain's oldest snapshot (0 when it has none); red past 7 days, the DomainSnapshotTooOld threshold.",
               [(f"(time() - libvirt_domain_snapshot_oldest_timestamp_seconds{{{D}}}) or (0 * libvirt_domain_snapshots{{{D}}})", "age")], unit="s", red_at=7 * 86400), 4, 6)
    L.add(stat("Checkpoints", "Checkpoints (disk bitmaps for incremental backups) libvirt keeps for the domain.",
               [(f"libvirt_domain_checkpoints{{{D}}}", "checkpoints")]), 4, 6)
    L.add(timeseries("Snapshots and checkpoints over time", "",
                     [(f"libvirt_domain_snapshots{{{D}}}", "snapshots"),
                      (f"libvirt_domain_checkpoints{{{D}}}", "checkpoints")]), 12, 6)


def domain():
    L = Layout()
    L.row("Domain")
    L.add(table("Domain info", "Descriptive data (libvirt_domain_info) of the domain.",
                [(f"libvirt_domain_info{{{D}}}", "")]), 16, 4)
    L.add(state_timeline("State", "libvirt state code (1 running, 3 paused, 5 shut off, 6 crashed).",
                         [(f"libvirt_domain_state{{{D}}}", "state")],
                         mappings=[{"type": "value", "options": {"1": {"text": "running", "color": "green"}, "3": {"text": "paused", "color": "yellow"},
                                                                  "5": {"text": "shut off", "color": "blue"}, "6": {"text": "crashed", "color": "red"}}}]), 8, 4)

    L.row("QEMU monitor and CPU placement")
    L.add(state_timeline("QEMU monitor", "The domain's control interface: ok, job (a job uses it), occupied (a call waits on it: long means a hung QEMU), error.",
                         [(f"libvirt_domain_control_state{{{D}}}", "monitor")],
                         mappings=[{"type": "value", "options": {"0": {"text": "ok", "color": "green"}, "1": {"text": "job", "color": "blue"},
                                                                  "2": {"text": "occupied", "color": "orange"}, "3": {"text": "error", "color": "red"}}}]), 8, 6)
    L.add(timeseries("Monitor busy for", "How long the control interface has been in its current state (0 when ok).",
                     [(f"libvirt_domain_control_state_seconds{{{D}}}", "seconds")], unit="s"), 8, 6)
    L.add(table("CPU placement (metrics.cpu_placement)", "Pinned vCPUs and emulator threads (host CPU sets) and the CPU shares from the domain XML.",
                [(f"libvirt_domain_vcpu_pinning_info{{{D}}}", ""),
                 (f"libvirt_domain_emulator_pinning_info{{{D}}}", ""),
                 (f"libvirt_domain_cpu_shares{{{D}}}", "")]), 8, 6)

    L.row("CPU")
    L.add(timeseries("CPU usage (cores)", "Host CPU time of all QEMU threads, split into guest user and system time.",
                     [(f"sum(rate(libvirt_domain_cpu_time_seconds_total{{{D}}}{RI}))", "total"),
                      (f"sum(rate(libvirt_domain_cpu_user_seconds_total{{{D}}}{RI}))", "user"),
                      (f"sum(rate(libvirt_domain_cpu_system_seconds_total{{{D}}}{RI}))", "system")], axis="cores"), 8, 8)
    L.add(timeseries("Per vCPU", "Time each vCPU ran.",
                     [(f"rate(libvirt_domain_vcpu_time_seconds_total{{{D}}}{RI})", "vCPU {{vcpu}}")], unit="percentunit"), 8, 8)
    L.add(timeseries("vCPU steal and wait", "Delay: the vCPU was runnable but waited for a host CPU (steal). Wait: waiting on I/O.",
                     [(f"rate(libvirt_domain_vcpu_delay_seconds_total{{{D}}}{RI})", "steal vCPU {{vcpu}}"),
                      (f"rate(libvirt_domain_vcpu_wait_seconds_total{{{D}}}{RI})", "wait vCPU {{vcpu}}")], unit="percentunit"), 8, 8)

    L.row("Memory")
    L.add(timeseries("Balloon vs RSS", "Memory assigned to the guest (balloon current), its maximum, and what QEMU holds on the host (RSS).",
                     [(f"libvirt_domain_balloon_current_bytes{{{D}}}", "assigned"),
                      (f"libvirt_domain_balloon_maximum_bytes{{{D}}}", "maximum"),
                      (f"libvirt_domain_balloon_rss_bytes{{{D}}}", "QEMU RSS")], unit="bytes"), 24, 8)

    L.row("Disks")
    L.add(timeseries("Disk IOPS", "Per disk (guest I/O shows on the top layer of the backing chain; max by device picks it).",
                     [(f"max by (device) (rate(libvirt_domain_block_read_requests_total{{{D}}}{RI}))", "read {{device}}"),
                      (f"max by (device) (rate(libvirt_domain_block_write_requests_total{{{D}}}{RI}))", "write {{device}}"),
                      (f"max by (device) (rate(libvirt_domain_block_flush_requests_total{{{D}}}{RI}))", "flush {{device}}")], unit="iops"), 8, 8)
    L.add(timeseries("Disk throughput", "Per disk (guest I/O shows on the top layer of the backing chain; max by device picks it).",
                     [(f"max by (device) (rate(libvirt_domain_block_read_bytes_total{{{D}}}{RI}))", "read {{device}}"),
                      (f"max by (device) (rate(libvirt_domain_block_write_bytes_total{{{D}}}{RI}))", "write {{device}}")], unit="Bps"), 8, 8)
    L.add(timeseries("Disk latency (average per request)", "Time spent per request over the interval (0 when idle).",
                     [(f"max by (device) (rate(libvirt_domain_block_read_time_seconds_total{{{D}}}{RI})) / clamp_min(max by (device) (rate(libvirt_domain_block_read_requests_total{{{D}}}{RI})), 1e-9)", "read {{device}}"),
                      (f"max by (device) (rate(libvirt_domain_block_write_time_seconds_total{{{D}}}{RI})) / clamp_min(max by (device) (rate(libvirt_domain_block_write_requests_total{{{D}}}{RI})), 1e-9)", "write {{device}}"),
                      (f"max by (device) (rate(libvirt_domain_block_flush_time_seconds_total{{{D}}}{RI})) / clamp_min(max by (device) (rate(libvirt_domain_block_flush_requests_total{{{D}}}{RI})), 1e-9)", "flush {{device}}")], unit="s"), 8, 8)
    L.add(timeseries("Disk I/O limits", "The disks' <iotune> limits (set limits only), beside the IOPS and throughput panels: a disk at its limit is throttled.",
                     [(f"libvirt_domain_block_iotune_operations_per_second{{{D}}}", "{{device}} {{direction}} {{limit}} IOPS"),
                      (f"libvirt_domain_block_iotune_bytes_per_second{{{D}}}", "{{device}} {{direction}} {{limit}} B/s")]), 24, 6)
    L.add(table("Disk allocation and capacity", "Every layer of every disk's backing chain.",
                [(f"libvirt_domain_block_allocation_bytes{{{D}}}", ""),
                 (f"libvirt_domain_block_capacity_bytes{{{D}}}", ""),
                 (f"libvirt_domain_block_physical_bytes{{{D}}}", "")]), 24, 6)

    L.row("Network")
    L.add(timeseries("Network throughput", "Per interface.",
                     [(f"rate(libvirt_domain_interface_receive_bytes_total{{{D}}}{RI})", "rx {{interface}}"),
                      (f"rate(libvirt_domain_interface_transmit_bytes_total{{{D}}}{RI})", "tx {{interface}}")], unit="Bps"), 8, 8)
    L.add(timeseries("Network packets", "Per interface.",
                     [(f"rate(libvirt_domain_interface_receive_packets_total{{{D}}}{RI})", "rx {{interface}}"),
                      (f"rate(libvirt_domain_interface_transmit_packets_total{{{D}}}{RI})", "tx {{interface}}")], unit="pps"), 8, 8)
    L.add(timeseries("Network drops and errors", "Per interface.",
                     [(f"rate(libvirt_domain_interface_receive_drops_total{{{D}}}{RI})", "rx drops {{interface}}"),
                      (f"rate(libvirt_domain_interface_transmit_drops_total{{{D}}}{RI})", "tx drops {{interface}}"),
                      (f"rate(libvirt_domain_interface_receive_errors_total{{{D}}}{RI})", "rx errors {{interface}}"),
                      (f"rate(libvirt_domain_interface_transmit_errors_total{{{D}}}{RI})", "tx errors {{interface}}")], unit="pps"), 8, 8)

    L.row("Jobs and migrations")
    L.add(timeseries("Job progress", "Share of the job's data processed: the running job, or the last one (type completed/failed/cancelled) while it stays on view.",
                     [(f"libvirt_domain_job_data_processed_bytes_total{{{D}}} / (libvirt_domain_job_data_total_bytes{{{D}}} > 0)", "{{operation}} {{type}}")], unit="percentunit"), 8, 8)
    L.add(timeseries("Job memory transfer", "Memory processed and remaining (migrations, saves, dumps).",
                     [(f"libvirt_domain_job_memory_processed_bytes_total{{{D}}}", "processed {{operation}}"),
                      (f"libvirt_domain_job_memory_remaining_bytes{{{D}}}", "remaining {{operation}}")], unit="bytes"), 8, 8)
    L.add(timeseries("Job time", "Elapsed time of the job.",
                     [(f"libvirt_domain_job_time_elapsed_seconds{{{D}}}", "elapsed {{operation}} {{type}}")], unit="s"), 8, 8)

    L.row("Guest (collectors.guest)")
    L.add(bargauge("Filesystem use", "How full each guest filesystem is, as the guest agent reports it.",
                   [(f"libvirt_domain_guest_filesystem_used_bytes{{{D}}} / (libvirt_domain_guest_filesystem_size_bytes{{{D}}} > 0)", "{{mountpoint}}")],
                   unit="percentunit", max_=1), 8, 8)
    L.add(timeseries("Filesystem used", "Used bytes per guest filesystem.",
                     [(f"libvirt_domain_guest_filesystem_used_bytes{{{D}}}", "{{mountpoint}}")], unit="bytes"), 8, 8)
    L.add(timeseries("Guest load and users", "Load averages and logged-in users as the guest sees them.",
                     [(f"libvirt_domain_guest_load1{{{D}}}", "load1"),
                      (f"libvirt_domain_guest_load5{{{D}}}", "load5"),
                      (f"libvirt_domain_guest_users{{{D}}}", "users")]), 8, 8)
    L.add(table("Guest OS", "What the guest agent says runs in the guest.",
                [(f"libvirt_domain_guest_os_info{{{D}}}", "")]), 12, 5)
    L.add(table("Guest addresses", "IP addresses per interface, by source (lease, arp, agent).",
                [(f"libvirt_domain_guest_interface_address_info{{{D}}}", "")]), 12, 5)

    L.row("Events")
    L.add(timeseries("Event timeline", "Events of this domain by callback and type.",
                     [(f"sum by (event, type, detail) (increase(libvirt_domain_events_total{{{D}}}{RI}))", "{{event}} {{type}} {{detail}}")], stack=True), 16, 8)
    L.add(table("Last notable events", "When the domain last had an I/O error, watchdog, crash, block threshold, memory failure, control error or failed device removal (Unix time; empty when never).",
                [(f"libvirt_domain_last_event_timestamp_seconds{{{D}}} * 1000", "")]), 8, 8)
    domain_snapshots(L)
    return dashboard("virtpulse-domain", "virtpulse / KVM domain",
                     "One domain in depth, from the virtpulse libvirt telemetry agent.",
                     [variable("instance", "Host", "label_values(libvirt_up, instance)"),
                      variable("domain", "Domain", 'label_values(libvirt_domain_info{instance=~"$instance"}, domain)', multi=False)],
                     L.panels,
                     [{"title": "Fleet", "type": "link", "url": "/d/virtpulse-fleet", "includeVars": True, "keepTime": True}])


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else HERE
    for name, d in (("virtpulse-fleet.json", fleet()), ("virtpulse-domain.json", domain())):
        with open(os.path.join(out, name), "w") as f:
            json.dump(d, f, indent=1, sort_keys=False)
            f.write("\n")


if __name__ == "__main__":
    main()

//! A realistic domain-stats snapshot without libvirt: the keys a 2-vCPU
//! KVM guest with a NIC and a two-layer disk reports, for N domains.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::SystemTime;

use virtpulse::collectors::domain_stats::metrics::DOMAIN_STATS;
use virtpulse::record::mapping::unit_of;
use virtpulse::record::{DomainInfo, DomainRef, Field, Identity, Record, RecordKind};
use virtpulse::value::TypedValue;

/// One domain's keys as a 2-vCPU KVM guest with a NIC and a two-layer disk reports them.
pub fn domain_fields(i: usize) -> Vec<(String, TypedValue)> {
    let mut f: Vec<(String, TypedValue)> = Vec::new();
    let u = |v: u64| TypedValue::ULLong(v);
    f.push(("state.state".into(), TypedValue::Int(1)));
    f.push(("state.reason".into(), TypedValue::Int(1)));
    for k in ["cpu.time", "cpu.user", "cpu.system", "cpu.haltpoll.success.time", "cpu.haltpoll.fail.time"] {
        f.push((k.into(), u(1_000_000_000 + i as u64)));
    }
    for k in ["balloon.current", "balloon.maximum", "balloon.rss", "balloon.last-update"] {
        f.push((k.into(), u(32768)));
    }
    f.push(("vcpu.current".into(), TypedValue::UInt(2)));
    f.push(("vcpu.maximum".into(), TypedValue::UInt(2)));
    let kvm = [
        "exits",
        "halt_exits",
        "io_exits",
        "mmio_exits",
        "signal_exits",
        "irq_exits",
        "request_irq_exits",
        "halt_successful_poll",
        "halt_attempted_poll",
        "halt_poll_invalid",
        "halt_wakeup",
        "halt_poll_success_ns",
        "halt_poll_fail_ns",
        "halt_wait_ns",
        "pf_taken",
        "pf_fixed",
        "pf_emulate",
        "pf_spurious",
        "insn_emulation",
        "insn_emulation_fail",
        "fpu_reload",
        "host_state_reload",
        "invlpg",
        "nmi_injections",
        "irq_injections",
        "hypercalls",
        "preemption_reported",
        "preemption_other",
        "directed_yield_successful",
        "nested_run",
        "l1d_flush",
        "tlb_flush",
        "req_event",
    ];
    for v in 0..2 {
        f.push((format!("vcpu.{v}.state"), TypedValue::Int(1)));
        for k in ["time", "wait", "delay"] {
            f.push((format!("vcpu.{v}.{k}"), u(5_000_000)));
        }
        for k in kvm {
            f.push((format!("vcpu.{v}.{k}.sum"), u(17)));
        }
        f.push((format!("vcpu.{v}.guest_mode.cur"), TypedValue::Boolean(false)));
        f.push((format!("vcpu.{v}.blocking.cur"), TypedValue::Boolean(true)));
    }
    f.push(("net.count".into(), TypedValue::UInt(1)));
    f.push(("net.0.name".into(), TypedValue::String(format!("vnet{i}").into())));
    for k in ["rx.bytes", "rx.pkts", "rx.errs", "rx.drop", "tx.bytes", "tx.pkts", "tx.errs", "tx.drop"] {
        f.push((format!("net.0.{k}"), u(4096)));
    }
    f.push(("block.count".into(), TypedValue::UInt(2)));
    for b in 0..2 {
        f.push((format!("block.{b}.name"), TypedValue::String("vda".into())));
        f.push((
            format!("block.{b}.path"),
            TypedValue::String(format!("/var/lib/libvirt/images/d{i}-{b}.qcow2").into()),
        ));
        f.push((format!("block.{b}.backingIndex"), TypedValue::UInt(b + 1)));
        if b == 0 {
            for k in ["rd.reqs", "rd.bytes", "rd.times", "wr.reqs", "wr.bytes", "wr.times", "fl.reqs", "fl.times"] {
                f.push((format!("block.{b}.{k}"), u(123_456)));
            }
        }
        for k in ["allocation", "capacity", "physical"] {
            f.push((format!("block.{b}.{k}"), u(64 << 20)));
        }
    }
    for k in [
        "remote_tlb_flush.sum",
        "mmu_shadow_zapped.sum",
        "mmu_cache_miss.sum",
        "pages_4k.cur",
        "pages_2m.cur",
        "max_mmu_page_hash_collisions.max",
    ] {
        f.push((format!("vm.{k}"), u(9)));
    }
    f
}

pub fn snapshot(domains: usize) -> Vec<Record> {
    let now = SystemTime::now();
    let identity = Identity { host: "hv".into(), uri: "qemu:///system".into() };
    (0..domains)
        .map(|i| Record {
            domain: Some(DomainRef {
                name: format!("instance-{i:08x}").into(),
                uuid: format!("00000000-0000-4000-8000-{i:012x}").into(),
                info: Some(Arc::new(DomainInfo { vcpus: Some(2), os_type: Some("hvm".into()), ..Default::default() })),
            }),
            fields: domain_fields(i)
                .into_iter()
                .map(|(k, v)| Field { unit: unit_of(&DOMAIN_STATS, &k, &v), key: k.into(), value: v })
                .collect(),
            ..Record::new(&identity, RecordKind::of(&DOMAIN_STATS), now)
        })
        .collect()
}

//! What the event benchmarks share: a tiny real guest, producer threads
//! that make it emit metadata-change events as fast as libvirtd accepts,
//! and the agent's CPU time.

use std::ffi::CString;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use virt_sys as sys;

pub fn virsh(args: &[&str]) -> bool {
    Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts (again) a transient guest `name` with no OS.
pub fn start_guest(name: &str) {
    let kvm = std::path::Path::new("/dev/kvm").exists() && virsh(&["domcapabilities", "--virttype", "kvm"]);
    let xml = format!(
        "<domain type='{}'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>",
        if kvm { "kvm" } else { "qemu" }
    );
    let path = std::env::temp_dir().join(format!("{name}.xml"));
    std::fs::write(&path, xml).unwrap();
    virsh(&["destroy", name]);
    assert!(virsh(&["create", path.to_str().unwrap()]), "cannot start the bench guest");
}

pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
        / tck
}

/// Changes the guest's description as fast as libvirtd accepts (one
/// metadata-change event per call) until `stop`; counts the calls.
pub fn produce(guest: &str, stop: Arc<AtomicBool>, count: Arc<AtomicU64>) {
    let uri = CString::new("qemu:///system").unwrap();
    let name = CString::new(guest).unwrap();
    // SAFETY: plain libvirt calls on objects this thread owns.
    unsafe {
        let conn = sys::virConnectOpen(uri.as_ptr());
        assert!(!conn.is_null(), "cannot open a read-write connection");
        let dom = sys::virDomainLookupByName(conn, name.as_ptr());
        assert!(!dom.is_null());
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let text = CString::new(format!("bench {i}")).unwrap();
            if sys::virDomainSetMetadata(
                dom,
                sys::VIR_DOMAIN_METADATA_DESCRIPTION as i32,
                text.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                sys::VIR_DOMAIN_AFFECT_LIVE,
            ) == 0
            {
                count.fetch_add(1, Ordering::Relaxed);
            }
            i += 1;
        }
        sys::virDomainFree(dom);
        sys::virConnectClose(conn);
    }
}

/// `n` producer threads (see `produce`) running until `finish`.
pub struct Producers {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    workers: Vec<std::thread::JoinHandle<()>>,
    started: std::time::Instant,
}

impl Producers {
    pub fn start(guest: &'static str, n: usize) -> Producers {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let workers = (0..n)
            .map(|_| {
                let (stop, count) = (stop.clone(), count.clone());
                std::thread::spawn(move || produce(guest, stop, count))
            })
            .collect();
        Producers { stop, count, workers, started: std::time::Instant::now() }
    }

    // Each bench compiles this module on its own; not all of them sample.
    #[allow(dead_code)]
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Stops the threads; returns (events produced, seconds they ran).
    pub fn finish(self) -> (u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        self.workers.into_iter().for_each(|w| w.join().unwrap());
        (self.count.load(Ordering::Relaxed), self.started.elapsed().as_secs_f64())
    }
}

//! The Linux test guest (scripts/build-test-guest.sh): Debian's kernel and a
//! busybox initramfs, under TCG, with a command channel on its second serial
//! port, for the events that need a guest that acts.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::guest::{Guest, GuestSpec};

pub fn image_dir() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var("VIRTPULSE_TEST_GUEST_DIR").unwrap_or_else(|_| "/var/cache/virtpulse/test-guest".into()),
    );
    if !dir.join("initrd.gz").exists() {
        let st = std::process::Command::new(super::project_root().join("scripts/build-test-guest.sh"))
            .status()
            .expect("build-test-guest.sh");
        assert!(st.success(), "scripts/build-test-guest.sh failed");
    }
    dir
}

pub struct LinuxGuest {
    pub guest: Guest,
    console: Console,
}

/// The guest's command channel: its second serial port, a unix socket that
/// QEMU listens on (`<serial type='unix'><source mode='bind' path=…/>`).
/// The guest's /init runs each line it reads there as a shell command.
pub struct Console {
    sock: PathBuf,
    /// One connection for the guest's whole life: QEMU's socket serves one
    /// client at a time, and a closed client can lose what it sent.
    conn: std::sync::Mutex<Option<UnixStream>>,
    counter: std::sync::atomic::AtomicU32,
}

impl LinuxGuest {
    /// Boots the guest and waits until its command loop answers.
    pub fn start(tag: &str, extra_devices: &str) -> LinuxGuest {
        Self::start_with(tag, extra_devices, "")
    }

    /// `domain_extra`: top-level elements such as `<maxMemory>` and `<cpu>`.
    pub fn start_with(tag: &str, extra_devices: &str, domain_extra: &str) -> LinuxGuest {
        let img = image_dir();
        let name = Guest::name_for(tag);
        let sock_dir = super::scratch_dir(&format!("{name}-sock"));
        super::set_mode(sock_dir.path(), 0o1777);
        let sock = sock_dir.path().join("cmd.sock");
        let devices = format!(
            "<interface type='ethernet' trustGuestRxFilters='yes'><model type='virtio'/></interface>\n\
             <serial type='unix'><source mode='bind' path='{}'/><target port='1'/></serial>\n\
             <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\n\
             <watchdog model='i6300esb' action='none'/>\n<panic model='isa'/>\n{extra_devices}",
            sock.display()
        );
        let spec = GuestSpec {
            vcpus: 1,
            memory_mib: 192,
            extra_devices: devices,
            linux: Some((img.join("vmlinuz"), img.join("initrd.gz"))),
            no_default_nic: true,
            domain_extra: domain_extra.to_string(),
            ..Default::default()
        };
        let guest = Guest::start_named(&name, spec);
        std::mem::forget(sock_dir); // removed with the guest's own directory sweep
        let g = LinuxGuest { guest, console: Console::new(&sock) };
        g.console.wait_ready();
        g
    }

    /// Runs a shell command in the guest; returns its output.
    pub fn run(&self, cmd: &str) -> String {
        self.console.run(cmd)
    }

    /// Sends a command without waiting for it to finish (it may never, e.g. a panic).
    pub fn send(&self, cmd: &str) {
        self.console.send(cmd)
    }
    /// Boots a guest with an ext4 filesystem on vda at /data, an IPv4
    /// address on eth0 and, with `agent`, Debian's qemu-guest-agent running
    /// (`start-ga`); waits until `virsh guestinfo` sees the filesystem.
    pub fn with_data(tag: &str, agent: bool) -> LinuxGuest {
        let lg = Self::start(tag, "");
        let out = lg.run(
            "mke2fs -q /dev/vda && mkdir -p /data && mount -t ext4 /dev/vda /data && \
             dd if=/dev/zero of=/data/f bs=1k count=3072 2>/dev/null; sync; grep -c ' /data ' /proc/mounts",
        );
        assert!(out.trim_end().ends_with('1'), "mounting /data: {out}");
        lg.run("ip link set eth0 up && ip addr add 192.0.2.10/24 dev eth0");
        if agent {
            lg.run("start-ga");
            let name = lg.guest.name.clone();
            let deadline = Instant::now() + Duration::from_secs(240);
            while !super::virsh::run(&["guestinfo", &name]).is_ok_and(|o| o.contains("fs.count")) {
                assert!(Instant::now() < deadline, "the guest agent of {name} does not answer virsh guestinfo");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        lg
    }
}

impl Console {
    /// The channel of a guest whose serial socket is `sock` (on this host's
    /// side of any root the guest runs in).
    pub fn new(sock: &std::path::Path) -> Console {
        Console { sock: sock.to_path_buf(), conn: std::sync::Mutex::new(None), counter: Default::default() }
    }

    /// Waits until the guest's command loop answers.
    pub fn wait_ready(&self) {
        // TCG boots slowly when several guests share two loaded cores.
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            if let Ok(out) = self.try_run("echo ready", Duration::from_secs(3)) {
                if out.contains("ready") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the Linux test guest did not come up");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn with_conn<T>(&self, f: impl FnOnce(&mut UnixStream) -> std::io::Result<T>) -> std::io::Result<T> {
        let mut guard = self.conn.lock().unwrap();
        if guard.is_none() {
            let s = UnixStream::connect(&self.sock)?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            *guard = Some(s);
        }
        let result = f(guard.as_mut().unwrap());
        if result.is_err() {
            *guard = None;
        }
        result
    }

    fn try_run(&self, cmd: &str, timeout: Duration) -> std::io::Result<String> {
        let n = self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mark = format!("@@{n}@@");
        self.with_conn(|s| {
            s.write_all(format!("echo {mark}; {cmd}\n").as_bytes())?;
            let deadline = Instant::now() + timeout;
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            while Instant::now() < deadline {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => return Err(e),
                }
                let text = String::from_utf8_lossy(&out);
                if let Some(at) = text.find(&format!("{mark}\n")) {
                    let after = &text[at + mark.len() + 1..];
                    if let Some(end) = after.find("##done") {
                        return Ok(after[..end].to_string());
                    }
                }
            }
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer to {cmd:?}")))
        })
    }

    /// Runs a shell command in the guest; returns its output.
    pub fn run(&self, cmd: &str) -> String {
        self.try_run(cmd, Duration::from_secs(120)).unwrap_or_else(|e| panic!("guest command {cmd:?}: {e}"))
    }

    /// Sends a command without waiting for it to finish (it may never, e.g. a panic).
    pub fn send(&self, cmd: &str) {
        self.with_conn(|s| s.write_all(format!("{cmd}\n").as_bytes())).expect("command socket");
    }
}

//! A slow disk for the Kafka spool, without device-mapper (this kernel has
//! none, so no dm-delay): an ext4 filesystem on a loop device over a sparse
//! file, mounted in a scratch directory, and a cgroup v1 blkio group that
//! throttles writes (IOPS and/or bytes per second) on that loop device.
//! Processes moved into the group (`add_process`) are slowed on that
//! device only: synchronous writes (fdatasync, O_DSYNC) are submitted by the
//! process itself and are throttled; plain buffered writes are written back
//! later by the kernel's flusher threads, which cgroup v1 does not charge to
//! the group, so they are not. The Kafka spool with `spool_sync = "always"`
//! (its default) fdatasyncs every group of events: that is what is slowed.
//!
//! Everything is named after the test process's PID; leftovers of killed
//! runs (mount, loop device, cgroup) are swept on the next `SlowDisk::new`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BASE: &str = "/var/tmp/vp-slowdisk";
const BLKIO: &str = "/sys/fs/cgroup/blkio";
const CGROUP_PREFIX: &str = "virtpulse-slowdisk-";

/// Write limits on the device (None: unlimited).
#[derive(Debug, Clone, Copy, Default)]
pub struct Throttle {
    pub write_iops: Option<u64>,
    pub write_bps: Option<u64>,
}

pub struct SlowDisk {
    /// Where the filesystem is mounted.
    pub mount: PathBuf,
    /// The loop device's `major:minor`.
    pub device: String,
    dir: PathBuf,
    loop_dev: String,
    cgroup: PathBuf,
}

fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn must(cmd: &str, args: &[&str]) -> String {
    sh(cmd, args).unwrap_or_else(|e| panic!("{e}"))
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Moves every process of `cgroup` back to the root group, then removes it.
fn remove_cgroup(cgroup: &Path) {
    for _ in 0..50 {
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter(|l| !l.trim().is_empty()) {
            let _ = std::fs::write(Path::new(BLKIO).join("cgroup.procs"), pid.trim());
        }
        if std::fs::remove_dir(cgroup).is_ok() || !cgroup.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("slowdisk: cannot remove {}", cgroup.display());
}

/// Unmounts what is mounted at or below `dir`, detaches the loop devices
/// backed by `dir/disk.img`, removes `dir`.
fn remove_disk(dir: &Path, loop_dev: Option<&str>) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let prefix = dir.to_string_lossy().to_string();
    for m in mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
    {
        if sh("umount", &[m]).is_err() {
            let _ = sh("umount", &["-l", m]);
        }
    }
    let img = dir.join("disk.img");
    let mut devs: Vec<String> = loop_dev.map(|d| vec![d.to_string()]).unwrap_or_default();
    if let Ok(list) = sh("losetup", &["-j", &img.to_string_lossy()]) {
        devs.extend(list.lines().filter_map(|l| l.split(':').next()).map(str::to_string));
    }
    devs.sort();
    devs.dedup();
    for d in devs {
        let _ = sh("losetup", &["-d", &d]);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Disks and cgroups of test processes that are gone.
pub fn sweep_leftovers() {
    if let Ok(entries) = std::fs::read_dir(BASE) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(pid) = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
            if !pid_alive(pid) {
                remove_disk(&e.path(), None);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(BLKIO) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix(CGROUP_PREFIX) else { continue };
            let Some(pid) = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
            if !pid_alive(pid) {
                remove_cgroup(&e.path());
            }
        }
    }
}

impl SlowDisk {
    /// A fresh ext4 filesystem of `size_mib` (sparse) with `throttle` on
    /// its device for the processes added later.
    pub fn new(tag: &str, size_mib: u64, throttle: Throttle) -> SlowDisk {
        assert!(
            Path::new(BLKIO).join("blkio.throttle.write_iops_device").exists(),
            "no cgroup v1 blkio hierarchy with throttling at {BLKIO}: the slow disk needs it"
        );
        sweep_leftovers();
        let id = format!("{tag}-{}", std::process::id());
        let dir = Path::new(BASE).join(&id);
        remove_disk(&dir, None); // an earlier SlowDisk of this process with the same tag
        std::fs::create_dir_all(dir.join("mnt")).expect("slow disk directory");
        let img = dir.join("disk.img");
        let f = std::fs::File::create(&img).expect("disk image");
        f.set_len(size_mib << 20).expect("size the disk image");
        drop(f);
        let loop_dev = must("losetup", &["--find", "--show", &img.to_string_lossy()]);
        let mut disk = SlowDisk {
            mount: dir.join("mnt"),
            device: String::new(),
            dir: dir.clone(),
            loop_dev: loop_dev.clone(),
            cgroup: Path::new(BLKIO).join(format!("{CGROUP_PREFIX}{id}")),
        };
        let name = loop_dev.trim_start_matches("/dev/");
        disk.device =
            std::fs::read_to_string(format!("/sys/block/{name}/dev")).expect("loop device number").trim().into();
        // No lazy initialisation: no background writes of the kernel's own.
        must("mkfs.ext4", &["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", &loop_dev]);
        must("mount", &["-t", "ext4", &loop_dev, &disk.mount.to_string_lossy()]);
        if !disk.cgroup.exists() {
            std::fs::create_dir(&disk.cgroup).expect("blkio cgroup");
        }
        disk.set_throttle(throttle);
        disk
    }

    /// Changes the limits (takes effect at once for the group's processes).
    pub fn set_throttle(&self, t: Throttle) {
        // 0 removes a limit.
        for (file, v) in
            [("blkio.throttle.write_iops_device", t.write_iops), ("blkio.throttle.write_bps_device", t.write_bps)]
        {
            std::fs::write(self.cgroup.join(file), format!("{} {}", self.device, v.unwrap_or(0)))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }

    /// Moves a process (all its threads) into the throttled group.
    pub fn add_process(&self, pid: u32) {
        std::fs::write(self.cgroup.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.cgroup.display()));
        let procs = std::fs::read_to_string(self.cgroup.join("cgroup.procs")).unwrap_or_default();
        assert!(procs.lines().any(|l| l.trim() == pid.to_string()), "{pid} is not in {}", self.cgroup.display());
    }

    /// `cmd` started inside the group (a shell moves itself in, then execs).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("echo $$ > '{}' && exec \"$@\"", self.cgroup.join("cgroup.procs").display()))
            .arg("sh")
            .arg(program)
            .args(args);
        c
    }

    /// Write requests the group issued on the device so far.
    pub fn writes_serviced(&self) -> u64 {
        let text = std::fs::read_to_string(self.cgroup.join("blkio.throttle.io_serviced")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(self.device.as_str()) && w.next() == Some("Write")).then(|| w.next())?
            })
            .filter_map(|n| n.parse::<u64>().ok())
            .sum()
    }

    /// O_DSYNC writes of 4 KiB per second for `duration`, by a `dd` inside
    /// the group (`throttled`) or outside it.
    pub fn dsync_writes_per_second(&self, throttled: bool, duration: Duration) -> f64 {
        let target = self.mount.join(format!("probe-{}", if throttled { "in" } else { "out" }));
        let of = format!("of={}", target.display());
        // Enough blocks for the unthrottled disk to stay busy; `timeout`
        // stops dd at the end and its own count tells how far it got.
        let args = ["if=/dev/zero", &of, "bs=4k", "count=200000", "oflag=dsync", "status=none"];
        let secs = format!("{}", duration.as_secs_f64());
        let started = Instant::now();
        let mut cmd = if throttled {
            let mut a = vec!["-s", "INT", secs.as_str(), "dd"];
            a.extend_from_slice(&args);
            self.command("timeout", &a)
        } else {
            let mut c = Command::new("timeout");
            c.args(["-s", "INT", &secs, "dd"]).args(args);
            c
        };
        let _ = cmd.output().expect("dd");
        let elapsed = started.elapsed().as_secs_f64();
        let written = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
        let _ = std::fs::remove_file(&target);
        (written / 4096) as f64 / elapsed
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        remove_cgroup(&self.cgroup);
        remove_disk(&self.dir, Some(&self.loop_dev));
    }
}

//! A guest whose disk fails every read: the disk is served by qemu-nbd over
//! blkdebug, so QEMU sees EIO and (with error_policy='stop') pauses the
//! guest with an I/O error event. SeaBIOS reads the disk at boot.

use std::process::Command;

use super::guest::{Guest, GuestSpec};

/// Keeps qemu-nbd (and the image) alive; kills qemu-nbd when dropped.
pub struct FailingDisk {
    dir: tempfile::TempDir,
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("nbd.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

/// Starts the guest `name` with a failing second disk (vdb).
pub fn start_guest(name: &str) -> (Guest, FailingDisk) {
    let dir = super::scratch_dir("ioerr");
    let img = dir.path().join("disk.raw");
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    std::fs::write(&img, data).unwrap();
    let conf = dir.path().join("blkdebug.conf");
    std::fs::write(&conf, "[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\n").unwrap();
    let port = super::agent::free_port();
    let nbd = Command::new("qemu-nbd")
        .args(["--fork", "--persistent", "-b", "127.0.0.1", "-p", &port.to_string(), "--pid-file"])
        .arg(dir.path().join("nbd.pid"))
        .arg("--image-opts")
        .arg(format!(
            "driver=raw,file.driver=blkdebug,file.config={},file.image.driver=file,file.image.filename={}",
            conf.display(),
            img.display()
        ))
        .status()
        .unwrap();
    assert!(nbd.success(), "qemu-nbd did not start");
    let disk = FailingDisk { dir };
    let xml = format!(
        "<disk type='network' device='disk'><driver name='qemu' type='raw' error_policy='stop' rerror_policy='stop'/>\
         <source protocol='nbd'><host name='127.0.0.1' port='{port}'/></source><target dev='vdb' bus='virtio'/></disk>"
    );
    let g = Guest::start_named(name, GuestSpec { extra_devices: xml, no_boot_disk: true, ..Default::default() });
    (g, disk)
}

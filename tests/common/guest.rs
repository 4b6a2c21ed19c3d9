//! Tiny real guests: no OS (SeaBIOS only), a qcow2 disk with a backing file,
//! a NIC and a virtio balloon. KVM when it works, TCG otherwise. Names carry
//! the test's pid so leftovers of killed runs can be swept.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use super::virsh;

pub const PREFIX: &str = "vpt-";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// "kvm" when this host can run KVM guests through libvirt, else "qemu".
pub fn virt_type() -> &'static str {
    static T: OnceLock<&'static str> = OnceLock::new();
    T.get_or_init(|| {
        let kvm =
            std::path::Path::new("/dev/kvm").exists() && virsh::run(&["domcapabilities", "--virttype", "kvm"]).is_ok();
        if kvm {
            "kvm"
        } else {
            "qemu"
        }
    })
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Destroys and undefines guests of test processes that no longer run.
pub fn sweep_leftovers() {
    let Ok(list) = virsh::run(&["list", "--all", "--name"]) else {
        return;
    };
    for name in list.lines().map(str::trim).filter(|n| n.starts_with(PREFIX)) {
        let pid = name.split('-').nth(2).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(pid_alive) {
            continue;
        }
        if let Some(qpid) = virsh::qemu_pid(name) {
            let _ = Command::new("kill").args(["-CONT", &qpid.to_string()]).status();
        }
        let _ = virsh::run(&["destroy", name]);
        let _ = virsh::run(&["undefine", name, "--nvram"]);
    }
}

pub struct Guest {
    pub name: String,
    pub uuid: String,
    dir: tempfile::TempDir,
    defined: bool,
}

pub struct GuestSpec {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub persistent: bool,
    pub extra_devices: String,
    pub metadata: String,
    /// Appended to the generated name (to test odd characters).
    pub name_suffix: String,
    /// Leave out the qcow2 boot disk (the extra devices bring their own).
    pub no_boot_disk: bool,
    /// Boot this (kernel, initrd) directly, under TCG (KVM cannot boot a
    /// Linux kernel on these nested hosts).
    pub linux: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Leave out the default NIC (the extra devices bring their own).
    pub no_default_nic: bool,
    /// Extra elements at the top of `<domain>` (maxMemory, cpu/numa...).
    pub domain_extra: String,
    /// Shaped like a tenant: a second, plain disk (vdb) and a second NIC.
    pub tenant: bool,
}

impl GuestSpec {
    /// A guest shaped like a tenant: 4 vCPUs, vda a qcow2 overlay on a base
    /// image, vdb plain, two virtio NICs, a balloon.
    pub fn tenant() -> Self {
        Self { vcpus: 4, tenant: true, ..Default::default() }
    }
}

impl Default for GuestSpec {
    fn default() -> Self {
        Self {
            vcpus: 2,
            memory_mib: 32,
            persistent: true,
            extra_devices: String::new(),
            metadata: String::new(),
            name_suffix: String::new(),
            no_boot_disk: false,
            linux: None,
            no_default_nic: false,
            domain_extra: String::new(),
            tenant: false,
        }
    }
}

impl Guest {
    pub fn name_for(tag: &str) -> String {
        format!("{PREFIX}{tag}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
    }

    /// Defines (when persistent) and starts a guest.
    pub fn start(tag: &str, spec: GuestSpec) -> Guest {
        Self::start_named(&Self::name_for(tag), spec)
    }

    /// As `start`, with a name from `name_for` chosen beforehand.
    pub fn start_named(base_name: &str, spec: GuestSpec) -> Guest {
        super::ensure_libvirtd();
        let dir = super::scratch_dir(base_name);
        let name = format!("{base_name}{}", spec.name_suffix);
        let base = dir.path().join("base.qcow2");
        let top = dir.path().join("top.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "64M"]);
        qemu_img(&["create", "-q", "-f", "qcow2", "-b", base.to_str().unwrap(), "-F", "qcow2", top.to_str().unwrap()]);
        for f in [&base, &top] {
            super::set_mode(f, 0o666);
        }
        let mut spec = spec;
        if spec.tenant {
            let vdb = dir.path().join("vdb.qcow2");
            qemu_img(&["create", "-q", "-f", "qcow2", vdb.to_str().unwrap(), "64M"]);
            super::set_mode(&vdb, 0o666);
            spec.extra_devices.push_str(&format!(
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vdb' bus='virtio'/></disk>\n<interface type='ethernet'><model type='virtio'/></interface>\n",
                vdb.display()
            ));
        }
        let xml = domain_xml(&name, &top, &spec);
        let xml_path = dir.path().join("domain.xml");
        std::fs::write(&xml_path, xml).expect("write domain xml");
        let xml_arg = xml_path.to_str().unwrap();
        let mut g = Guest { name: name.clone(), uuid: String::new(), dir, defined: spec.persistent };
        if spec.persistent {
            virsh::must(&["define", xml_arg]);
            virsh::must(&["start", &name]);
        } else {
            virsh::must(&["create", xml_arg]);
        }
        g.uuid = virsh::domuuid(&name);
        g
    }

    pub fn qemu_pid(&self) -> u32 {
        virsh::qemu_pid(&self.name).unwrap_or_else(|| panic!("no QEMU pid for {}", self.name))
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill").args([sig, &self.qemu_pid().to_string()]).status().expect("kill");
        assert!(st.success(), "kill {sig} failed");
    }

    pub fn destroy(&self) {
        virsh::must(&["destroy", &self.name]);
    }

    pub fn undefine(&mut self) {
        virsh::must(&["undefine", &self.name]);
        self.defined = false;
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // A stopped QEMU would make destroy slow: resume it first.
        if let Some(pid) = virsh::qemu_pid(&self.name) {
            let _ = Command::new("kill").args(["-CONT", &pid.to_string()]).status();
        }
        let _ = virsh::run(&["destroy", &self.name]);
        if self.defined {
            let _ = virsh::run(&["undefine", &self.name, "--nvram"]);
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn qemu_img(args: &[&str]) {
    let st = Command::new("qemu-img").args(args).status().expect("qemu-img");
    assert!(st.success(), "qemu-img {args:?} failed");
}

fn domain_xml(name: &str, disk: &std::path::Path, spec: &GuestSpec) -> String {
    let (virt, os) = match &spec.linux {
        Some((kernel, initrd)) => (
            "qemu",
            format!(
                "<type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel><initrd>{}</initrd><cmdline>console=ttyS0 quiet panic=0</cmdline>",
                kernel.display(),
                initrd.display()
            ),
        ),
        None => (virt_type(), "<type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/>".to_string()),
    };
    let nic = if spec.no_default_nic { "" } else { "<interface type='ethernet'><model type='virtio'/></interface>" };
    format!(
        r#"<domain type='{virt}'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <vcpu>{vcpus}</vcpu>
  {domain_extra}
  <metadata>{metadata}</metadata>
  <os>{os}</os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>preserve</on_crash>
  <pm><suspend-to-mem enabled='yes'/><suspend-to-disk enabled='yes'/></pm>
  <devices>
    {disk}
    {nic}
    <memballoon model='virtio'><stats period='5'/></memballoon>
    <serial type='pty'/>
    {extra}
  </devices>
</domain>
"#,
        name = xml_escape(name),
        mem = spec.memory_mib,
        vcpus = spec.vcpus,
        metadata = spec.metadata,
        domain_extra = spec.domain_extra,
        disk = if spec.no_boot_disk {
            String::new()
        } else {
            format!(
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>",
                disk.display()
            )
        },
        extra = spec.extra_devices,
    )
}

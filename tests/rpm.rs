//! The RPM for EL8/EL9 (scripts/build-rpm.sh, systemd/rpm/virtpulse.spec),
//! around the portable binary as the tests build it. There is no EL system
//! to install it on here: its dependencies, files, modes, owners and config
//! flags are read with rpm's own queries, and its scriptlets are run, under
//! both dash and bash, with stand-ins for useradd/groupadd/getent/systemctl
//! that record their calls, with and without a running systemd (a private
//! mount namespace with a fresh /run).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::portable::version;

/// What the binary may need of glibc (EL8's) and of libvirt (Debian 11's
/// 7.0 is the oldest client library the tests run the agent on).
const GLIBC_CEILING: &str = "2.28";
const LIBVIRT_CEILING: &str = "7.0.0";
/// rpmlib features EL8's rpm 4.14 reads.
const EL8_RPMLIB: &[&str] = &["CompressedFileNames", "FileDigests", "PayloadFilesHavePrefix", "PayloadIsXz"];

/// Built once per test binary, into a directory removed at exit.
fn rpm() -> &'static Path {
    static RPM: OnceLock<PathBuf> = OnceLock::new();
    RPM.get_or_init(|| {
        let out = std::env::temp_dir().join(format!("virtpulse-rpm-test-{}", std::process::id()));
        extern "C" fn at_exit() {
            let _ = std::fs::remove_dir_all(
                std::env::temp_dir().join(format!("virtpulse-rpm-test-{}", std::process::id())),
            );
        }
        // SAFETY: registers a plain function; it runs once, at exit.
        unsafe { libc::atexit(at_exit) };
        let built = Command::new(common::project_root().join("scripts/build-rpm.sh"))
            .env("PROFILE", common::portable::PROFILE)
            .env("OUT", &out)
            .output()
            .expect("run scripts/build-rpm.sh");
        assert!(built.status.success(), "scripts/build-rpm.sh failed:\n{}", String::from_utf8_lossy(&built.stderr));
        let path = PathBuf::from(String::from_utf8_lossy(&built.stdout).lines().last().unwrap_or("").trim());
        assert!(path.extension().is_some_and(|e| e == "rpm") && path.is_file(), "{}", path.display());
        path
    })
}

fn query(args: &[&str]) -> String {
    let out = Command::new("rpm").arg("-qp").args(args).arg(rpm()).output().expect("run rpm");
    assert!(out.status.success(), "rpm -qp {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cargo_version() -> String {
    let toml = std::fs::read_to_string(common::project_root().join("Cargo.toml")).unwrap();
    toml.lines().find_map(|l| l.strip_prefix("version = \"")).and_then(|v| v.strip_suffix('"')).unwrap().to_string()
}

/// "libc.so.6(GLIBC_2.28)(64bit)" -> Some(("libc.so.6", "GLIBC_2.28")).
fn soname_version(req: &str) -> Option<(&str, &str)> {
    let (lib, rest) = req.split_once('(')?;
    let (ver, _) = rest.split_once(')')?;
    Some((lib, ver))
}

#[test]
fn rpm_requires_glibc_2_28_at_most_libvirt_libs_and_no_openssl() {
    let requires = query(&["--requires"]);
    let reqs: Vec<&str> = requires.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    println!("{}: requires\n{requires}", rpm().display());
    for must in ["libvirt-libs", "shadow-utils", "systemd", "libvirt.so.0()(64bit)", "libvirt-qemu.so.0()(64bit)"] {
        assert!(reqs.contains(&must), "no Requires {must}: {reqs:?}");
    }
    // Derived by rpmbuild from the binary's symbol versions, not written in
    // the spec: the generator ran and read the portable binary.
    assert!(reqs.contains(&"libc.so.6(GLIBC_2.28)(64bit)"), "{reqs:?}");
    let mut glibc = Vec::new();
    let mut libvirt = Vec::new();
    for r in &reqs {
        assert!(!r.contains("libssl") && !r.contains("libcrypto") && !r.contains("OPENSSL"), "{r}");
        if let Some((lib, ver)) = soname_version(r) {
            if let Some(v) = ver.strip_prefix("GLIBC_") {
                glibc.push(v);
                assert!(version(v) <= version(GLIBC_CEILING), "{r}: above glibc {GLIBC_CEILING} (EL8)");
            } else if let Some(v) = ver.strip_prefix("LIBVIRT_").filter(|v| !v.starts_with("QEMU")) {
                libvirt.push(v);
                assert!(version(v) <= version(LIBVIRT_CEILING), "{r}: above libvirt {LIBVIRT_CEILING}");
            } else if lib == "rpmlib" {
                assert!(EL8_RPMLIB.contains(&ver), "{r}: a feature EL8's rpm 4.14 may not read");
            }
        }
        // Only glibc's and libvirt's libraries, and named packages.
        let allowed_lib =
            ["libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "ld-linux-x86-64.so.2"]
                .iter()
                .chain(["libvirt.so.0", "libvirt-qemu.so.0"].iter())
                .any(|l| r.starts_with(&format!("{l}(")));
        let named = ["/bin/sh", "libvirt-libs", "shadow-utils", "systemd"].contains(r)
            || r.starts_with("rpmlib(")
            || r.starts_with("config(virtpulse)");
        assert!(allowed_lib || named, "unexpected requirement {r}");
    }
    assert!(!glibc.is_empty() && !libvirt.is_empty(), "no versioned glibc/libvirt requirements read: {reqs:?}");

    let provides = query(&["--provides"]);
    let version = cargo_version();
    assert!(provides.lines().any(|l| l.trim() == format!("virtpulse = {version}-1")), "{provides}");
    assert!(provides.lines().any(|l| l.trim() == format!("virtpulse(x86-64) = {version}-1")), "{provides}");
    assert!(!provides.contains(".so"), "the package provides no libraries: {provides}");
    assert_eq!(query(&["--qf", "%{ARCH} %{PAYLOADCOMPRESSOR}"]).trim(), "x86_64 xz");
}

/// `rpm --dump`: path -> (mode, owner, group, config flag, digest).
fn dump() -> BTreeMap<String, (String, String, String, String, String)> {
    query(&["--dump"])
        .lines()
        .filter_map(|l| {
            // path size mtime digest mode owner group isconfig isdoc rdev symlink
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 9).then(|| {
                (
                    f[0].to_string(),
                    (f[4].to_string(), f[5].to_string(), f[6].to_string(), f[7].to_string(), f[3].to_string()),
                )
            })
        })
        .collect()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string()
}

#[test]
fn rpm_files_modes_owners_and_config_flags() {
    let files = dump();
    let root = common::project_root();
    let get = |p: &str| files.get(p).unwrap_or_else(|| panic!("{p} is not in the RPM: {:?}", files.keys()));
    // 8: SHA-256 file digests, what --dump prints below.
    assert_eq!(query(&["--qf", "%{FILEDIGESTALGO}"]).trim(), "8");

    let bin = get("/usr/bin/virtpulse");
    assert_eq!((bin.0.as_str(), bin.1.as_str(), bin.2.as_str()), ("0100755", "root", "root"));
    // Readable by the service's user only, a config file, the example.
    let conf = get("/etc/virtpulse/config.toml");
    assert_eq!(
        (conf.0.as_str(), conf.1.as_str(), conf.2.as_str(), conf.3.as_str()),
        ("0100640", "root", "virtpulse", "1")
    );
    assert_eq!(conf.4, sha256(&root.join("config.example.toml")));
    // The spool: the service's, private, owned by the package (kept through upgrades).
    let spool = get("/var/lib/virtpulse");
    assert_eq!((spool.0.as_str(), spool.1.as_str(), spool.2.as_str()), ("040700", "virtpulse", "virtpulse"));
    // The same hardened unit as the .deb, byte for byte.
    let unit = get("/usr/lib/systemd/system/virtpulse.service");
    assert_eq!((unit.0.as_str(), unit.1.as_str()), ("0100644", "root"));
    assert_eq!(
        unit.4,
        sha256(&root.join("systemd/virtpulse.service")),
        "the RPM's unit differs from systemd/virtpulse.service"
    );
    let sysusers = get("/usr/lib/sysusers.d/virtpulse.conf");
    assert_eq!(sysusers.4, sha256(&root.join("systemd/rpm/virtpulse.sysusers")));
    for f in [
        "/usr/share/virtpulse/alerts/virtpulse.rules.yml",
        "/usr/share/virtpulse/dashboards/virtpulse-fleet.json",
        "/usr/share/doc/virtpulse/README.md",
    ] {
        get(f);
    }
    // Nothing else is a config file; config.toml is %config(noreplace):
    // an edited one survives upgrades.
    let flags = query(&["--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]"]);
    let config: Vec<&str> =
        flags.lines().filter(|l| l.split_whitespace().nth(1).is_some_and(|f| f.contains('c'))).collect();
    assert_eq!(config, ["/etc/virtpulse/config.toml cn"], "{flags}");
}

/// Runs a scriptlet with `arg` ($1) under `shell`, stand-ins first on PATH,
/// in a private mount namespace whose /run is fresh (with
/// /run/systemd/system when `systemd`). Returns the calls recorded.
fn run_scriptlet(script: &str, arg: &str, shell: &str, systemd: bool, user_exists: bool) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let stubs = dir.path().join("bin");
    std::fs::create_dir(&stubs).unwrap();
    let log = dir.path().join("calls");
    for (name, rc) in [("getent", if user_exists { 0 } else { 2 }), ("groupadd", 0), ("useradd", 0), ("systemctl", 0)] {
        let p = stubs.join(name);
        std::fs::write(&p, format!("#!/bin/sh\necho \"{name} $*\" >> '{}'\nexit {rc}\n", log.display())).unwrap();
        common::set_mode(&p, 0o755);
    }
    let script_path = dir.path().join("scriptlet");
    std::fs::write(&script_path, script).unwrap();
    let setup = if systemd { "mkdir -p /run/systemd/system; " } else { "" };
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-euc"])
        .arg(format!(
            "mount -t tmpfs tmpfs /run; {setup}PATH=\"$1:/usr/sbin:/usr/bin:/sbin:/bin\" exec {shell} \"$2\" \"$3\""
        ))
        .arg("sh")
        .arg(&stubs)
        .arg(&script_path)
        .arg(arg)
        .output()
        .expect("unshare");
    assert!(
        out.status.success(),
        "scriptlet ($1={arg}, {shell}, systemd {systemd}) failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&log).unwrap_or_default().lines().map(str::to_string).collect()
}

#[test]
fn rpm_scriptlets_create_the_user_and_drive_systemd_as_the_macros_would() {
    let script = |tag: &str| {
        assert_eq!(query(&["--qf", &format!("%{{{tag}PROG}}")]).trim(), "/bin/sh", "{tag}");
        query(&["--qf", &format!("%{{{tag}}}")])
    };
    let (pre, post, preun, postun) = (script("PREIN"), script("POSTIN"), script("PREUN"), script("POSTUN"));
    let without_getent =
        |calls: Vec<String>| calls.into_iter().filter(|c| !c.starts_with("getent")).collect::<Vec<_>>();
    for sh in ["dash", "bash"] {
        // %pre: the user and its group when missing, nothing when present.
        let calls = without_getent(run_scriptlet(&pre, "1", sh, false, false));
        assert_eq!(
            calls,
            [
                "groupadd -r virtpulse",
                "useradd -r -g virtpulse -d /var/lib/virtpulse -M -s /sbin/nologin -c virtpulse libvirt telemetry agent virtpulse"
            ],
            "{sh}"
        );
        assert!(without_getent(run_scriptlet(&pre, "2", sh, false, true)).is_empty(), "{sh}");
        // %post: the preset on a first install only, running systemd or not.
        for systemd in [true, false] {
            assert_eq!(
                run_scriptlet(&post, "1", sh, systemd, true),
                ["systemctl --no-reload preset virtpulse.service"]
            );
            assert!(run_scriptlet(&post, "2", sh, systemd, true).is_empty());
        }
        // %preun: the last erase stops (when systemd runs) and disables; an upgrade does nothing.
        assert_eq!(
            run_scriptlet(&preun, "0", sh, true, true),
            ["systemctl --no-reload disable --now virtpulse.service"]
        );
        assert_eq!(run_scriptlet(&preun, "0", sh, false, true), ["systemctl --no-reload disable virtpulse.service"]);
        assert!(run_scriptlet(&preun, "1", sh, true, true).is_empty());
        // %postun: reload; an upgrade restarts a running service; nothing without systemd.
        assert_eq!(
            run_scriptlet(&postun, "1", sh, true, true),
            ["systemctl daemon-reload", "systemctl try-restart virtpulse.service"]
        );
        assert_eq!(run_scriptlet(&postun, "0", sh, true, true), ["systemctl daemon-reload"]);
        assert!(run_scriptlet(&postun, "1", sh, false, true).is_empty());
    }
    // The sysusers.d entry says what %pre does.
    let sysusers = std::fs::read_to_string(common::project_root().join("systemd/rpm/virtpulse.sysusers")).unwrap();
    let entry = sysusers.lines().find(|l| l.starts_with("u ")).expect("a u line");
    assert!(entry.contains("virtpulse -") && entry.ends_with("/var/lib/virtpulse /sbin/nologin"), "{entry}");
}

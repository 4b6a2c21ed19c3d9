//! The portable binary (scripts/build-release.sh) and its .deb: what the
//! binary needs from a host (glibc 2.28 at most, no system OpenSSL, only
//! libc's and libvirt's libraries), the binary run inside the Debian 11
//! root on that root's glibc 2.31 and libvirt0 7.0 against its private
//! daemon, and the .deb installed, checked, run and purged inside the
//! Debian 11, 12 and 13 roots (scripts/build-test-roots.sh). The host's own
//! package test is tests/package.rs.

mod common;

use std::path::Path;

use common::portable::{self, max_of, needed_libraries, needed_versions, version};
use common::roots::{chroot, RootDaemon};

/// The glibc the packages promise (docs/packages.md): EL8's.
const GLIBC_CEILING: &str = "2.28";
/// The oldest libvirt client library the matrix runs on (Debian 11's).
const LIBVIRT_CEILING: &str = "7.0.0";

/// Libraries the binary may ask the target host for: glibc's own (the
/// versions checked above) and libvirt's client libraries.
const ALLOWED_NEEDED: &[&str] = &[
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "ld-linux-x86-64.so.2",
    "libvirt.so.0",
    "libvirt-qemu.so.0",
];

#[test]
fn portable_binary_needs_glibc_2_28_at_most_and_no_system_openssl() {
    let bin = portable::binary();
    let needs = needed_versions(bin);
    let glibc = max_of(&needs, "GLIBC").unwrap_or_else(|| panic!("no GLIBC_ version needs read from {needs:?}"));
    let libvirt = max_of(&needs, "LIBVIRT").unwrap_or_else(|| panic!("no LIBVIRT_ version needs read from {needs:?}"));
    let libs = needed_libraries(bin);
    println!("portable binary {}: GLIBC_{glibc}, LIBVIRT_{libvirt}, NEEDED {libs:?}", bin.display());
    assert!(
        version(&glibc) <= version(GLIBC_CEILING),
        "the portable binary needs GLIBC_{glibc}, above {GLIBC_CEILING}: {:?}",
        needs.iter().filter(|(_, n)| n.starts_with("GLIBC_")).collect::<Vec<_>>()
    );
    assert!(
        version(&libvirt) <= version(LIBVIRT_CEILING),
        "the binary calls a libvirt function from LIBVIRT_{libvirt}: Debian 11's libvirt0 {LIBVIRT_CEILING} lacks it"
    );
    for (lib, name) in &needs {
        assert!(!name.starts_with("OPENSSL_") && !lib.contains("libssl") && !lib.contains("libcrypto"), "{lib} {name}");
    }
    assert!(libs.iter().any(|l| l == "libvirt.so.0"), "{libs:?}");
    let unexpected: Vec<_> = libs.iter().filter(|l| !ALLOWED_NEEDED.contains(&l.as_str())).collect();
    assert!(unexpected.is_empty(), "the portable binary needs libraries a target host may lack: {unexpected:?}");

    // The same readers see what the development build needs (this host's
    // glibc and system OpenSSL: vendored-openssl is off there), so they
    // are able to tell the two apart.
    let dev = Path::new(env!("CARGO_BIN_EXE_virtpulse"));
    let dev_libs = needed_libraries(dev);
    let dev_glibc = max_of(&needed_versions(dev), "GLIBC").expect("the development build's GLIBC_ needs");
    println!("development build {}: GLIBC_{dev_glibc}, NEEDED {dev_libs:?}", dev.display());
    assert!(dev_libs.iter().any(|l| l.starts_with("libssl.so")), "{dev_libs:?}");
}

#[test]
fn readelf_version_needs_are_read_per_library() {
    let text = "\
Version symbols section '.gnu.version' contains 3 entries:
 Addr: 0x0000000000000a00  Offset: 0x000a00  Link: 6 (.dynsym)
  000:   0 (*local*)       2 (GLIBC_2.2.5)   3 (LIBVIRT_0.0.3)

Version needs section '.gnu.version_r' contains 2 entries:
 Addr: 0x0000000000000b00  Offset: 0x000b00  Link: 7 (.dynstr)
  000000: Version: 1  File: libvirt.so.0  Cnt: 2
  0x0010:   Name: LIBVIRT_5.7.0  Flags: none  Version: 4
  0x0020:   Name: LIBVIRT_0.0.3  Flags: none  Version: 3
  0x0030: Version: 1  File: libc.so.6  Cnt: 2
  0x0040:   Name: GLIBC_2.28  Flags: none  Version: 5
  0x0050:   Name: GLIBC_2.2.5  Flags: none  Version: 2
";
    let needs = portable::parse_version_needs(text);
    assert_eq!(needs.len(), 4, "{needs:?}");
    assert!(needs.contains(&("libc.so.6".into(), "GLIBC_2.28".into())));
    assert!(needs.contains(&("libvirt.so.0".into(), "LIBVIRT_0.0.3".into())));
    // 2.28 > 2.2.5 numerically, not as text.
    assert_eq!(max_of(&needs, "GLIBC").as_deref(), Some("2.28"));
    assert_eq!(max_of(&needs, "LIBVIRT").as_deref(), Some("5.7.0"));
}

/// One JSON record per line of `--once` output.
fn records(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON record ({e}): {l}")))
        .collect()
}

/// `--once` output must hold the node and the guest's stats.
fn assert_once_output(stdout: &str, uuid: &str) {
    let recs = records(stdout);
    assert!(recs.iter().any(|r| r["kind"] == "node"), "no node record:\n{stdout}");
    let dom = recs
        .iter()
        .find(|r| r["kind"] == "domain_stats" && r["domain"]["uuid"] == uuid)
        .unwrap_or_else(|| panic!("no domain_stats record for {uuid}:\n{stdout}"));
    assert!(dom["fields"].get("state.state").is_some(), "{dom}");
    assert!(dom["fields"].get("block.0.name").is_some(), "{dom}");
}

#[test]
fn portable_binary_runs_in_debian11_on_its_glibc_2_31_and_libvirt0_7_0() {
    let bin = portable::binary();
    let d = RootDaemon::start("debian11", "portable-once");
    let libc6 = chroot(&d.root, &["dpkg-query", "-W", "-f=${Version}", "libc6"]);
    let libvirt0 = chroot(&d.root, &["dpkg-query", "-W", "-f=${Version}", "libvirt0"]);
    assert!(libc6.starts_with("2.31"), "Debian 11's glibc is 2.31: {libc6}");
    assert!(libvirt0.starts_with("7.0.0"), "Debian 11's libvirt0 is 7.0.0: {libvirt0}");
    let name = format!("vpt-portable-{}", std::process::id());
    let uuid = d.guest(&name);

    let (dir, inside) = d.scratch_dir("bin");
    std::fs::copy(bin, dir.join("virtpulse")).unwrap();
    let exe = format!("{inside}/virtpulse");
    // The root's dynamic loader finds every library in the root.
    let ldd = d.run_inside(&["ldd", &exe], &[]);
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    assert!(ldd.contains("x86_64-linux-gnu/libvirt.so.0 (") && !ldd.contains("not found"), "{ldd}");
    let out = d.run_inside(&[&exe, "--once"], &[("VIRTPULSE_AGENT__LOG_LEVEL", "warn")]);
    assert!(out.status.success(), "--once in debian11: {}", String::from_utf8_lossy(&out.stderr));
    assert_once_output(&String::from_utf8_lossy(&out.stdout), &uuid);
    println!("inside debian11 with libc6 {libc6}, libvirt0 {libvirt0}: --once ok");
}

/// Installs the portable .deb into a root with the root's own apt, checks
/// the installed files and configuration, runs the installed binary as the
/// service user against the root's daemon, purges, and checks nothing is
/// left.
fn deb_in_root(root_name: &str) {
    let d = RootDaemon::start(root_name, "portable-deb");
    let root = d.root.clone();
    let out = tempfile::tempdir().unwrap();
    let deb = portable::deb(out.path());
    // /var/tmp, not /tmp: the daemon's namespace has a /tmp of its own.
    let (dir, inside) = d.scratch_dir("deb");
    std::fs::copy(&deb, dir.join("virtpulse.deb")).unwrap();
    let apt = |args: &[&str]| {
        // Another test run may be using the same cached root: wait for its lock.
        let mut all =
            vec!["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"];
        all.extend_from_slice(args);
        chroot(&root, &all)
    };
    let name = format!("vpt-deb-{root_name}-{}", std::process::id());
    let uuid = d.guest(&name);
    apt(&["install", &format!("{inside}/virtpulse.deb")]);

    let result = std::panic::catch_unwind(|| {
        let depends = chroot(&root, &["dpkg-query", "-W", "-f=${Depends}", "virtpulse"]);
        assert!(depends.contains(&format!("libc6 (>= {GLIBC_CEILING})")), "{depends}");
        let conffiles = chroot(&root, &["dpkg-query", "-W", "-f=${Conffiles}", "virtpulse"]);
        assert!(conffiles.contains("/etc/virtpulse/config.toml"), "{conffiles}");
        let mode = chroot(&root, &["stat", "-c", "%U:%G %a", "/etc/virtpulse/config.toml"]);
        assert_eq!(mode.trim(), "root:virtpulse 640");
        assert!(root.join("lib/systemd/system/virtpulse.service").is_file());
        // The installed binary accepts the installed configuration, as the service's user...
        let check = chroot(
            &root,
            &[
                "runuser",
                "-u",
                "virtpulse",
                "--",
                "virtpulse",
                "--check-config",
                "--config",
                "/etc/virtpulse/config.toml",
            ],
        );
        assert!(check.contains("configuration OK"), "{check}");
        // ...and runs with it: the default URI reaches the root's daemon
        // through its read-only socket in the daemon's namespace.
        let once = d.run_inside(
            &[
                "runuser",
                "-u",
                "virtpulse",
                "--",
                "/usr/bin/virtpulse",
                "--once",
                "--config",
                "/etc/virtpulse/config.toml",
            ],
            &[("VIRTPULSE_AGENT__LOG_LEVEL", "warn")],
        );
        assert!(once.status.success(), "--once in {root_name}: {}", String::from_utf8_lossy(&once.stderr));
        assert_once_output(&String::from_utf8_lossy(&once.stdout), &uuid);
    });
    apt(&["purge", "virtpulse"]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    for gone in
        ["usr/bin/virtpulse", "etc/virtpulse/config.toml", "var/lib/virtpulse", "lib/systemd/system/virtpulse.service"]
    {
        assert!(!root.join(gone).exists(), "/{gone} is left after the purge in {root_name}");
    }
    let user =
        std::process::Command::new("chroot").arg(&root).args(["getent", "passwd", "virtpulse"]).output().unwrap();
    assert!(!user.status.success(), "the purge in {root_name} leaves the virtpulse user");
    let status = std::process::Command::new("chroot")
        .arg(&root)
        .args(["dpkg-query", "-W", "-f=${Status}", "virtpulse"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.is_empty() || status.ends_with("not-installed"), "after the purge in {root_name}: {status}");
    println!("{root_name}: the portable .deb installed, checked its config, ran --once and purged");
}

#[test]
fn deb_installs_runs_and_purges_in_debian11() {
    deb_in_root("debian11");
}

#[test]
fn deb_installs_runs_and_purges_in_debian12() {
    deb_in_root("debian12");
}

#[test]
fn deb_installs_runs_and_purges_in_debian13() {
    deb_in_root("debian13");
}

/// librdkafka is the one part that speaks TLS through OpenSSL, here a copy
/// built into the binary whose compiled-in certificate directory
/// (/usr/local/ssl) exists on no target host. The binary must still verify
/// a broker against the host's CA store: librdkafka then probes the
/// distributions' bundle paths (Debian's /etc/ssl/certs/ca-certificates.crt,
/// EL's /etc/pki/tls/certs/ca-bundle.crt, ...). Shown with a TLS listener
/// (openssl s_server, which prints what the client sends once the handshake
/// is done) and the host's bundle replaced, in a private mount namespace, by
/// the listener's CA (accepted) or by an unrelated CA (refused).
#[test]
fn portable_binary_verifies_kafka_tls_against_the_system_ca_store() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    const BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
    assert!(Path::new(BUNDLE).is_file(), "{BUNDLE} is missing: install ca-certificates (scripts/install-test-deps.sh)");
    let bin = portable::binary();
    let pki = common::tls::Pki::new();
    let other = common::tls::Pki::new();
    for (ca, trusted) in [(pki.ca(), true), (other.ca(), false)] {
        let dir = tempfile::tempdir().unwrap();
        let port = common::agent::free_port();
        let heard = dir.path().join("s_server.out");
        // s_server stops at the end of its standard input: keep it open.
        let mut server = Command::new("openssl")
            .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-cert"])
            .arg(pki.path("server.pem"))
            .arg("-key")
            .arg(pki.path("server.key"))
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&heard).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        common::wait_for(Duration::from_secs(10), "s_server listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[libvirt]\nuri = \"test:///default\"\n[sinks.prometheus]\nenabled = false\n\
                 [sinks.kafka]\nenabled = true\nbrokers = [\"localhost:{port}\"]\nspool_dir = \"{}\"\n\
                 [sinks.kafka.properties]\n\"security.protocol\" = \"ssl\"\n",
                dir.path().join("spool").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("agent.log");
        let mut agent = Command::new("unshare")
            .args([
                "-m",
                "--propagation",
                "private",
                "sh",
                "-euc",
                "mount --bind \"$1\" \"$2\"; exec \"$3\" --config \"$4\"",
                "sh",
            ])
            .arg(&ca)
            .arg(BUNDLE)
            .arg(bin)
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("unshare");
        let read = |p: &Path| {
            let mut s = String::new();
            let _ = std::fs::File::open(p).and_then(|mut f| f.read_to_string(&mut s));
            s
        };
        let outcome = std::panic::catch_unwind(|| {
            if trusted {
                // librdkafka's first request (ApiVersion, naming the client
                // library) arrives only over a verified connection.
                common::wait_for(Duration::from_secs(30), "the agent's Kafka request over verified TLS", || {
                    String::from_utf8_lossy(&std::fs::read(&heard).unwrap_or_default())
                        .contains("librdkafka")
                        .then_some(())
                });
                assert!(!read(&log).contains("certificate verify failed"), "{}", read(&log));
            } else {
                common::wait_for(Duration::from_secs(30), "librdkafka refusing the unknown CA", || {
                    read(&log).contains("certificate verify failed").then_some(())
                });
                assert!(
                    !String::from_utf8_lossy(&std::fs::read(&heard).unwrap_or_default()).contains("librdkafka"),
                    "a request went over an unverified connection"
                );
            }
        });
        let _ = agent.kill();
        let _ = agent.wait();
        let _ = server.kill();
        let _ = server.wait();
        if let Err(e) = outcome {
            eprintln!("agent log:\n{}", read(&log));
            std::panic::resume_unwind(e);
        }
    }
}

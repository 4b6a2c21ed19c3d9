//! The Debian package: built from this tree, installed on this machine,
//! checked from the installed files, then purged.

mod common;

use std::path::Path;
use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn must(cmd: &str, args: &[&str]) -> String {
    let (ok, text) = run(cmd, args);
    assert!(ok, "{cmd} {args:?} failed:\n{text}");
    text
}

#[test]
fn package_installs_checks_its_config_and_purges_cleanly() {
    common::ensure_libvirtd();
    let root = common::project_root();
    let out = tempfile::tempdir().unwrap();
    let script = root.join("scripts/build-deb.sh");
    let built =
        Command::new(&script).env("PROFILE", "debug").env("OUT", out.path()).output().expect("scripts/build-deb.sh");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let deb = String::from_utf8_lossy(&built.stdout).trim().to_string();
    assert!(deb.ends_with(".deb") && Path::new(&deb).exists(), "{deb}");

    let info = must("dpkg-deb", &["-I", &deb]);
    assert!(info.contains("Package: virtpulse") && info.contains("libvirt0"), "{info}");
    must("dpkg", &["-i", &deb]);
    let result = std::panic::catch_unwind(|| {
        // The conffile, readable by the service's user only.
        let conffiles = must("dpkg-query", &["-W", "-f=${Conffiles}", "virtpulse"]);
        assert!(conffiles.contains("/etc/virtpulse/config.toml"), "{conffiles}");
        let mode = must("stat", &["-c", "%U:%G %a", "/etc/virtpulse/config.toml"]);
        assert_eq!(mode.trim(), "root:virtpulse 640");
        // A system user with no extra groups (not "libvirt": that is read-write control).
        let id = must("id", &["virtpulse"]);
        assert!(!id.contains("libvirt"), "{id}");
        // The installed binary accepts the installed configuration, as that user.
        must(
            "runuser",
            &[
                "-u",
                "virtpulse",
                "--",
                "/usr/bin/virtpulse",
                "--check-config",
                "--config",
                "/etc/virtpulse/config.toml",
            ],
        );
        // ...and reads libvirt through the read-only socket, and only that.
        // Against the private daemon's read-only socket (never the host's).
        let ro_uri = format!("{}-ro", common::virsh::uri());
        let rw_uri = common::virsh::uri();
        let uri_var = format!("VIRTPULSE_LIBVIRT__URI={ro_uri}");
        let once = must(
            "runuser",
            &[
                "-u",
                "virtpulse",
                "--",
                "env",
                &uri_var,
                "/usr/bin/virtpulse",
                "--once",
                "--config",
                "/etc/virtpulse/config.toml",
            ],
        );
        assert!(once.contains("\"kind\":\"node\""), "{once}");
        let (rw, text) =
            run("runuser", &["-u", "virtpulse", "--", "virsh", "-c", rw_uri, "start", "nonexistent-domain"]);
        assert!(!rw && !text.contains("failed to get domain"), "the user must not reach the read-write socket: {text}");
        // The unit as installed verifies; nothing was enabled.
        let (ok, text) = run("systemd-analyze", &["verify", "/lib/systemd/system/virtpulse.service"]);
        assert!(ok, "{text}");
        assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/virtpulse.service").exists());
        for f in [
            "/usr/share/virtpulse/alerts/virtpulse.rules.yml",
            "/usr/share/virtpulse/dashboards/virtpulse-fleet.json",
            "/usr/share/doc/virtpulse/README.md",
        ] {
            assert!(Path::new(f).exists(), "{f}");
        }
    });
    must("dpkg", &["--purge", "virtpulse"]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(!Path::new("/usr/bin/virtpulse").exists());
    assert!(!Path::new("/etc/virtpulse/config.toml").exists(), "purge removes the conffile");
    assert!(!run("id", &["virtpulse"]).0, "purge removes the user");
}

//! The files a listener's security is read from: how they are read
//! (bounded, regular files only) and how a change is noticed (a stamp).

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Largest web config, certificate, key or CA file read. A CA bundle of
/// several hundred certificates fits; a path pointing at something else
/// (a log, a disk image) is refused instead of read into memory.
pub(super) const MAX_FILE_BYTES: u64 = 1 << 20;

/// What tells that a file changed without reading it: a rename over it
/// (cert-manager, certbot, `mv`) changes the inode, an edit in place the
/// modification time or the length. The change time catches an edit that
/// keeps both (a tool restoring the mtime). `metadata` follows symlinks,
/// so swapping a symlink (Kubernetes' `..data`, certbot's `live/`) is a
/// change of the file it points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// The file's stamp; `None` when it cannot be looked at (missing,
/// unreadable directory), which is a state of its own: its return is a
/// change too.
pub(super) fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
    })
}

/// The whole file, at most `MAX_FILE_BYTES`. Only regular files (or
/// symlinks to them): opening a FIFO would block the reader, and a device
/// such as /dev/zero never ends. Errors name the file.
pub(super) fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut buf = Vec::with_capacity(usize::try_from(meta.len().min(MAX_FILE_BYTES)).unwrap_or(0));
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "{} is larger than {} KiB: not a web config, certificate or key file",
            path.display(),
            MAX_FILE_BYTES >> 10
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rename_over_the_file_and_an_edit_in_place_change_the_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert_eq!(stamp(&p), None);
        std::fs::write(&p, "one").unwrap();
        let first = stamp(&p).unwrap();
        assert_eq!(stamp(&p), Some(first), "unchanged");
        // Same length, same second: the inode tells.
        let tmp = dir.path().join("f.tmp");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        let renamed = stamp(&p).unwrap();
        assert_ne!(renamed, first);
        // In place, same length: the modification time tells (set apart
        // explicitly: the kernel's file clock ticks in milliseconds).
        std::fs::write(&p, "six").unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1)).unwrap();
        assert_ne!(stamp(&p).unwrap(), renamed);
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_bounded(&dir.path().join("missing")).unwrap_err();
        assert!(e.contains("missing"), "{e}");
        let e = read_bounded(Path::new("/dev/zero")).unwrap_err();
        assert!(e.contains("/dev/zero") && e.contains("not a regular file"), "{e}");
        let e = read_bounded(dir.path()).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; (MAX_FILE_BYTES + 1) as usize]).unwrap();
        let e = read_bounded(&big).unwrap_err();
        assert!(e.contains("larger than 1024 KiB"), "{e}");
        let ok = dir.path().join("ok");
        std::fs::write(&ok, vec![b'a'; MAX_FILE_BYTES as usize]).unwrap();
        assert_eq!(read_bounded(&ok).unwrap().len() as u64, MAX_FILE_BYTES);
    }
}

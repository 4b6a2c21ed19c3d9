//! The spool's files: segments named after their first seq, appended to
//! until they reach their size, deleted whole once every record in them is
//! acknowledged or dropped.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) first_seq: u64,
    /// One past the last frame's seq (`first_seq` when empty).
    pub(super) end_seq: u64,
    pub(super) bytes: u64,
    pub(super) newest_ms: u64,
}

/// The file name of the segment whose first record is `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

//! Opening the spool: the segments a killed or crashed run left, torn
//! tails cut, damaged segments counted as lost from the damage on, the
//! persisted low water read back so only what was not acknowledged is sent
//! again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::frame::decode_frame;
use super::segment::Segment;
use super::*;

/// What opening the spool found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Unacknowledged records waiting to be sent again.
    pub pending: u64,
    /// Records lost to damaged files (torn tails are not counted: they were
    /// never acknowledged to anyone as written).
    pub corrupt: u64,
    pub segments: usize,
}

impl Spool {
    /// Opens (creating) the spool directory and recovers what it holds.
    pub fn open(cfg: SpoolConfig) -> io::Result<(Spool, Recovery)> {
        fs::create_dir_all(&cfg.dir)?;
        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(&cfg.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let p = e.path();
                let stem = p.file_name()?.to_str()?.strip_suffix(".seg")?.to_string();
                Some((stem.parse().ok()?, p))
            })
            .collect();
        names.sort();
        let mut recovery = Recovery::default();
        let mut segments = VecDeque::new();
        let mut next_seq = 0u64;
        let count = names.len();
        for (i, (first_seq, path)) in names.into_iter().enumerate() {
            let data = fs::read(&path)?;
            let mut off = 0;
            let mut seg = Segment { path: path.clone(), first_seq, end_seq: first_seq, bytes: 0, newest_ms: 0 };
            while off < data.len() {
                match decode_frame(&data[off..]) {
                    // Seqs stop at MAX_SEQ: a segment named near u64::MAX
                    // (found by the `spool` fuzz target) would overflow.
                    Some((e, len)) if e.seq == seg.end_seq && seg.end_seq < MAX_SEQ => {
                        seg.end_seq += 1;
                        seg.newest_ms = seg.newest_ms.max(e.time_ms);
                        off += len;
                    }
                    _ => break,
                }
            }
            if off < data.len() {
                if i + 1 < count {
                    // Damage inside an older segment: what follows it there is
                    // lost (counted from the gap it leaves below).
                    tracing::error!(file = %path.display(), offset = off, "damaged spool segment; the rest of it is skipped");
                }
                OpenOptions::new().write(true).open(&path)?.set_len(off as u64)?;
            }
            seg.bytes = off as u64;
            if seg.end_seq == seg.first_seq {
                fs::remove_file(&path)?;
                continue;
            }
            next_seq = next_seq.max(seg.end_seq);
            segments.push_back(seg);
        }
        let stored = Self::read_low_water(&cfg.dir).unwrap_or(0);
        next_seq = next_seq.max(stored);
        let first = segments.front().map(|s| s.first_seq).unwrap_or(next_seq);
        let low_water = stored.max(first).min(next_seq);
        // Records lost to damage leave gaps between segments: they count as
        // lost and as settled, so the low water can pass them.
        let mut gaps = BTreeMap::new();
        // (The low water is persisted before segments are deleted, so records
        // between it and the first segment were lost, not delivered.)
        if !segments.is_empty() {
            recovery.corrupt += first.saturating_sub(stored);
        }
        // Segments can overlap (a damaged name inside an older one's range,
        // found by the `spool` fuzz target): a gap starts where everything
        // before it ends, not where the previous segment does.
        let mut covered = 0u64;
        for (a, b) in segments.iter().zip(segments.iter().skip(1)) {
            covered = covered.max(a.end_seq);
            let gap = covered.max(low_water)..b.first_seq;
            if gap.start < gap.end {
                recovery.corrupt += gap.end - gap.start;
                gaps.insert(gap.start, gap.end);
            }
        }
        recovery.segments = segments.len();
        let mut spool = Spool {
            cfg,
            segments,
            writer: None,
            next_seq,
            low_water,
            acked: BTreeSet::new(),
            gaps,
            cursor: low_water,
            cursor_pos: None,
            reader: None,
            unsynced: false,
            last_sync: Instant::now(),
            persisted_low_water: stored,
            dropped: Dropped { corrupt: recovery.corrupt, ..Default::default() },
            recent_drops: VecDeque::new(),
        };
        spool.advance_low_water();
        recovery.pending = spool.pending();
        spool.persist_low_water()?;
        spool.delete_acknowledged_segments()?;
        Ok((spool, recovery))
    }

    fn read_low_water(dir: &Path) -> Option<u64> {
        let data = fs::read(dir.join(LOW_WATER_FILE)).ok()?;
        let v = u64::from_le_bytes(data.get(0..8)?.try_into().ok()?);
        let crc = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
        // A low water past MAX_SEQ is as damaged as a bad checksum.
        (crc32fast::hash(&data[0..8]) == crc && v <= MAX_SEQ).then_some(v)
    }
}

//! Durable FIFO of messages waiting for the broker's acknowledgement: a
//! directory of append-only segment files (`<first seq>.seg`).
//!
//! A frame is `len u32 | crc32 u32 | seq u64 | time_ms u64 | payload` (little
//! endian; the CRC covers seq, time and payload) and is written with a single
//! write(2): a killed agent leaves every frame it wrote in the page cache,
//! and a crash of the host at worst a torn tail, which recovery cuts off.
//! When the data reaches the disk is the `SyncPolicy`'s choice.
//!
//! Acknowledgements arrive out of order (one queue per partition), so the
//! spool tracks the lowest unacknowledged seq, the low water, and persists it
//! lazily in `low-water`; whole segments below it are deleted. A restart
//! resends from the persisted low water: what was acknowledged after the last
//! persist is sent twice, which at-least-once delivery allows (consumers
//! de-duplicate by event id).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod frame;
mod recovery;
mod segment;

use frame::{decode_frame, HEADER, MAX_FRAME};
pub use frame::{encode_frame, Entry};
pub use recovery::Recovery;
pub use segment::segment_name;
use segment::{sync_dir, Segment};

/// Highest seq the spool takes: far beyond any real count of events (a
/// million a second for 146,000 years), far below overflow.
const MAX_SEQ: u64 = 1 << 62;
/// The file holding the persisted low water (`u64 | crc32`, little endian).
pub const LOW_WATER_FILE: &str = "low-water";

/// How appended frames reach the disk, as configured (`spool_sync`); with
/// `spool_sync_interval` it makes the `SyncPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Always,
    Interval,
    Never,
}

impl SyncPolicy {
    pub fn new(mode: SyncMode, interval: Duration) -> Self {
        match mode {
            SyncMode::Always => SyncPolicy::Always,
            SyncMode::Interval => SyncPolicy::Interval(interval),
            SyncMode::Never => SyncPolicy::Never,
        }
    }
}

/// When appended frames are forced to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fdatasync after every append, before the messages go to the producer:
    /// survives a host crash or power loss.
    Always,
    /// fdatasync at most this often: a host crash loses up to that much.
    Interval(Duration),
    /// Leave it to the kernel: survives the agent being killed, not the host.
    Never,
}

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub max_age: Duration,
    pub sync: SyncPolicy,
}

impl SpoolConfig {
    /// Segments are an eighth of the bound (4 KiB..16 MiB): dropping the
    /// oldest segment frees room without throwing away much more than needed.
    fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 8).clamp(4 << 10, 16 << 20)
    }
}

/// Why spooled records were thrown away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// `max_bytes` was reached: the oldest went.
    Size,
    /// Older than `max_age`.
    Age,
    /// Unreadable on disk (damaged file).
    Corrupt,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub size: u64,
    pub age: u64,
    pub corrupt: u64,
}

impl Dropped {
    fn counter(&mut self, reason: DropReason) -> &mut u64 {
        match reason {
            DropReason::Size => &mut self.size,
            DropReason::Age => &mut self.age,
            DropReason::Corrupt => &mut self.corrupt,
        }
    }

    fn add(&mut self, reason: DropReason, n: u64) {
        *self.counter(reason) += n;
    }

    pub fn total(&self) -> u64 {
        self.size + self.age + self.corrupt
    }
}

pub struct Spool {
    cfg: SpoolConfig,
    segments: VecDeque<Segment>,
    writer: Option<File>,
    next_seq: u64,
    /// Lowest seq not acknowledged.
    low_water: u64,
    /// Acknowledged seqs above the low water.
    acked: BTreeSet<u64>,
    /// Seq ranges (start -> end) above the low water that no segment holds:
    /// records lost to damage, settled as a whole. Ranges, not seqs: a
    /// damaged or stray segment name can leave a gap of billions.
    gaps: BTreeMap<u64, u64>,
    /// Next seq `read_next` returns (skipping acknowledged ones).
    cursor: u64,
    /// (segment's first seq, byte offset) of `cursor`, when known.
    cursor_pos: Option<(u64, u64)>,
    /// The segment `read_next` reads, kept open (segment's first seq, file).
    reader: Option<(u64, File)>,
    unsynced: bool,
    last_sync: Instant,
    persisted_low_water: u64,
    dropped: Dropped,
    /// Recently dropped seq ranges ([first, end), why): a dropped record the
    /// producer already had may still be delivered, and then is not lost.
    recent_drops: VecDeque<(u64, u64, DropReason)>,
}

/// Dropped ranges remembered for late acknowledgements (a segment each).
const RECENT_DROPS: usize = 64;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Spool {
    /// Appends messages (time in Unix ms, payload) as one write; returns the
    /// seq of the first. Applies the sync policy, then the size bound.
    pub fn append<'a>(&mut self, items: impl IntoIterator<Item = (u64, &'a [u8])>) -> io::Result<u64> {
        let first = self.next_seq;
        let mut buf = Vec::new();
        for (time_ms, payload) in items {
            if self.writer.is_none() || self.active_bytes() + buf.len() as u64 >= self.cfg.segment_bytes() {
                self.write_out(&mut buf)?;
                self.roll()?;
            }
            encode_frame(&mut buf, self.next_seq, time_ms, payload);
            self.next_seq += 1;
            if let Some(seg) = self.segments.back_mut() {
                seg.newest_ms = seg.newest_ms.max(time_ms);
            }
        }
        self.write_out(&mut buf)?;
        match self.cfg.sync {
            SyncPolicy::Always => self.sync()?,
            SyncPolicy::Interval(every) if self.last_sync.elapsed() >= every => self.sync()?,
            _ => {}
        }
        self.enforce_size();
        Ok(first)
    }

    fn active_bytes(&self) -> u64 {
        self.segments.back().map(|s| s.bytes).unwrap_or(0)
    }

    fn write_out(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let (Some(w), Some(seg)) = (self.writer.as_mut(), self.segments.back_mut()) else {
            return Err(io::Error::other("spool has no open segment"));
        };
        if let Err(e) = w.write_all(buf) {
            // A partial write leaves a torn frame: cut it so the segment stays valid.
            let _ = w.set_len(seg.bytes);
            self.next_seq = seg.end_seq;
            buf.clear();
            return Err(e);
        }
        seg.bytes += buf.len() as u64;
        seg.end_seq = self.next_seq;
        self.unsynced = true;
        buf.clear();
        Ok(())
    }

    fn roll(&mut self) -> io::Result<()> {
        if self.writer.is_some() {
            self.sync_writer()?;
        }
        let path = self.cfg.dir.join(segment_name(self.next_seq));
        let f = OpenOptions::new().create(true).append(true).open(&path)?;
        if self.cfg.sync == SyncPolicy::Always {
            sync_dir(&self.cfg.dir)?;
        }
        // A reopened spool may end in a non-full segment; a new one starts here.
        self.segments.push_back(Segment {
            path,
            first_seq: self.next_seq,
            end_seq: self.next_seq,
            bytes: 0,
            newest_ms: 0,
        });
        self.writer = Some(f);
        Ok(())
    }

    fn sync_writer(&mut self) -> io::Result<()> {
        if self.unsynced && self.cfg.sync != SyncPolicy::Never {
            if let Some(w) = &self.writer {
                w.sync_data()?;
            }
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Forces appended frames to the disk (per the policy; `Never` does nothing).
    pub fn sync(&mut self) -> io::Result<()> {
        self.sync_writer()
    }

    /// Housekeeping to call now and then: interval syncs, the age bound,
    /// persisting the low water, deleting acknowledged segments.
    pub fn tick(&mut self) -> io::Result<()> {
        if let SyncPolicy::Interval(every) = self.cfg.sync {
            if self.unsynced && self.last_sync.elapsed() >= every {
                self.sync()?;
            }
        }
        self.enforce_age(now_ms());
        self.persist_low_water()?;
        self.delete_acknowledged_segments()
    }

    /// The next unacknowledged message after the last one read, if any.
    pub fn read_next(&mut self) -> io::Result<Option<Entry>> {
        loop {
            if self.cursor < self.low_water {
                self.cursor = self.low_water;
                self.cursor_pos = None;
            }
            if self.cursor >= self.next_seq {
                return Ok(None);
            }
            let Some(entry) = self.read_at_cursor()? else {
                return Ok(None);
            };
            self.cursor = entry.seq + 1;
            if !self.acked.contains(&entry.seq) {
                return Ok(Some(entry));
            }
        }
    }

    fn read_at_cursor(&mut self) -> io::Result<Option<Entry>> {
        let Some(idx) = self.segments.iter().position(|s| s.first_seq <= self.cursor && self.cursor < s.end_seq) else {
            // The cursor's segment was dropped: go on from the oldest left.
            match self.segments.iter().find(|s| s.first_seq > self.cursor) {
                Some(s) => {
                    self.cursor = s.first_seq;
                    self.cursor_pos = None;
                    return self.read_at_cursor();
                }
                None => return Ok(None),
            }
        };
        let seg = &self.segments[idx];
        let mut off = match self.cursor_pos {
            Some((first, off)) if first == seg.first_seq => off,
            _ => 0,
        };
        if self.reader.as_ref().is_none_or(|(first, _)| *first != seg.first_seq) {
            self.reader = Some((seg.first_seq, File::open(&seg.path)?));
        }
        let Some((_, f)) = &self.reader else { return Ok(None) };
        let mut header = [0u8; HEADER];
        loop {
            if off + HEADER as u64 > seg.bytes {
                return Err(io::Error::other(format!("spool segment {} ends early", seg.path.display())));
            }
            f.read_exact_at(&mut header, off)?;
            let len = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default()) as usize;
            let seq = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
            if !(HEADER..=MAX_FRAME).contains(&len) {
                return Err(io::Error::other(format!("damaged frame in {}", seg.path.display())));
            }
            if seq < self.cursor {
                off += len as u64;
                continue;
            }
            let mut frame = vec![0u8; len];
            f.read_exact_at(&mut frame, off)?;
            let Some((entry, _)) = decode_frame(&frame) else {
                return Err(io::Error::other(format!("damaged frame in {}", seg.path.display())));
            };
            self.cursor_pos = Some((seg.first_seq, off + len as u64));
            return Ok(Some(entry));
        }
    }

    /// Sends everything unacknowledged again, from the oldest (after a
    /// delivery failure, so the per-key order holds).
    pub fn rewind(&mut self) {
        self.cursor = self.low_water;
        self.cursor_pos = None;
    }

    /// The broker has `seq`.
    pub fn ack(&mut self, seq: u64) {
        if seq < self.low_water {
            // Delivered after all, though dropped while in the producer's hands.
            if let Some(i) = self.recent_drops.iter().position(|(a, b, _)| (*a..*b).contains(&seq)) {
                let reason = self.recent_drops[i].2;
                let c = self.dropped.counter(reason);
                *c = c.saturating_sub(1);
            }
            return;
        }
        if seq >= self.next_seq {
            return;
        }
        if self.gaps.range(..=seq).next_back().is_some_and(|(_, &end)| seq < end) {
            // A seq lost to damage: settled already (and never sent).
            return;
        }
        self.acked.insert(seq);
        self.advance_low_water();
    }

    /// Moves the low water past acknowledged seqs and lost ranges.
    fn advance_low_water(&mut self) {
        loop {
            if self.acked.remove(&self.low_water) {
                self.low_water += 1;
            } else if let Some(end) = self.gaps.remove(&self.low_water) {
                self.low_water = end;
            } else {
                break;
            }
        }
    }

    fn delete_acknowledged_segments(&mut self) -> io::Result<()> {
        // The newest segment stays: it is the one being written.
        while self.segments.len() > 1 && self.segments[0].end_seq <= self.low_water {
            let seg = self.segments.pop_front().unwrap_or_else(|| unreachable!());
            fs::remove_file(&seg.path)?;
        }
        Ok(())
    }

    fn persist_low_water(&mut self) -> io::Result<()> {
        if self.low_water == self.persisted_low_water {
            return Ok(());
        }
        let mut data = self.low_water.to_le_bytes().to_vec();
        data.extend_from_slice(&crc32fast::hash(&data).to_le_bytes());
        let tmp = self.cfg.dir.join(format!("{LOW_WATER_FILE}.tmp"));
        fs::write(&tmp, &data)?;
        fs::rename(&tmp, self.cfg.dir.join(LOW_WATER_FILE))?;
        self.persisted_low_water = self.low_water;
        Ok(())
    }

    /// Unacknowledged records in `seqs`.
    fn unacked_in(&self, first: u64, end: u64) -> u64 {
        let first = first.max(self.low_water);
        if end <= first {
            return 0;
        }
        (end - first) - self.acked.range(first..end).count() as u64
    }

    /// Drops the oldest segment (rolling first if it is the one being
    /// written) and counts its unacknowledged records.
    fn drop_oldest(&mut self, reason: DropReason) -> io::Result<u64> {
        if self.segments.len() == 1 {
            self.roll()?;
        }
        let Some(seg) = self.segments.pop_front() else {
            return Ok(0);
        };
        let lost = self.unacked_in(seg.first_seq, seg.end_seq);
        if lost > 0 {
            let first = seg.first_seq.max(self.low_water);
            match self.recent_drops.back_mut() {
                // Segments drop oldest first: a run of drops is one range, so
                // records the producer held since long ago are still known
                // when their late acknowledgement comes.
                Some((_, end, r)) if *end == first && *r == reason => *end = seg.end_seq,
                _ => self.recent_drops.push_back((first, seg.end_seq, reason)),
            }
            if self.recent_drops.len() > RECENT_DROPS {
                self.recent_drops.pop_front();
            }
        }
        if let Err(e) = fs::remove_file(&seg.path) {
            tracing::warn!(file = %seg.path.display(), error = %e, "cannot delete a dropped spool segment");
        }
        if self.low_water < seg.end_seq {
            self.low_water = seg.end_seq;
            self.acked = self.acked.split_off(&seg.end_seq);
            // Lost ranges below the new low water are settled with it.
            let kept = self.gaps.split_off(&seg.end_seq);
            if let Some((_, &end)) = self.gaps.iter().next_back() {
                self.low_water = self.low_water.max(end);
            }
            self.gaps = kept;
            self.advance_low_water();
        }
        self.dropped.add(reason, lost);
        // So a restart does not count them again as lost to damage.
        if let Err(e) = self.persist_low_water() {
            tracing::warn!(error = %e, "cannot persist the spool's low water");
        }
        if lost > 0 {
            tracing::warn!(
                records = lost,
                reason = ?reason,
                "Kafka spool bound reached: the oldest undelivered records were dropped"
            );
        }
        Ok(lost)
    }

    fn enforce_size(&mut self) {
        while self.bytes() > self.cfg.max_bytes && self.segments.len() > 1 {
            if let Err(e) = self.drop_oldest(DropReason::Size) {
                tracing::error!(error = %e, "cannot drop spool segments");
                return;
            }
        }
    }

    fn enforce_age(&mut self, now_ms: u64) {
        let max = self.cfg.max_age.as_millis() as u64;
        while let Some(seg) = self.segments.front() {
            let expired = seg.end_seq > seg.first_seq && now_ms.saturating_sub(seg.newest_ms) > max;
            let pending = self.unacked_in(seg.first_seq, seg.end_seq) > 0;
            if !(expired && pending) {
                return;
            }
            if let Err(e) = self.drop_oldest(DropReason::Age) {
                tracing::error!(error = %e, "cannot drop expired spool segments");
                return;
            }
        }
    }

    /// Unacknowledged records.
    pub fn pending(&self) -> u64 {
        let lost: u64 = self.gaps.iter().map(|(a, b)| b - a).sum();
        self.next_seq - self.low_water - self.acked.len() as u64 - lost
    }

    /// Records not yet read by `read_next` (a backlog to send).
    pub fn unread(&self) -> u64 {
        self.next_seq.saturating_sub(self.cursor.max(self.low_water))
    }

    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Time of the oldest unacknowledged record (Unix ms), if any.
    pub fn oldest_pending_ms(&mut self) -> Option<u64> {
        if self.pending() == 0 {
            return None;
        }
        let seg = self.segments.iter().find(|s| s.end_seq > self.low_water)?;
        let f = File::open(&seg.path).ok()?;
        let mut off = 0u64;
        let mut header = [0u8; HEADER];
        while off + HEADER as u64 <= seg.bytes {
            f.read_exact_at(&mut header, off).ok()?;
            let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as u64;
            let seq = u64::from_le_bytes(header[8..16].try_into().ok()?);
            if seq >= self.low_water {
                return Some(u64::from_le_bytes(header[16..24].try_into().ok()?));
            }
            off += len.max(HEADER as u64);
        }
        None
    }

    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// Persists the low water and syncs (shutdown).
    pub fn close(&mut self) -> io::Result<()> {
        self.sync()?;
        self.persist_low_water()?;
        self.delete_acknowledged_segments()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(dir: &Path, max_bytes: u64) -> SpoolConfig {
        SpoolConfig { dir: dir.to_path_buf(), max_bytes, max_age: Duration::from_secs(3600), sync: SyncPolicy::Never }
    }

    fn payloads(spool: &mut Spool) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(e) = spool.read_next().unwrap() {
            out.push((e.seq, e.payload));
        }
        out
    }

    fn push(spool: &mut Spool, items: &[&str]) -> u64 {
        spool.append(items.iter().map(|s| (now_ms(), s.as_bytes()))).unwrap()
    }

    #[test]
    fn survives_reopen_and_resends_only_unacknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, rec) = Spool::open(cfg(dir.path(), 1 << 20)).unwrap();
        assert_eq!(rec.pending, 0);
        push(&mut s, &["a", "b", "c", "d"]);
        let read = payloads(&mut s);
        assert_eq!(read.len(), 4);
        s.ack(0);
        s.ack(2); // out of order: b (1) is still missing
        assert_eq!(s.pending(), 2);
        s.close().unwrap();
        drop(s);

        let (mut s, rec) = Spool::open(cfg(dir.path(), 1 << 20)).unwrap();
        // The low water (1) was persisted; c (2) was acknowledged above it and comes again.
        assert_eq!(rec.pending, 3);
        let again: Vec<Vec<u8>> = payloads(&mut s).into_iter().map(|(_, p)| p).collect();
        assert_eq!(again, vec![b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]);
        // New records continue the sequence.
        assert_eq!(push(&mut s, &["e"]), 4);
    }

    /// Found by the `spool` fuzz target: a segment whose name is far above
    /// the others left a gap of ~2^60 records, each put in a set (10 GiB
    /// and counting). Gaps are ranges now.
    #[test]
    fn a_stray_segment_far_ahead_leaves_a_counted_gap_not_a_huge_set() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(cfg(dir.path(), 1 << 30)).unwrap();
        push(&mut s, &["a", "b"]);
        s.close().unwrap();
        drop(s);
        let far = 1u64 << 60;
        let mut frame = Vec::new();
        encode_frame(&mut frame, far, 1, b"stray");
        fs::write(dir.path().join(segment_name(far)), frame).unwrap();
        let started = Instant::now();
        let (mut s, rec) = Spool::open(cfg(dir.path(), 1 << 30)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(rec.corrupt, far - 2, "the gap is counted as lost");
        assert_eq!(s.pending(), 3);
        let read: Vec<(u64, Vec<u8>)> = payloads(&mut s);
        assert_eq!(read, vec![(0, b"a".to_vec()), (1, b"b".to_vec()), (far, b"stray".to_vec())]);
        s.ack(0);
        s.ack(1);
        assert_eq!(s.pending(), 1, "the low water passed the gap");
        s.ack(far - 7);
        assert_eq!(s.pending(), 1, "an ack inside the lost range changes nothing");
        s.ack(far);
        assert_eq!(s.pending(), 0);
    }

    /// Found by the `spool` fuzz target: a segment named u64::MAX holding
    /// that seq overflowed the segment's end.
    #[test]
    fn a_segment_at_the_end_of_the_seq_space_is_refused_not_overflowed() {
        let dir = tempfile::tempdir().unwrap();
        let mut frame = Vec::new();
        encode_frame(&mut frame, u64::MAX, 1, b"x");
        fs::write(dir.path().join(segment_name(u64::MAX)), frame).unwrap();
        let (mut s, rec) = Spool::open(cfg(dir.path(), 1 << 20)).unwrap();
        assert_eq!(rec.segments, 0, "the foreign segment is dropped");
        assert_eq!(s.pending(), 0);
        push(&mut s, &["a"]);
        assert_eq!(s.pending(), 1);
    }

    /// Found by the `spool` fuzz target: a segment named inside an older
    /// one's range made the gap after it start too early, so records still
    /// on disk counted as lost.
    #[test]
    fn overlapping_segments_count_only_what_is_really_missing() {
        let dir = tempfile::tempdir().unwrap();
        let mut older = Vec::new();
        for seq in 0..10 {
            encode_frame(&mut older, seq, 1, b"a");
        }
        fs::write(dir.path().join(segment_name(0)), older).unwrap();
        for seq in [3u64, 21] {
            let mut f = Vec::new();
            encode_frame(&mut f, seq, 1, b"b");
            fs::write(dir.path().join(segment_name(seq)), f).unwrap();
        }
        let (mut s, rec) = Spool::open(cfg(dir.path(), 1 << 30)).unwrap();
        assert_eq!(rec.corrupt, 11, "10..21 lost, nothing else");
        let read: Vec<u64> = payloads(&mut s).into_iter().map(|(seq, _)| seq).collect();
        assert_eq!(read, (0..10).chain([21]).collect::<Vec<_>>());
        assert_eq!(s.pending(), read.len() as u64);
    }

    #[test]
    fn torn_tail_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(cfg(dir.path(), 1 << 20)).unwrap();
        push(&mut s, &["one", "two"]);
        drop(s);
        let seg = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.ends_with(segment_name(0)))
            .unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2, 3]).unwrap(); // half a frame
        drop(f);
        let (mut s, rec) = Spool::open(cfg(dir.path(), 1 << 20)).unwrap();
        assert_eq!((rec.pending, rec.corrupt), (2, 0));
        push(&mut s, &["three"]);
        let all: Vec<Vec<u8>> = payloads(&mut s).into_iter().map(|(_, p)| p).collect();
        assert_eq!(all, vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
    }

    #[test]
    fn rewind_resends_in_order_skipping_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(cfg(dir.path(), 1 << 20)).unwrap();
        push(&mut s, &["a", "b", "c"]);
        assert_eq!(payloads(&mut s).len(), 3);
        s.ack(1);
        s.rewind();
        let seqs: Vec<u64> = payloads(&mut s).into_iter().map(|(q, _)| q).collect();
        assert_eq!(seqs, vec![0, 2]);
    }

    #[test]
    fn size_bound_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let max = 64 << 10;
        let (mut s, _) = Spool::open(cfg(dir.path(), max)).unwrap();
        let big = "x".repeat(1000);
        for _ in 0..200 {
            push(&mut s, &[&big]);
        }
        assert!(s.bytes() <= max, "{} bytes spooled", s.bytes());
        let d = s.dropped();
        assert!(d.size > 0);
        assert_eq!(d.size + s.pending(), 200, "every record is either pending or counted as dropped");
        // What is left is the newest, in order.
        let seqs: Vec<u64> = payloads(&mut s).into_iter().map(|(q, _)| q).collect();
        assert_eq!(*seqs.last().unwrap(), 199);
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    }

    #[test]
    fn a_dropped_record_delivered_after_all_is_not_counted_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(cfg(dir.path(), 64 << 10)).unwrap();
        for i in 0..50 {
            push(&mut s, &[&format!("early {i}")]);
        }
        // The producer holds the first fifty while hundreds of segments go.
        let in_flight: Vec<u64> = (0..50).map(|_| s.read_next().unwrap().unwrap().seq).collect();
        let big = "x".repeat(1000);
        for _ in 0..20_000 {
            push(&mut s, &[&big]);
        }
        let dropped = s.dropped().size;
        assert!(dropped > 19_000);
        for seq in in_flight {
            s.ack(seq);
        }
        assert_eq!(s.dropped().size, dropped - 50, "each late acknowledgement un-counts one drop");
        assert_eq!(s.dropped().size + s.pending(), 20_000);
    }

    #[test]
    fn acknowledged_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(cfg(dir.path(), 64 << 10)).unwrap();
        let big = "y".repeat(2000);
        for _ in 0..40 {
            push(&mut s, &[&big]);
        }
        while let Some(e) = s.read_next().unwrap() {
            s.ack(e.seq);
        }
        s.tick().unwrap();
        assert_eq!(s.pending(), 0);
        let files = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg"))
            .count();
        assert_eq!(files, 1, "only the segment being written remains");
    }

    #[test]
    fn age_bound_drops_old_records() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(cfg(dir.path(), 1 << 20)).unwrap();
        let old = now_ms() - 7_200_000;
        s.append([(old, &b"stale"[..])]).unwrap();
        s.tick().unwrap();
        assert_eq!(s.dropped().age, 1);
        assert_eq!(s.pending(), 0);
        push(&mut s, &["fresh"]);
        assert_eq!(payloads(&mut s).len(), 1);
    }

    #[test]
    fn damage_in_an_older_segment_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(cfg(dir.path(), 64 << 10)).unwrap();
        let big = "z".repeat(3000);
        for _ in 0..10 {
            push(&mut s, &[&big]);
        }
        drop(s);
        let first = dir.path().join(segment_name(0));
        let mut data = fs::read(&first).unwrap();
        data[30] ^= 0xff;
        fs::write(&first, data).unwrap();
        let (mut s, rec) = Spool::open(cfg(dir.path(), 64 << 10)).unwrap();
        // The first frame of the first segment is damaged: that segment's records are lost.
        assert!(rec.corrupt >= 1, "{rec:?}");
        assert_eq!(rec.corrupt + rec.pending, 10, "{rec:?}");
        let read = payloads(&mut s);
        assert_eq!(read.len() as u64, rec.pending);
        // The lost seqs do not hold back the low water once the rest is acknowledged.
        for (seq, _) in read {
            s.ack(seq);
        }
        assert_eq!(s.pending(), 0);
    }
}

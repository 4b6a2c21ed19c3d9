//! One spooled record on disk: `len u32 | crc32 u32 | seq u64 | time_ms u64
//! | payload`, little endian; the CRC covers seq, time and payload. Written
//! with a single write(2), so a killed agent leaves whole frames and a host
//! crash at worst a torn tail, which recovery cuts off.

pub(super) const HEADER: usize = 24;
/// A frame larger than this is corruption, not a message.
pub(super) const MAX_FRAME: usize = 64 << 20;

/// One spooled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    /// When the record was made (Unix milliseconds), for age bounds and latency.
    pub time_ms: u64,
    pub payload: Vec<u8>,
}

/// Appends one frame (see the module doc) to `buf`.
pub fn encode_frame(buf: &mut Vec<u8>, seq: u64, time_ms: u64, payload: &[u8]) {
    let len = (HEADER + payload.len()) as u32;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(&time_ms.to_le_bytes());
    crc.update(payload);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&time_ms.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Decodes the frame at the start of `data`: `None` if it is torn or damaged.
pub(super) fn decode_frame(data: &[u8]) -> Option<(Entry, usize)> {
    if data.len() < HEADER {
        return None;
    }
    let len = u32::from_le_bytes(data[0..4].try_into().ok()?) as usize;
    if !(HEADER..=MAX_FRAME).contains(&len) || data.len() < len {
        return None;
    }
    let crc = u32::from_le_bytes(data[4..8].try_into().ok()?);
    if crc32fast::hash(&data[8..len]) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(data[8..16].try_into().ok()?);
    let time_ms = u64::from_le_bytes(data[16..24].try_into().ok()?);
    Some((Entry { seq, time_ms, payload: data[HEADER..len].to_vec() }, len))
}

//! Protobuf wire format, written directly: the metrics export request is
//! encoded point by point into byte buffers instead of building the
//! generated message structs (a `String` per attribute key and value of
//! every point) and encoding them afterwards (prost sizes nested messages
//! again at every level). Field numbers are those of opentelemetry-proto;
//! tests decode the output with the generated types.

/// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

pub(crate) fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn tag_len(field: u32) -> usize {
    varint_len(u64::from(field) << 3)
}

/// Length of a length-delimited field holding `len` bytes.
pub(crate) fn len_field_len(field: u32, len: usize) -> usize {
    tag_len(field) + varint_len(len as u64) + len
}

/// The header of a length-delimited field whose `len` bytes follow.
pub(crate) fn put_len_header(out: &mut Vec<u8>, field: u32, len: usize) {
    put_tag(out, field, LEN);
    put_varint(out, len as u64);
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_len_header(out, field, bytes.len());
    out.extend_from_slice(bytes);
}

pub(crate) fn put_str(out: &mut Vec<u8>, field: u32, s: &str) {
    put_bytes(out, field, s.as_bytes());
}

/// A string field, left out when empty (proto3 default).
pub(crate) fn put_str_nonempty(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_str(out, field, s);
    }
}

pub(crate) fn str_nonempty_len(field: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        len_field_len(field, s.len())
    }
}

pub(crate) fn put_fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    put_tag(out, field, FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    put_fixed64(out, field, v.to_bits());
}

pub(crate) fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_tag(out, field, VARINT);
    put_varint(out, v);
}

pub(crate) fn varint_field_len(field: u32, v: u64) -> usize {
    tag_len(field) + varint_len(v)
}

/// `KeyValue { key, value: AnyValue { string_value } }` as field `field`
/// of the enclosing message.
pub(crate) fn put_string_attribute(out: &mut Vec<u8>, field: u32, key: &str, value: &str) {
    // AnyValue.string_value = 1; KeyValue.key = 1, KeyValue.value = 2.
    let any = len_field_len(1, value.len());
    let kv = len_field_len(1, key.len()) + len_field_len(2, any);
    put_len_header(out, field, kv);
    put_str(out, 1, key);
    put_len_header(out, 2, any);
    put_str(out, 1, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
    use prost::Message;

    #[test]
    fn varints_and_lengths_agree() {
        for v in [0u64, 1, 127, 128, 300, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            assert_eq!(prost::encoding::decode_varint(&mut b.as_slice()).unwrap(), v);
        }
    }

    #[test]
    fn attributes_decode_as_key_values() {
        let mut b = Vec::new();
        put_string_attribute(&mut b, 1, "libvirt.domain.name", &"é".repeat(100));
        // Field 1 of a wrapper message: decode it as a KeyValue list.
        #[derive(Clone, PartialEq, prost::Message)]
        struct Wrap {
            #[prost(message, repeated, tag = "1")]
            kv: Vec<KeyValue>,
        }
        let w = Wrap::decode(b.as_slice()).unwrap();
        assert_eq!(w.kv[0].key, "libvirt.domain.name");
        match w.kv[0].value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => assert_eq!(s, &"é".repeat(100)),
            other => panic!("{other:?}"),
        }
    }
}

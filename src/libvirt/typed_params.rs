//! Decoding of libvirt typed parameters (`virTypedParameter` arrays).
//!
//! The decoder never panics: names are read within their fixed 80-byte field
//! even when libvirt forgets the terminator, strings are read only when
//! non-NULL, and a type code this build does not know is reported back
//! instead of guessed at.

use std::ffi::{c_char, c_int, CStr};

use std::sync::Arc;

use rustc_hash::FxHashMap;

use virt_sys as sys;

pub use crate::value::TypedValue;

/// libvirt's type codes of typed parameters (`VIR_TYPED_PARAM_*`), for
/// code outside the FFI that builds or checks raw parameters.
pub mod type_code {
    use virt_sys as sys;
    pub const INT: u32 = sys::VIR_TYPED_PARAM_INT;
    pub const UINT: u32 = sys::VIR_TYPED_PARAM_UINT;
    pub const LLONG: u32 = sys::VIR_TYPED_PARAM_LLONG;
    pub const ULLONG: u32 = sys::VIR_TYPED_PARAM_ULLONG;
    pub const DOUBLE: u32 = sys::VIR_TYPED_PARAM_DOUBLE;
    pub const BOOLEAN: u32 = sys::VIR_TYPED_PARAM_BOOLEAN;
    pub const STRING: u32 = sys::VIR_TYPED_PARAM_STRING;
}

#[derive(Debug, Clone, PartialEq)]
pub struct TypedParam {
    pub name: Arc<str>,
    pub value: TypedValue,
}

/// Which parameters a caller wants decoded, by name (judged once per name).
pub type KeyFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Shares parameter names between calls: libvirt sends the same few hundred
/// keys every collection, so each is allocated once, not once per call.
/// With a filter, parameters it refuses are skipped before their values are
/// decoded (and counted).
#[derive(Default)]
pub struct KeyInterner {
    /// `None`: a name the filter refused.
    names: FxHashMap<Box<[u8]>, Option<Arc<str>>>,
    filter: Option<KeyFilter>,
    skipped: u64,
}

impl std::fmt::Debug for KeyInterner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyInterner")
            .field("names", &self.names.len())
            .field("filtered", &self.filter.is_some())
            .finish()
    }
}

/// Distinct names kept at most; beyond that the table starts over.
const MAX_INTERNED: usize = 50_000;

impl KeyInterner {
    pub fn with_filter(filter: Option<KeyFilter>) -> Self {
        Self { filter, ..Self::default() }
    }

    /// The shared name, or `None` when the filter refuses it.
    pub fn intern(&mut self, bytes: &[u8]) -> Option<Arc<str>> {
        if let Some(name) = self.names.get(bytes) {
            if name.is_none() {
                self.skipped += 1;
            }
            return name.clone();
        }
        if self.names.len() >= MAX_INTERNED {
            self.names.clear();
        }
        let text = String::from_utf8_lossy(bytes);
        let name: Option<Arc<str>> = match &self.filter {
            Some(wanted) if !wanted(&text) => None,
            _ => Some(text.into()),
        };
        if name.is_none() {
            self.skipped += 1;
        }
        self.names.insert(bytes.into(), name.clone());
        name
    }

    /// Parameters skipped by the filter so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// A parameter this build could not decode (a type code newer than it knows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndecodedParam {
    pub name: String,
    pub type_code: i32,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct DecodedParams {
    pub params: Vec<TypedParam>,
    pub undecoded: Vec<UndecodedParam>,
}

impl DecodedParams {
    pub fn get(&self, name: &str) -> Option<&TypedValue> {
        self.params.iter().find(|p| &*p.name == name).map(|p| &p.value)
    }
}

/// The name's bytes, up to the terminator or the end of the fixed field.
fn field_bytes(field: &[c_char; sys::VIR_TYPED_PARAM_FIELD_LENGTH as usize]) -> &[u8] {
    // SAFETY: c_char and u8 have the same size and alignment.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(field.as_ptr().cast(), field.len()) };
    let end = memchr::memchr(0, bytes).unwrap_or(bytes.len());
    &bytes[..end]
}

/// Decodes `n` parameters starting at `params`.
///
/// # Safety
/// `params` must be NULL or point to `n` initialised `virTypedParameter`s whose
/// string members are NULL or NUL-terminated, as libvirt hands them out.
pub unsafe fn decode(params: *const sys::virTypedParameter, n: c_int, names: &mut KeyInterner) -> DecodedParams {
    let mut out = DecodedParams::default();
    if params.is_null() || n <= 0 {
        return out;
    }
    // SAFETY: the caller's contract: `n` initialised parameters.
    let slice = unsafe { std::slice::from_raw_parts(params, n as usize) };
    out.params.reserve(slice.len());
    for p in slice {
        let Some(name) = names.intern(field_bytes(&p.field)) else { continue };
        // SAFETY: each arm reads the union member its type code names, as
        // libvirt filled it; strings are NULL or NUL-terminated (the
        // caller's contract). Unknown codes read nothing.
        let value = unsafe {
            match p.type_ as u32 {
                sys::VIR_TYPED_PARAM_INT => TypedValue::Int(p.value.i),
                sys::VIR_TYPED_PARAM_UINT => TypedValue::UInt(p.value.ui),
                sys::VIR_TYPED_PARAM_LLONG => TypedValue::LLong(p.value.l),
                sys::VIR_TYPED_PARAM_ULLONG => TypedValue::ULLong(p.value.ul),
                sys::VIR_TYPED_PARAM_DOUBLE => TypedValue::Double(p.value.d),
                sys::VIR_TYPED_PARAM_BOOLEAN => TypedValue::Boolean(p.value.b != 0),
                sys::VIR_TYPED_PARAM_STRING => {
                    let s = p.value.s;
                    if s.is_null() {
                        TypedValue::String("".into())
                    } else {
                        TypedValue::String(CStr::from_ptr(s).to_string_lossy().into())
                    }
                }
                other => {
                    out.undecoded.push(UndecodedParam { name: name.to_string(), type_code: other as i32 });
                    continue;
                }
            }
        };
        out.params.push(TypedParam { name, value });
    }
    out
}

/// One parameter of a [`ParamArray`], as raw as libvirt's: an 80-byte name
/// field (NUL-terminated or not), any type code, the value's bits, and for
/// strings the bytes (up to the first NUL) or `None` for a NULL pointer.
#[doc(hidden)]
pub struct RawParam<'a> {
    pub field: [u8; 80],
    pub type_code: c_int,
    pub bits: u64,
    pub string: Option<&'a [u8]>,
}

/// A typed-parameter array built in Rust, laid out as libvirt hands them
/// out, so tests and fuzzing decode arbitrary arrays without `unsafe`.
#[doc(hidden)]
pub struct ParamArray {
    params: Vec<sys::virTypedParameter>,
    // String members point into these boxes; their heap data never moves.
    _strings: Vec<Box<[u8]>>,
}

impl ParamArray {
    pub fn new<'a>(items: impl IntoIterator<Item = RawParam<'a>>) -> Self {
        let mut params = Vec::new();
        let mut strings = Vec::new();
        for item in items {
            let mut field = [0 as c_char; 80];
            for (d, b) in field.iter_mut().zip(item.field) {
                *d = b as c_char;
            }
            let value = if item.type_code == sys::VIR_TYPED_PARAM_STRING as c_int {
                match item.string {
                    Some(b) => {
                        let end = memchr::memchr(0, b).unwrap_or(b.len());
                        let owned: Box<[u8]> = b[..end].iter().copied().chain([0]).collect();
                        let ptr = owned.as_ptr() as *mut c_char;
                        strings.push(owned);
                        sys::_virTypedParameter__bindgen_ty_1 { s: ptr }
                    }
                    None => sys::_virTypedParameter__bindgen_ty_1 { s: std::ptr::null_mut() },
                }
            } else {
                sys::_virTypedParameter__bindgen_ty_1 { ul: item.bits }
            };
            params.push(sys::virTypedParameter { field, type_: item.type_code, value });
        }
        ParamArray { params, _strings: strings }
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Decodes the whole array.
    pub fn decode(&self, names: &mut KeyInterner) -> DecodedParams {
        self.decode_first(c_int::try_from(self.params.len()).unwrap_or(c_int::MAX), names)
    }

    /// Decodes the first `n` parameters (zero or negative: none), as when
    /// libvirt reports a count; a count past the end reads only the array.
    pub fn decode_first(&self, n: c_int, names: &mut KeyInterner) -> DecodedParams {
        let n = n.min(c_int::try_from(self.params.len()).unwrap_or(c_int::MAX));
        // SAFETY: `params` holds at least `n` initialised parameters built
        // above; string members are NULL or point to NUL-terminated bytes
        // in `_strings`, which live as long as `self`.
        unsafe { decode(self.params.as_ptr(), n, names) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn param(name: &str, type_: u32, value: sys::_virTypedParameter__bindgen_ty_1) -> sys::virTypedParameter {
        let mut field = [0 as c_char; 80];
        for (i, b) in name.bytes().take(80).enumerate() {
            field[i] = b as c_char;
        }
        sys::virTypedParameter { field, type_: type_ as c_int, value }
    }

    #[test]
    fn decodes_every_type() {
        let s = CString::new("vnet0").unwrap();
        let params = [
            param("a", sys::VIR_TYPED_PARAM_INT, sys::_virTypedParameter__bindgen_ty_1 { i: -3 }),
            param("b", sys::VIR_TYPED_PARAM_UINT, sys::_virTypedParameter__bindgen_ty_1 { ui: 7 }),
            param("c", sys::VIR_TYPED_PARAM_LLONG, sys::_virTypedParameter__bindgen_ty_1 { l: -1 << 40 }),
            param("d", sys::VIR_TYPED_PARAM_ULLONG, sys::_virTypedParameter__bindgen_ty_1 { ul: u64::MAX }),
            param("e", sys::VIR_TYPED_PARAM_DOUBLE, sys::_virTypedParameter__bindgen_ty_1 { d: 1.5 }),
            param("f", sys::VIR_TYPED_PARAM_BOOLEAN, sys::_virTypedParameter__bindgen_ty_1 { b: 1 }),
            param(
                "g",
                sys::VIR_TYPED_PARAM_STRING,
                sys::_virTypedParameter__bindgen_ty_1 { s: s.as_ptr() as *mut c_char },
            ),
        ];
        // SAFETY: a live array of initialised parameters (or NULL / no count).
        let d = unsafe { decode(params.as_ptr(), params.len() as c_int, &mut KeyInterner::default()) };
        assert!(d.undecoded.is_empty());
        let values: Vec<_> = d.params.iter().map(|p| p.value.clone()).collect();
        assert_eq!(
            values,
            vec![
                TypedValue::Int(-3),
                TypedValue::UInt(7),
                TypedValue::LLong(-1 << 40),
                TypedValue::ULLong(u64::MAX),
                TypedValue::Double(1.5),
                TypedValue::Boolean(true),
                TypedValue::String("vnet0".into()),
            ]
        );
        assert_eq!(d.get("g").and_then(|v| v.as_str()), Some("vnet0"));
    }

    #[test]
    fn unknown_type_is_reported_not_guessed() {
        let params = [
            param("new.kind", 99, sys::_virTypedParameter__bindgen_ty_1 { ul: 1 }),
            param("ok", sys::VIR_TYPED_PARAM_UINT, sys::_virTypedParameter__bindgen_ty_1 { ui: 1 }),
        ];
        // SAFETY: a live array of initialised parameters (or NULL / no count).
        let d = unsafe { decode(params.as_ptr(), 2, &mut KeyInterner::default()) };
        assert_eq!(d.params.len(), 1);
        assert_eq!(d.undecoded, vec![UndecodedParam { name: "new.kind".into(), type_code: 99 }]);
    }

    #[test]
    fn unterminated_name_and_null_string_are_safe() {
        let long = "x".repeat(80);
        let params = [
            param(&long, sys::VIR_TYPED_PARAM_UINT, sys::_virTypedParameter__bindgen_ty_1 { ui: 1 }),
            param("s", sys::VIR_TYPED_PARAM_STRING, sys::_virTypedParameter__bindgen_ty_1 { s: std::ptr::null_mut() }),
        ];
        // SAFETY: a live array of initialised parameters (or NULL / no count).
        let d = unsafe { decode(params.as_ptr(), 2, &mut KeyInterner::default()) };
        assert_eq!(d.params[0].name.len(), 80);
        assert_eq!(d.params[1].value, TypedValue::String("".into()));
    }

    #[test]
    fn empty_and_null_inputs() {
        // SAFETY: a live array of initialised parameters (or NULL / no count).
        assert_eq!(unsafe { decode(std::ptr::null(), 5, &mut KeyInterner::default()) }, DecodedParams::default());
        let params = [param("a", sys::VIR_TYPED_PARAM_UINT, sys::_virTypedParameter__bindgen_ty_1 { ui: 1 })];
        // SAFETY: a live array of initialised parameters (or NULL / no count).
        assert_eq!(unsafe { decode(params.as_ptr(), 0, &mut KeyInterner::default()) }, DecodedParams::default());
        // SAFETY: a live array of initialised parameters (or NULL / no count).
        assert_eq!(unsafe { decode(params.as_ptr(), -1, &mut KeyInterner::default()) }, DecodedParams::default());
    }

    #[test]
    fn names_are_shared_between_calls() {
        let params = [param("cpu.time", sys::VIR_TYPED_PARAM_ULLONG, sys::_virTypedParameter__bindgen_ty_1 { ul: 1 })];
        let mut names = KeyInterner::default();
        // SAFETY: a live array of initialised parameters (or NULL / no count).
        let a = unsafe { decode(params.as_ptr(), 1, &mut names) };
        // SAFETY: a live array of initialised parameters (or NULL / no count).
        let b = unsafe { decode(params.as_ptr(), 1, &mut names) };
        assert!(Arc::ptr_eq(&a.params[0].name, &b.params[0].name));
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn numeric_views() {
        assert_eq!(TypedValue::Int(-1).as_u64(), None);
        assert_eq!(TypedValue::Boolean(true).as_f64(), Some(1.0));
        assert_eq!(TypedValue::String("x".into()).as_f64(), None);
        assert_eq!(TypedValue::ULLong(5).as_u64(), Some(5));
    }
}

//! The values the agent moves around, as libvirt hands them over, and what a
//! number measures. Every layer may use these (libvirt decodes into them);
//! they depend on nothing.

use serde::Serialize;

/// One decoded value, keeping libvirt's own type so consumers see exactly
/// what the daemon sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum TypedValue {
    Int(i32),
    #[serde(rename = "uint")]
    UInt(u32),
    #[serde(rename = "llong")]
    LLong(i64),
    #[serde(rename = "ullong")]
    ULLong(u64),
    Double(f64),
    Boolean(bool),
    /// Boxed, not a `String`: keeps the value, and every record field, 8
    /// bytes smaller.
    String(Box<str>),
}

impl TypedValue {
    /// Numeric view (booleans as 0/1); `None` for strings.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            TypedValue::Int(v) => Some(v as f64),
            TypedValue::UInt(v) => Some(v as f64),
            TypedValue::LLong(v) => Some(v as f64),
            TypedValue::ULLong(v) => Some(v as f64),
            TypedValue::Double(v) => Some(v),
            TypedValue::Boolean(v) => Some(if v { 1.0 } else { 0.0 }),
            TypedValue::String(_) => None,
        }
    }

    /// Integer view for values that are indices or counts; `None` for
    /// strings, doubles and negative numbers.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            TypedValue::Int(v) => u64::try_from(v).ok(),
            TypedValue::UInt(v) => Some(u64::from(v)),
            TypedValue::LLong(v) => u64::try_from(v).ok(),
            TypedValue::ULLong(v) => Some(v),
            TypedValue::Boolean(v) => Some(u64::from(v)),
            TypedValue::Double(_) | TypedValue::String(_) => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            TypedValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// libvirt's name for the type, as used in records and error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            TypedValue::Int(_) => "int",
            TypedValue::UInt(_) => "uint",
            TypedValue::LLong(_) => "llong",
            TypedValue::ULLong(_) => "ullong",
            TypedValue::Double(_) => "double",
            TypedValue::Boolean(_) => "boolean",
            TypedValue::String(_) => "string",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

/// The unit of a field's value, exactly as libvirt reports it (records are
/// lossless; sinks convert to base units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
    /// Seconds since the Unix epoch.
    UnixSeconds,
    Bytes,
    Kibibytes,
    BytesPerSecond,
    /// I/O operations per second (a disk's IOPS limit).
    OperationsPerSecond,
    MebibytesPerSecond,
    PagesPerSecond,
    Megahertz,
    Percent,
    /// A plain number of things or events.
    Count,
    /// A code from a libvirt enum (documented per key).
    Enum,
    Boolean,
    /// Free text or an identifier (names, paths, modes).
    Text,
    /// A ratio or factor without dimension.
    Ratio,
    /// Energy (resctrl energy monitors).
    Joules,
    /// Capacitance (resctrl's accumulated dynamic capacitance, "activity").
    Farads,
    /// A key this build has no table entry for: value kept, unit unknown.
    Unknown,
}

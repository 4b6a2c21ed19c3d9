//! Prometheus text exposition format 0.0.4: escaping and number formatting.

/// Label values: backslash, double quote and line feed are escaped; every
/// other character (UTF-8 included) is written as is.
pub(crate) fn escape_label_value(out: &mut String, v: &str) {
    if memchr::memchr3(b'\\', b'"', b'\n', v.as_bytes()).is_none() {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: backslash and line feed are escaped.
pub(crate) fn escape_help(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

pub(crate) fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 9.007_199_254_740_992e15 {
        // Most values are integral counters and sizes: print them as integers.
        out.push_str(itoa::Buffer::new().format(v as i64));
    } else {
        // The shortest form that round-trips (Ryu: several times faster than
        // Display; exponents as Prometheus' parser reads them, e.g. 1e-9).
        out.push_str(ryu::Buffer::new().format_finite(v));
    }
}

/// Writes `name{k="v",...} value\n`.
/// `prefix` holds labels already in exposition form (`a="x",b="y"`), for
/// labels shared by many samples (a domain's name and UUID).
pub(crate) fn write_sample<'a>(
    out: &mut String,
    name: &str,
    prefix: &str,
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    value: f64,
) {
    out.push_str(name);
    let mut first = true;
    if !prefix.is_empty() {
        out.push('{');
        out.push_str(prefix);
        first = false;
    }
    for (k, v) in labels {
        push_label(out, &mut first, k, v);
    }
    end_sample(out, first, value);
}

/// Writes `{k="v"` or `,k="v"`: one label of a sample being written.
pub(crate) fn push_label(out: &mut String, first: &mut bool, k: &str, v: &str) {
    out.push(if *first { '{' } else { ',' });
    *first = false;
    out.push_str(k);
    out.push_str("=\"");
    escape_label_value(out, v);
    out.push('"');
}

/// Closes the labels (if any were written) and writes the value.
pub(crate) fn end_sample(out: &mut String, no_labels: bool, value: f64) {
    if !no_labels {
        out.push('}');
    }
    out.push(' ');
    write_value(out, value);
    out.push('\n');
}

pub(crate) fn write_header(out: &mut String, name: &str, help: &str, mtype: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    escape_help(out, help);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(mtype);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        let mut s = String::new();
        write_sample(&mut s, "m", "", [("domain", "a\"b\\c\nd é")], 1.0);
        assert_eq!(s, "m{domain=\"a\\\"b\\\\c\\nd é\"} 1\n");
    }

    #[test]
    fn formats_values() {
        let mut s = String::new();
        for v in [0.0, 1.5, 1e-9, 18446744073709551615.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -2.0] {
            write_value(&mut s, v);
            s.push(' ');
        }
        assert_eq!(s, "0 1.5 1e-9 1.8446744073709552e19 NaN +Inf -Inf -2 ");
    }

    #[test]
    fn no_labels_no_braces() {
        let mut s = String::new();
        write_sample(&mut s, "up", "", std::iter::empty(), 1.0);
        assert_eq!(s, "up 1\n");
        let mut p = String::new();
        write_sample(&mut p, "m", "a=\"1\"", [("b", "2")], 0.5);
        assert_eq!(p, "m{a=\"1\",b=\"2\"} 0.5\n");
        let mut h = String::new();
        write_header(&mut h, "up", "a\\b\nc", "gauge");
        assert_eq!(h, "# HELP up a\\\\b\\nc\n# TYPE up gauge\n");
    }
}

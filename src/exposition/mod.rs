//! The Prometheus text exposition format: escaping, sample lines and whole
//! metric families. Shared by the Prometheus sink and the admin endpoint.

pub(crate) mod render;
pub(crate) mod text;

pub(crate) use render::{Families, Family, FamilyWriter, RenderStats};

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every family as text, in name order.
pub(crate) fn write_families(fams: &Families, out: &mut String) {
    for (name, fam) in fams {
        text::write_header(out, name, &fam.help, fam.mtype.as_str());
        out.push_str(&fam.body);
    }
}

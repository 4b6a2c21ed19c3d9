//! Bounding text that comes from outside (guests, libvirt objects' names
//! and descriptions): kept short, never cut inside a character.

/// `s` cut to at most `max` bytes on a character boundary, and whether it
/// was cut.
pub(crate) fn bounded(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_cut_on_character_boundaries() {
        assert_eq!(bounded("abc", 5), ("abc", false));
        assert_eq!(bounded("abcdef", 3), ("abc", true));
        assert_eq!(bounded("ééé", 3), ("é", true));
        assert_eq!(bounded("é", 0), ("", true));
    }
}

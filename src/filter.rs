//! Domain include/exclude filters: glob patterns (`*`, `?`) or `/regex/`
//! matched against the whole domain name.

use regex::Regex;

#[derive(Debug, Clone, Default)]
pub struct DomainFilter {
    include: Vec<Regex>,
    exclude: Vec<Regex>,
}

fn compile(pattern: &str) -> Result<Regex, String> {
    let source = match pattern.strip_prefix('/').and_then(|p| p.strip_suffix('/')) {
        Some(re) if !re.is_empty() => format!("^(?:{re})$"),
        _ => {
            let mut re = String::from("^");
            for c in pattern.chars() {
                match c {
                    '*' => re.push_str(".*"),
                    '?' => re.push('.'),
                    c => re.push_str(&regex::escape(&c.to_string())),
                }
            }
            re.push('$');
            re
        }
    };
    Regex::new(&source).map_err(|e| format!("pattern {pattern:?} is not valid: {e}"))
}

impl DomainFilter {
    /// Errors name the list (`include`/`exclude`) and the bad pattern.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, (&'static str, String)> {
        Ok(Self {
            include: include.iter().map(|p| compile(p)).collect::<Result<_, _>>().map_err(|e| ("include", e))?,
            exclude: exclude.iter().map(|p| compile(p)).collect::<Result<_, _>>().map_err(|e| ("exclude", e))?,
        })
    }

    /// True when every domain passes (no libvirt-side filtering needed).
    pub fn is_all(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    pub fn allows(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|r| r.is_match(name)))
            && !self.exclude.iter().any(|r| r.is_match(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(inc: &[&str], exc: &[&str]) -> DomainFilter {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        DomainFilter::new(&v(inc), &v(exc)).unwrap()
    }

    #[test]
    fn globs_and_regexes() {
        let flt = f(&["instance-*", "/db-[0-9]+/"], &["*-test"]);
        assert!(flt.allows("instance-0001"));
        assert!(flt.allows("db-12"));
        assert!(!flt.allows("db-x"));
        assert!(!flt.allows("instance-9-test"));
        assert!(!flt.allows("other"));
        assert!(f(&[], &[]).allows("anything"));
        assert!(f(&[], &[]).is_all());
        assert!(f(&["a.b"], &[]).allows("a.b"));
        assert!(!f(&["a.b"], &[]).allows("axb"), "dots are literal in globs");
        assert!(f(&["w?b"], &[]).allows("web"));
        assert!(!f(&["w?b"], &[]).allows("weeb"));
    }

    #[test]
    fn bad_regex_names_the_list() {
        let e = DomainFilter::new(&[], &["/([/".to_string()]).unwrap_err();
        assert_eq!(e.0, "exclude");
    }
}

//! A strict reader of the Prometheus text format, for assertions.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default, Clone)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub types: BTreeMap<String, String>,
}

fn parse_labels(s: &str) -> (BTreeMap<String, String>, &str) {
    // s starts after '{'; returns labels and the rest after '}'.
    let mut labels = BTreeMap::new();
    let mut chars = s.char_indices().peekable();
    loop {
        let start = match chars.peek() {
            Some((_, '}')) => {
                let (i, _) = chars.next().unwrap();
                return (labels, &s[i + 1..]);
            }
            Some((i, _)) => *i,
            None => panic!("unterminated label set: {s}"),
        };
        let eq = s[start..].find('=').expect("label without =") + start;
        let key = s[start..eq].trim_start_matches(',').to_string();
        while let Some((i, _)) = chars.peek() {
            if *i > eq {
                break;
            }
            chars.next();
        }
        assert_eq!(chars.next().map(|c| c.1), Some('"'), "label value must be quoted: {s}");
        let mut val = String::new();
        loop {
            match chars.next().expect("unterminated label value") {
                (_, '\\') => match chars.next().expect("dangling escape").1 {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                (_, '"') => break,
                (_, c) => val.push(c),
            }
        }
        labels.insert(key, val);
        if let Some((_, ',')) = chars.peek() {
            chars.next();
        }
    }
}

pub fn parse(text: &str) -> Scrape {
    let mut out = Scrape::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (n, t) = rest.split_once(' ').expect("TYPE line");
            out.types.insert(n.to_string(), t.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(i) => {
                let (labels, rest) = parse_labels(&line[i + 1..]);
                (line[..i].to_string(), labels, rest)
            }
            None => {
                let (n, r) = line.split_once(' ').expect("sample line");
                (n.to_string(), BTreeMap::new(), r)
            }
        };
        let value = match rest.trim() {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        out.samples.push(Sample { name, labels, value });
    }
    out
}

impl Scrape {
    /// Samples named `name` whose labels include all of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect()
    }

    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.find(name, labels).first().map(|s| s.value)
    }

    pub fn of_domain<'a>(&'a self, uuid: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.labels.get("uuid").map(String::as_str) == Some(uuid))
    }

    /// The domain's series that come from its domain statistics
    /// (`virConnectGetAllDomainStats`), as the catalog says: what `virsh
    /// domstats` is compared with (jobs, health, events... are not).
    pub fn stats_of_domain<'a>(&'a self, uuid: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.of_domain(uuid).filter(|s| from_domain_stats(&s.name))
    }
}

/// Whether the domain stats catalog exports a metric of this name from a
/// libvirt stats group (not from the domain XML or virDomainGetVcpus).
pub fn from_domain_stats(name: &str) -> bool {
    use virtpulse::collectors::domain_stats::metrics::DOMAIN_STATS;
    use virtpulse::libvirt::stats::group_by_name;
    DOMAIN_STATS
        .table
        .iter()
        .filter(|r| group_by_name(r.group).is_some())
        .filter_map(|r| r.export)
        .any(|e| e.name == name)
        || DOMAIN_STATS.rules.iter().any(|r| name.starts_with(r.metric_prefix))
        || DOMAIN_STATS.info.iter().any(|i| i.name == name)
}

#[test]
fn parses_escapes() {
    let s = parse("# TYPE m gauge\nm{a=\"x\\\"y\\\\z\\n\",b=\"\"} 1.5\nup 1\n");
    assert_eq!(s.samples[0].labels["a"], "x\"y\\z\n");
    assert_eq!(s.samples[0].labels["b"], "");
    assert_eq!(s.samples[1].value, 1.0);
    assert_eq!(s.types["m"], "gauge");
}

/// `promtool check metrics` finds nothing to say about `text`.
pub fn assert_promtool_clean(text: &str) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(file.path()).unwrap())
        .output()
        .unwrap();
    let complaints = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && complaints.trim().is_empty(), "promtool check metrics: {complaints}");
}

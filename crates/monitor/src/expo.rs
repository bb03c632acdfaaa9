//! A reader for the classic Prometheus text format (what every role's `/metrics` answers a
//! client that does not ask for OpenMetrics): enough for the dashboard to read the roles
//! directly when Prometheus is not there.

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Every sample of `text`; comments and lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            while chars.next_if(|(_, c)| *c == ',' || *c == ' ').is_some() {}
            let &(start, c) = chars.peek()?;
            if c == '}' {
                chars.next();
                rest = &after[start + 1..];
                break;
            }
            let eq = after[start..].find('=')? + start;
            let key = after[start..eq].trim().to_string();
            while chars.next_if(|(i, _)| *i <= eq).is_some() {}
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.push((key, value));
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The value of the sample named `name` whose labels include `with`, if any.
pub fn value(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && with.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
}

/// Sum of the samples named `name` whose labels include `with`.
pub fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && with.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

/// The cumulative buckets `(le, count)` of histogram `name` (without `_bucket`) for the
/// series whose labels include `with`, sorted by bound.
pub fn buckets(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut out: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == bucket && with.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .filter_map(|s| {
            let le = match s.label("le")? {
                "+Inf" => f64::INFINITY,
                le => le.parse().ok()?,
            };
            Some((le, s.value))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile of the observations between two scrapes of cumulative `buckets` (both
/// sorted, same bounds), interpolated inside the bucket as Prometheus' `histogram_quantile`
/// does. None without observations in between.
pub fn quantile(q: f64, before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, count)| {
            let old = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, (count - old).max(0.0))
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for (le, count) in delta {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let share = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lower + (le - lower) * share);
        }
        lower = le;
        below = count;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_escaped_labels_and_special_values() {
        let text = "# HELP x y\n# TYPE x counter\nx_total{server=\"web-01\",code=\"2xx\"} 12\nplain 3.5\nodd{v=\"a\\\"b\\\\c\\nd\", w=\"\"} +Inf\nbroken{\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 3, "{samples:?}");
        assert_eq!(
            value(&samples, "x_total", &[("server", "web-01")]),
            Some(12.0)
        );
        assert_eq!(value(&samples, "plain", &[]), Some(3.5));
        assert_eq!(samples[2].label("v"), Some("a\"b\\c\nd"));
        assert_eq!(samples[2].label("w"), Some(""));
        assert!(samples[2].value.is_infinite());
    }

    #[test]
    fn quantiles_of_the_observations_between_two_scrapes() {
        let before = vec![(0.01, 10.0), (0.1, 10.0), (f64::INFINITY, 10.0)];
        let after = vec![(0.01, 10.0), (0.1, 110.0), (f64::INFINITY, 110.0)];
        // 100 new observations, all in (0.01, 0.1]: the median is half-way in.
        let p50 = quantile(0.5, &before, &after).unwrap();
        assert!((p50 - 0.055).abs() < 1e-9, "{p50}");
        assert_eq!(quantile(0.5, &after, &after), None);
    }
}

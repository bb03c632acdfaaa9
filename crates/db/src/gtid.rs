//! MariaDB GTID positions (`0-1-42,1-2-7`: domain-server-sequence per domain) and the lag
//! between two of them in transactions. `Seconds_Behind_Master` says nothing about a replica
//! that is disconnected; comparing positions does.

use std::collections::BTreeMap;

/// The last sequence number applied, per replication domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GtidPos(BTreeMap<u32, u64>);

impl GtidPos {
    /// Parses `@@gtid_current_pos`-style lists; malformed entries are ignored.
    pub fn parse(text: &str) -> GtidPos {
        let mut map = BTreeMap::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let mut parts = entry.split('-');
            let (Some(domain), Some(_server), Some(seq), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if let (Ok(domain), Ok(seq)) = (domain.parse::<u32>(), seq.parse::<u64>()) {
                let slot = map.entry(domain).or_insert(0);
                *slot = (*slot).max(seq);
            }
        }
        GtidPos(map)
    }

    /// Transactions `self` is behind `ahead`, summed over domains.
    pub fn behind(&self, ahead: &GtidPos) -> u64 {
        ahead
            .0
            .iter()
            .map(|(domain, &seq)| seq.saturating_sub(self.0.get(domain).copied().unwrap_or(0)))
            .sum()
    }

    /// True when `self` has applied everything `other` has.
    pub fn includes(&self, other: &GtidPos) -> bool {
        self.behind(other) == 0
    }

    /// (domain, last sequence number) per domain, in domain order.
    pub fn sequences(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.0.iter().map(|(domain, seq)| (*domain, *seq))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Per domain, the further of the two.
    pub fn union(&self, other: &GtidPos) -> GtidPos {
        let mut map = self.0.clone();
        for (&domain, &seq) in &other.0 {
            let slot = map.entry(domain).or_insert(0);
            *slot = (*slot).max(seq);
        }
        GtidPos(map)
    }
}

/// `domain-0-seq,...`: the positions only (the server ids of the text it was parsed from are
/// not kept; `parse` reads it back to the same value).
impl std::fmt::Display for GtidPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (domain, seq)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{domain}-0-{seq}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::GtidPos;

    #[test]
    fn parses_and_compares_positions() {
        let primary = GtidPos::parse("0-1-42,1-2-7");
        let replica = GtidPos::parse("0-1-40, 1-2-7");
        assert_eq!(replica.behind(&primary), 2);
        assert_eq!(primary.behind(&replica), 0);
        assert!(primary.includes(&replica));
        assert!(!replica.includes(&primary));
        assert_eq!(GtidPos::parse("").behind(&primary), 49);
        assert!(GtidPos::parse("").is_empty());
        assert_eq!(GtidPos::parse("junk,0-1-x,0-1-3"), GtidPos::parse("0-1-3"));
        assert_eq!(
            GtidPos::parse("0-1-42,1-2-3").union(&GtidPos::parse("0-1-40,1-2-7,2-3-1")),
            GtidPos::parse("0-1-42,1-2-7,2-3-1")
        );
        let pos = GtidPos::parse("0-1-42,1-2-7");
        assert_eq!(GtidPos::parse(&pos.to_string()), pos);
    }
}

//! The promotion rule, as a pure function of what etcd holds: which node may become primary
//! when there is none, or why none may. Unit-tested here; `agent.rs` acts on it.

use serde::{Deserialize, Serialize};

use crate::gtid::GtidPos;

/// The value of the leader key (`db/leader`, on the primary's lease). The key's create
/// revision is the term.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    pub host: String,
    /// Where replicas and the app reach it (`ip:port`).
    pub address: String,
}

/// A db role's report of its node (`db/members/<host>`, on the role's lease: it disappears
/// when the role or its mariadbd is gone).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub host: String,
    pub address: String,
    pub read_only: bool,
    /// `@@gtid_current_pos`: what the node has applied (or written, on a primary).
    pub current_pos: String,
    /// What the node has received: applied, plus what sits in its relay log (`Gtid_IO_Pos`).
    pub received_pos: String,
    /// The primary it replicates from (`ip:port`), when it does.
    pub source: Option<String>,
    pub io_running: Option<String>,
    pub sql_running: Option<String>,
    /// primary, replica, fenced, diverged, ...
    pub phase: String,
}

/// The primary's record of itself (`db/primary`, no lease: it outlives the primary and is
/// what a promotion is judged by). Written only by the holder of the leader key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryReport {
    pub host: String,
    pub term: i64,
    /// True while every acknowledged commit waits for a replica's acknowledgement: then a
    /// replica holds every acknowledged write. The primary records `false` *before* it lets
    /// commits go on without a replica.
    pub semi_sync: bool,
    /// `@@gtid_binlog_pos` when written.
    pub binlog_pos: String,
    /// A planned switchover: the node that is to take over.
    #[serde(default)]
    pub next: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// This node may take the leader key.
    Promote,
    /// Another node should (named), or it is not yet time.
    Wait(String),
    /// No node may: promoting would lose acknowledged writes. Says why and how to force.
    Refuse(String),
}

/// What `me` should do when there is no leader.
/// - `force`: an operator's `webstack db failover --force HOST`: that host, whatever it holds.
/// - `report`: the last primary's record; `members`: the live nodes (this one included, with
///   fresh facts); `db_hosts`: every db node of the topology.
pub fn decide(
    me: &str,
    report: Option<&PrimaryReport>,
    members: &[Member],
    db_hosts: &[String],
    force: Option<&str>,
) -> Decision {
    if let Some(forced) = force {
        return if forced == me {
            Decision::Promote
        } else {
            Decision::Wait(format!("promotion of {forced} forced by an operator"))
        };
    }
    let Some(report) = report else {
        return Decision::Refuse(
            "etcd holds no record of the last primary; `webstack db failover --force HOST` picks one"
                .into(),
        );
    };
    let reported = GtidPos::parse(&report.binlog_pos);
    let live = |host: &str| members.iter().find(|m| m.host == host);
    let last_primary = live(&report.host).map(|m| GtidPos::parse(&m.received_pos));
    // The last primary has everything it acknowledged; so has a node that received everything
    // the live last primary holds (after a crash, recovery may have truncated writes that node
    // already received). Anyone else needs semi-sync to have been on and every reported write.
    let allowed = |m: &Member| {
        let received = GtidPos::parse(&m.received_pos);
        m.host == report.host
            || last_primary.as_ref().is_some_and(|p| received.includes(p))
            || (report.semi_sync && received.includes(&reported))
    };
    if let Some(next) = report.next.as_deref()
        && let Some(member) = live(next)
        && allowed(member)
    {
        return if next == me {
            Decision::Promote
        } else {
            Decision::Wait(format!("switchover to {next}"))
        };
    }
    // A replica that is not reporting may hold acknowledged writes the live ones lack (any one
    // replica's acknowledgement lets a commit through): only the last primary itself, which has
    // them all, may lead without hearing from it.
    if me != report.host
        && let Some(silent) = db_hosts
            .iter()
            .find(|h| **h != report.host && live(h).is_none())
    {
        return Decision::Refuse(format!(
            "{silent} is not reporting and {} (the last primary) is not leading: {silent} may hold \
             acknowledged writes the others lack; start it, or force with `webstack db failover --force HOST`",
            report.host
        ));
    }
    let best = members.iter().filter(|m| allowed(m)).max_by(|a, b| {
        let total = |m: &Member| GtidPos::default().behind(&GtidPos::parse(&m.received_pos));
        total(a)
            .cmp(&total(b))
            .then((a.host == report.host).cmp(&(b.host == report.host)))
            // Ties: the first name wins, so every node agrees on one candidate.
            .then(b.host.cmp(&a.host))
    });
    match best {
        Some(best) if best.host == me => Decision::Promote,
        Some(best) => Decision::Wait(format!("{} is the candidate", best.host)),
        None => {
            let received: Vec<String> = members
                .iter()
                .map(|m| format!("{} received {}", m.host, empty_dash(&m.received_pos)))
                .collect();
            let why = if report.semi_sync {
                "no live replica received every write it reported"
            } else {
                "semi-sync was off on it, so acknowledged writes may exist only there"
            };
            Decision::Refuse(format!(
                "promotion refused: {} (the last primary, term {}, at {}) is down and {why} ({}); \
                 start {} again, or accept losing them with `webstack db failover --force HOST`",
                report.host,
                report.term,
                empty_dash(&report.binlog_pos),
                received.join(", "),
                report.host,
            ))
        }
    }
}

fn empty_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(host: &str, received: &str) -> Member {
        Member {
            host: host.into(),
            received_pos: received.into(),
            read_only: true,
            ..Member::default()
        }
    }

    fn report(host: &str, semi_sync: bool, pos: &str) -> PrimaryReport {
        PrimaryReport {
            host: host.into(),
            term: 7,
            semi_sync,
            binlog_pos: pos.into(),
            next: None,
        }
    }

    fn hosts(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_replica_with_every_reported_write_is_promoted_when_semi_sync_was_on() {
        let members = [member("web-02", "0-1-42")];
        let db = hosts(&["web-01", "web-02"]);
        let r = report("web-01", true, "0-1-40");
        assert_eq!(
            decide("web-02", Some(&r), &members, &db, None),
            Decision::Promote
        );
    }

    #[test]
    fn semi_sync_off_refuses_and_says_why() {
        let members = [member("web-02", "0-1-42")];
        let db = hosts(&["web-01", "web-02"]);
        let r = report("web-01", false, "0-1-42");
        let Decision::Refuse(why) = decide("web-02", Some(&r), &members, &db, None) else {
            panic!("promoted without semi-sync")
        };
        assert!(why.contains("semi-sync was off"), "{why}");
        assert!(why.contains("--force"), "{why}");
    }

    #[test]
    fn a_replica_missing_reported_writes_is_refused() {
        let members = [member("web-02", "0-1-30")];
        let db = hosts(&["web-01", "web-02"]);
        let r = report("web-01", true, "0-1-40");
        assert!(matches!(
            decide("web-02", Some(&r), &members, &db, None),
            Decision::Refuse(_)
        ));
    }

    #[test]
    fn the_last_primary_is_always_allowed_and_preferred_on_ties() {
        // A full restart: both nodes back, the report written by web-01 with semi-sync off.
        let members = [member("web-01", "0-1-42"), member("web-02", "0-1-42")];
        let db = hosts(&["web-01", "web-02"]);
        let r = report("web-01", false, "0-1-42");
        assert_eq!(
            decide("web-01", Some(&r), &members, &db, None),
            Decision::Promote
        );
        assert!(matches!(
            decide("web-02", Some(&r), &members, &db, None),
            Decision::Wait(_)
        ));
        let r = report("web-01", true, "0-1-42");
        assert_eq!(
            decide("web-01", Some(&r), &members, &db, None),
            Decision::Promote
        );
    }

    #[test]
    fn the_most_advanced_allowed_replica_wins_and_everyone_agrees() {
        let members = [
            member("db-2", "0-1-41"),
            member("db-3", "0-1-44"),
            member("db-4", "0-1-44"),
        ];
        let db = hosts(&["db-1", "db-2", "db-3", "db-4"]);
        let r = report("db-1", true, "0-1-40");
        let decisions: Vec<_> = ["db-2", "db-3", "db-4"]
            .iter()
            .map(|me| decide(me, Some(&r), &members, &db, None))
            .collect();
        assert_eq!(
            decisions,
            [
                Decision::Wait("db-3 is the candidate".into()),
                Decision::Promote,
                Decision::Wait("db-3 is the candidate".into())
            ]
        );
    }

    #[test]
    fn a_replica_with_everything_the_crashed_primary_kept_may_lead() {
        // web-01 crashed; recovery truncated a write web-02 had received; semi-sync was off.
        let members = [member("web-01", "0-1-40"), member("web-02", "0-1-41")];
        let db = hosts(&["web-01", "web-02"]);
        let r = report("web-01", false, "0-1-41");
        assert_eq!(
            decide("web-02", Some(&r), &members, &db, None),
            Decision::Promote
        );
        assert!(matches!(
            decide("web-01", Some(&r), &members, &db, None),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn a_silent_replica_blocks_promotion() {
        let members = [member("db-2", "0-1-44")];
        let db = hosts(&["db-1", "db-2", "db-3"]);
        let r = report("db-1", true, "0-1-40");
        let Decision::Refuse(why) = decide("db-2", Some(&r), &members, &db, None) else {
            panic!("promoted past a silent replica")
        };
        assert!(why.contains("db-3"), "{why}");
        // Even while the last primary's record lingers (it released the key a moment ago).
        let members = [member("db-1", "0-1-40"), member("db-2", "0-1-44")];
        assert!(matches!(
            decide("db-2", Some(&r), &members, &db, None),
            Decision::Refuse(_)
        ));
    }

    #[test]
    fn force_and_switchover_name_the_node() {
        let members = [member("web-01", "0-1-42"), member("web-02", "0-1-42")];
        let db = hosts(&["web-01", "web-02"]);
        let r = report("web-01", false, "0-1-50");
        assert_eq!(
            decide("web-02", Some(&r), &members, &db, Some("web-02")),
            Decision::Promote
        );
        assert!(matches!(
            decide("web-01", Some(&r), &members, &db, Some("web-02")),
            Decision::Wait(_)
        ));
        let mut r = report("web-01", true, "0-1-42");
        r.next = Some("web-02".into());
        assert_eq!(
            decide("web-02", Some(&r), &members, &db, None),
            Decision::Promote
        );
        assert!(matches!(
            decide("web-01", Some(&r), &members, &db, None),
            Decision::Wait(_)
        ));
        assert!(matches!(
            decide("web-02", None, &members, &db, None),
            Decision::Refuse(_)
        ));
    }
}

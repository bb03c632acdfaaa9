//! nftables rules from the topology: each host accepts exactly the traffic its roles need,
//! from exactly the hosts that need it. `render` writes one host's ruleset as text that
//! replaces only webstack's own table atomically (`table inet webstack` / `delete table inet
//! webstack` / the table), `check` validates it with `nft -c` (through a user namespace when
//! not root). Applying it and proving it in namespaces are the firewall issue's next steps.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

/// Who a rule lets in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Any address (the site's public ports).
    Anyone,
    /// The hosts of a named set (`lb_hosts`, `db_hosts`, ...).
    Set(String),
    /// The `firewall.admin` networks.
    Admin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    /// IP protocol 112: keepalived's adverts between the lb hosts.
    Vrrp,
}

/// One accept rule; its counter is named after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Counter and comment name: `lb_http`, `db_from_app`, ...
    pub name: String,
    pub from: Source,
    pub protocol: Protocol,
    /// Destination ports (none for VRRP).
    pub ports: Vec<u16>,
}

/// One host's ruleset, as the topology describes it.
#[derive(Clone, Debug)]
pub struct HostRules {
    pub host: String,
    /// Named address sets: (name, addresses).
    pub sets: Vec<(String, Vec<IpAddr>)>,
    /// The admin networks (`10.0.0.0/24`, validated by the topology's checks).
    pub admin: Vec<String>,
    pub rules: Vec<Rule>,
    /// Per-source flood limits on the site's ports (lb hosts).
    pub flood_guard: Option<FloodGuard>,
}

/// Per-source limits on new connections to the site's ports, set far above what the lb's own
/// per-client limits allow: they stop only floods the lb would not survive (a per-source rule in
/// the kernel also hits every client behind one NAT address, so it must stay coarse).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FloodGuard {
    pub ports: Vec<u16>,
    /// New connections per second per source address, and how many at once above that.
    pub new_per_second: u32,
    pub burst: u32,
    /// Connections one source address may hold open (conntrack's count).
    pub connections: u32,
    /// Networks the guard leaves alone: the proxies in front of the lb, each carrying many
    /// clients.
    pub exempt: Vec<String>,
}

/// The input chain up to the roles' rules: established flows, loopback, and the ICMP that path
/// MTU discovery and error reporting need (and ping), nothing else.
const INPUT_HEAD: &str = "  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related counter name accepted_established accept
    ct state invalid counter name dropped_invalid drop
    iif lo accept
    meta l4proto icmp icmp type { destination-unreachable, time-exceeded, parameter-problem, echo-request } counter name accepted_icmp accept
    meta l4proto ipv6-icmp icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-request, nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } counter name accepted_icmp accept
";

/// The table every ruleset replaces (and nothing else).
pub const TABLE: &str = "webstack";

fn family_sets(name: &str, addresses: &[IpAddr]) -> [(String, &'static str, Vec<IpAddr>); 2] {
    [
        (
            format!("{name}_v4"),
            "ipv4_addr",
            addresses.iter().filter(|a| a.is_ipv4()).copied().collect(),
        ),
        (
            format!("{name}_v6"),
            "ipv6_addr",
            addresses.iter().filter(|a| a.is_ipv6()).copied().collect(),
        ),
    ]
}

/// The ruleset of one host: a file `nft -f` applies atomically, replacing only our table.
/// Sources the topology knows (its hosts) that reach a closed port are rejected, so a
/// misconfiguration shows at once; anyone else is dropped.
pub fn render(rules: &HostRules) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# webstack firewall for host {}: generated from the topology (`webstack firewall show`).",
        rules.host
    );
    let _ = writeln!(out, "table inet {TABLE}\ndelete table inet {TABLE}");
    let _ = writeln!(out, "table inet {TABLE} {{");
    let mut all_hosts: Vec<IpAddr> = Vec::new();
    for (name, addresses) in &rules.sets {
        for address in addresses {
            if !all_hosts.contains(address) {
                all_hosts.push(*address);
            }
        }
        write_address_sets(&mut out, name, addresses);
    }
    write_address_sets(&mut out, "topology_hosts", &all_hosts);
    let (admin4, admin6): (Vec<String>, Vec<String>) =
        rules.admin.iter().cloned().partition(|n| !n.contains(':'));
    write_set(&mut out, "admin_v4", "ipv4_addr", &admin4, true);
    write_set(&mut out, "admin_v6", "ipv6_addr", &admin6, true);
    // Counter names are prefixed: a bare `icmp` or `established` is an nft keyword.
    let mut counters = vec![
        "accepted_established".to_string(),
        "dropped_invalid".into(),
        "accepted_icmp".into(),
    ];
    counters.extend(rules.rules.iter().map(|r| format!("accepted_{}", r.name)));
    if let Some(guard) = &rules.flood_guard {
        let (exempt4, exempt6): (Vec<String>, Vec<String>) =
            guard.exempt.iter().cloned().partition(|n| !n.contains(':'));
        write_set(&mut out, "flood_exempt_v4", "ipv4_addr", &exempt4, true);
        write_set(&mut out, "flood_exempt_v6", "ipv6_addr", &exempt6, true);
        counters.extend([
            "dropped_flood_rate".into(),
            "dropped_flood_connections".into(),
        ]);
        for (family, kind) in [("v4", "ipv4_addr"), ("v6", "ipv6_addr")] {
            // Entries of the rate set expire; the count set's leave with their last connection.
            let _ = writeln!(
                out,
                "  set flood_rate_{family} {{\n    type {kind}\n    flags dynamic, timeout\n    timeout 1m\n    size 65536\n  }}\n  set flood_connections_{family} {{\n    type {kind}\n    flags dynamic\n    size 65536\n  }}"
            );
        }
    }
    counters.extend(["rejected_inside".to_string(), "dropped".into()]);
    for counter in &counters {
        let _ = writeln!(out, "  counter {counter} {{\n  }}");
    }
    // VRRP is never tracked: an advert flow conntrack once saw both ways would otherwise pass
    // as "established" and hide a missing VRRP rule until the next reboot.
    for (chain, hook) in [
        ("vrrp_untracked_in", "prerouting"),
        ("vrrp_untracked_out", "output"),
    ] {
        let _ = writeln!(
            out,
            "  chain {chain} {{\n    type filter hook {hook} priority raw; policy accept;\n    meta l4proto vrrp notrack\n  }}"
        );
    }
    out.push_str(INPUT_HEAD);
    if let Some(guard) = &rules.flood_guard {
        let ports = guard
            .ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        // `update` refreshes a flooding source's timeout: its rate keeps counting.
        for (family, set) in [("ip", "v4"), ("ip6", "v6")] {
            let _ = writeln!(
                out,
                "    {family} saddr != @flood_exempt_{set} tcp dport {{ {ports} }} ct state new update @flood_rate_{set} {{ {family} saddr limit rate over {}/second burst {} packets }} counter name dropped_flood_rate drop comment \"flood_guard\"",
                guard.new_per_second, guard.burst
            );
            let _ = writeln!(
                out,
                "    {family} saddr != @flood_exempt_{set} tcp dport {{ {ports} }} ct state new add @flood_connections_{set} {{ {family} saddr ct count over {} }} counter name dropped_flood_connections drop comment \"flood_guard\"",
                guard.connections
            );
        }
    }
    for rule in &rules.rules {
        let matches: Vec<String> = match &rule.from {
            Source::Anyone => vec![String::new()],
            Source::Set(name) => family_sets(name, set_members(rules, name))
                .into_iter()
                .filter(|(_, _, members)| !members.is_empty())
                .map(|(set, kind, _)| {
                    let family = if kind == "ipv4_addr" { "ip" } else { "ip6" };
                    format!("{family} saddr @{set} ")
                })
                .collect(),
            Source::Admin => [("ip", "admin_v4", &admin4), ("ip6", "admin_v6", &admin6)]
                .into_iter()
                .filter(|(_, _, members)| !members.is_empty())
                .map(|(family, set, _)| format!("{family} saddr @{set} "))
                .collect(),
        };
        for from in matches {
            let what = match rule.protocol {
                Protocol::Vrrp => "meta l4proto vrrp".to_string(),
                Protocol::Tcp | Protocol::Udp => {
                    let proto = if rule.protocol == Protocol::Tcp {
                        "tcp"
                    } else {
                        "udp"
                    };
                    let ports = rule
                        .ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!("{proto} dport {{ {ports} }}")
                }
            };
            let _ = writeln!(
                out,
                "    {from}{what} counter name accepted_{} accept comment \"{}\"",
                rule.name, rule.name
            );
        }
    }
    for (set, kind, members) in family_sets("topology_hosts", &all_hosts) {
        if !members.is_empty() {
            let family = if kind == "ipv4_addr" { "ip" } else { "ip6" };
            let _ = writeln!(
                out,
                "    {family} saddr @{set} counter name rejected_inside reject with icmpx type admin-prohibited"
            );
        }
    }
    let _ = writeln!(out, "    counter name dropped");
    let _ = writeln!(out, "  }}\n}}");
    out
}

/// The `<name>_v4` and `<name>_v6` sets of these addresses.
fn write_address_sets(out: &mut String, name: &str, addresses: &[IpAddr]) {
    for (set, kind, members) in family_sets(name, addresses) {
        let members: Vec<String> = members.iter().map(IpAddr::to_string).collect();
        write_set(out, &set, kind, &members, false);
    }
}

fn set_members<'a>(rules: &'a HostRules, name: &str) -> &'a [IpAddr] {
    rules
        .sets
        .iter()
        .find(|(n, _)| n == name)
        .map_or(&[], |(_, members)| members.as_slice())
}

fn write_set(out: &mut String, name: &str, kind: &str, members: &[String], interval: bool) {
    let _ = writeln!(out, "  set {name} {{\n    type {kind}");
    if interval {
        let _ = writeln!(out, "    flags interval");
    }
    if !members.is_empty() {
        let _ = writeln!(out, "    elements = {{ {} }}", members.join(", "));
    }
    let _ = writeln!(out, "  }}");
}

/// Why `nft -c` refused a ruleset, or could not run.
#[derive(Debug)]
pub struct CheckError(pub String);

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Applies `ruleset` with `nft -f` (root): our table is replaced in one transaction, other
/// tables stay as they are.
pub fn apply(nft: &Path, ruleset: &str) -> Result<(), CheckError> {
    with_file(ruleset, |file| {
        run(Command::new(nft).arg("-f").arg(file), nft)
    })
}

/// Runs `use_file` on `ruleset` written to a temporary file (removed afterwards).
fn with_file(
    ruleset: &str,
    use_file: impl FnOnce(&Path) -> Result<(), CheckError>,
) -> Result<(), CheckError> {
    let dir =
        tempfile::tempdir().map_err(|e| CheckError(format!("cannot make a temp dir: {e}")))?;
    let file = dir.path().join("ruleset.nft");
    std::fs::write(&file, ruleset)
        .map_err(|e| CheckError(format!("cannot write {}: {e}", file.display())))?;
    use_file(&file)
}

/// One named counter of our table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counter {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

/// The named counters of our table (`nft -j list counters table inet webstack`), bounded by
/// `limit`; empty when there is no table (the rules are not applied here) or nft fails.
pub fn counters(nft: &Path, limit: std::time::Duration) -> Vec<Counter> {
    let Ok(mut child) = Command::new(nft)
        .args(["-j", "list", "counters", "table", "inet", TABLE])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return Vec::new();
    };
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Vec::new();
            }
        }
    }
    let mut text = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read as _;
        let _ = stdout.read_to_string(&mut text);
    }
    parse_counters(&text)
}

/// Counters from nft's JSON (`{"nftables": [{"counter": {"name", "packets", "bytes", ...}}]}`).
pub fn parse_counters(json: &str) -> Vec<Counter> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    value["nftables"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| {
                    let counter = item.get("counter")?;
                    Some(Counter {
                        name: counter["name"].as_str()?.to_string(),
                        packets: counter["packets"].as_u64()?,
                        bytes: counter["bytes"].as_u64()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Removes our table (nothing else); not having one is fine.
pub fn remove(nft: &Path) -> Result<(), CheckError> {
    let listed = Command::new(nft)
        .args(["list", "table", "inet", TABLE])
        .output()
        .map_err(|e| CheckError(format!("cannot run {}: {e}", nft.display())))?;
    if !listed.status.success() {
        return Ok(());
    }
    run(
        Command::new(nft).args(["delete", "table", "inet", TABLE]),
        nft,
    )
}

fn run(command: &mut Command, nft: &Path) -> Result<(), CheckError> {
    let out = command
        .output()
        .map_err(|e| CheckError(format!("cannot run {}: {e}", nft.display())))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CheckError(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// Validates `ruleset` with `nft -c -f` without applying it: as root directly (nothing is
/// changed), otherwise inside a new user and network namespace (`unshare -rn`).
pub fn check(nft: &Path, ruleset: &str) -> Result<(), CheckError> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false);
    with_file(ruleset, |file| {
        let mut command = if root {
            Command::new(nft)
        } else {
            let mut c = Command::new("unshare");
            c.arg("-rn").arg(nft);
            c
        };
        run(command.arg("-c").arg("-f").arg(file), nft)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HostRules {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        HostRules {
            host: "web-01".into(),
            sets: vec![
                ("lb_hosts".into(), vec![a("10.0.0.8"), a("fd00::8")]),
                ("web_hosts".into(), vec![a("10.0.0.11")]),
            ],
            admin: vec!["192.168.1.0/24".into(), "fd01::/64".into()],
            rules: vec![
                Rule {
                    name: "web_from_lb".into(),
                    from: Source::Set("lb_hosts".into()),
                    protocol: Protocol::Tcp,
                    ports: vec![8000],
                },
                Rule {
                    name: "lb_vrrp".into(),
                    from: Source::Set("lb_hosts".into()),
                    protocol: Protocol::Vrrp,
                    ports: vec![],
                },
                Rule {
                    name: "admin".into(),
                    from: Source::Admin,
                    protocol: Protocol::Tcp,
                    ports: vec![22, 9101],
                },
            ],
            flood_guard: None,
        }
    }

    #[test]
    fn the_flood_guard_limits_new_connections_per_source_on_the_site_ports() {
        let rules = HostRules {
            flood_guard: Some(FloodGuard {
                ports: vec![80, 443],
                new_per_second: 1000,
                burst: 2000,
                connections: 2560,
                exempt: vec!["198.51.100.0/24".into()],
            }),
            ..sample()
        };
        let text = render(&rules);
        for line in [
            "ip saddr != @flood_exempt_v4 tcp dport { 80, 443 } ct state new update @flood_rate_v4 { ip saddr limit rate over 1000/second burst 2000 packets } counter name dropped_flood_rate drop",
            "ip6 saddr != @flood_exempt_v6 tcp dport { 80, 443 } ct state new add @flood_connections_v6 { ip6 saddr ct count over 2560 } counter name dropped_flood_connections drop",
            "elements = { 198.51.100.0/24 }",
            "set flood_rate_v4 {\n    type ipv4_addr\n    flags dynamic, timeout",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        // Before the accept rules, or it would never see a packet.
        let guard = text.find("update @flood_rate_v4").unwrap();
        assert!(guard < text.find("accepted_web_from_lb accept").unwrap());
        let nft = Path::new("/usr/sbin/nft");
        assert!(nft.is_file(), "nft (apt-get install nftables)");
        check(nft, &text).expect("nft -c accepts the flood guard");
    }

    #[test]
    fn each_family_gets_its_set_and_rule_and_the_table_is_replaced_atomically() {
        let text = render(&sample());
        assert!(
            text.contains("table inet webstack\ndelete table inet webstack\ntable inet webstack {"),
            "{text}"
        );
        for line in [
            "ip saddr @lb_hosts_v4 tcp dport { 8000 } counter name accepted_web_from_lb accept",
            "ip6 saddr @lb_hosts_v6 tcp dport { 8000 } counter name accepted_web_from_lb accept",
            "ip saddr @lb_hosts_v4 meta l4proto vrrp counter name accepted_lb_vrrp accept",
            "ip6 saddr @lb_hosts_v6 meta l4proto vrrp counter name accepted_lb_vrrp accept",
            "ip saddr @admin_v4 tcp dport { 22, 9101 } counter name accepted_admin accept",
            "ip6 saddr @admin_v6 tcp dport { 22, 9101 } counter name accepted_admin accept",
            "elements = { 10.0.0.8, 10.0.0.11 }",
            "type filter hook input priority filter; policy drop;",
            "type filter hook prerouting priority raw; policy accept;\n    meta l4proto vrrp notrack",
            "ip saddr @topology_hosts_v4 counter name rejected_inside reject",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        // No web host's set is used for an accept: web-01 takes nothing from web hosts.
        assert!(!text.contains("saddr @web_hosts_v4 tcp"), "{text}");
    }

    #[test]
    fn counters_are_read_from_nfts_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}, {"counter": {"family": "inet", "name": "accepted_lb_http", "table": "webstack", "handle": 3, "packets": 12, "bytes": 840}}, {"counter": {"family": "inet", "name": "dropped", "table": "webstack", "handle": 9, "packets": 0, "bytes": 0}}]}"#;
        assert_eq!(
            parse_counters(json),
            vec![
                Counter {
                    name: "accepted_lb_http".into(),
                    packets: 12,
                    bytes: 840
                },
                Counter {
                    name: "dropped".into(),
                    packets: 0,
                    bytes: 0
                },
            ]
        );
        assert!(parse_counters("").is_empty());
        assert!(parse_counters("{\"counter\": {\"name\": \"x\"}}").is_empty());
    }

    #[test]
    fn nft_accepts_the_ruleset_and_refuses_a_broken_one() {
        let nft = Path::new("/usr/sbin/nft");
        assert!(nft.is_file(), "nft (apt-get install nftables)");
        check(nft, &render(&sample())).expect("nft -c accepts the rendered ruleset");
        let broken = render(&sample()).replace("policy drop;", "policy maybe;");
        let error = check(nft, &broken).unwrap_err().to_string();
        assert!(error.contains("maybe"), "{error}");
    }
}

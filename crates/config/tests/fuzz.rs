//! Property tests of the topology parser and validator: the default topology with random
//! edits (bytes flipped, inserted or cut, values swapped for hostile ones, lines repeated or
//! dropped), a bounded number of cases per run. No text panics the parser or the validator;
//! an error names the file; and what is accepted resolves into every role's settings without a
//! panic, with deadlines computable from its durations (what `check` accepts must start).

use std::path::{Path, PathBuf};
use std::time::Instant;

use proptest::prelude::*;
use webstack_config::{Config, Role};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn default_text() -> String {
    std::fs::read_to_string(repo().join("webstack.toml")).unwrap()
}

/// The default topology with every other key spelled out at its default, so edits reach them.
fn full_text() -> String {
    default_text()
        .replacen(
            "[lb]\n",
            "[lb]\nadmin_port = 9100\naccess_log = true\nthreads = 0\nmaxconn = 10000\n",
            1,
        )
        .replacen(
            "[lb.tls]\n",
            "[lb.tls]\nenabled = true\nhandshake_timeout = \"10s\"\nhsts_max_age = \"365d\"\n",
            1,
        )
        .replacen(
            "[web]\n",
            "[web]\nadmin_port = 9101\ncache_control = \"public, max-age=3600\"\naccess_log = true\nmaxconn = 10000\n",
            1,
        )
        .replacen("[app]\n", "[app]\nadmin_port = 9102\nmaxconn = 10000\n", 1)
        .replacen(
            "[db]\n",
            "[db]\nadmin_port = 9103\npoll_interval = \"500ms\"\nquery_timeout = \"5s\"\nbuffer_pool_size = \"64M\"\nmariadbd = \"/usr/sbin/mariadbd\"\ninstall_db = \"/usr/bin/mariadb-install-db\"\n",
            1,
        )
        + "\n[lb.timeouts]\nclient_header = \"10s\"\nconnect = \"2s\"\nserver = \"30s\"\ntunnel = \"10m\"\n\n\
           [web.timeouts]\nclient_header = \"10s\"\napp_connect = \"2s\"\napp_response = \"30s\"\n\n\
           [[lb.server]]\nhost = \"web-01\"\nweight = 1\nbackup = false\n"
}

/// Values a careless or hostile file holds.
fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"\"".to_string()),
        Just("\"é\"".to_string()),
        Just("\"64é\"".to_string()),
        Just("\"/health z\"".to_string()),
        Just("\"500000000y\"".to_string()),
        Just("\"0s\"".to_string()),
        Just("\"1ns\"".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("65536".to_string()),
        Just("4294967296".to_string()),
        Just("1e999".to_string()),
        Just("inf".to_string()),
        Just("nan".to_string()),
        Just("true".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("\"\\u0000\"".to_string()),
        Just("\"../../../etc\"".to_string()),
        Just("\"::\"".to_string()),
        Just("\"127.0.0.0\"".to_string()),
        Just("\"0.0.0.0\"".to_string()),
        "\"[ -~]{0,12}\"",
        // Any characters a TOML string may hold unescaped, multi-byte ones included.
        "\"[^\"\\\\\\x00-\\x1f\\x7f]{0,8}\"",
        "[0-9]{1,25}",
    ]
}

/// The default topology with a few edits.
fn edited() -> impl Strategy<Value = String> {
    let edit = prop_oneof![
        // A value replaced: `key = <hostile>` on a random `=` line (most edits: a file with
        // one bad value otherwise valid reaches the deepest checks).
        6 => (any::<prop::sample::Index>(), hostile_value()).prop_map(|(i, v)| Edit::Value(i, v)),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Byte(i, b)),
        1 => (any::<prop::sample::Index>(), any::<char>()).prop_map(|(i, c)| Edit::Insert(i, c)),
        1 => any::<prop::sample::Index>().prop_map(Edit::DropLine),
        1 => any::<prop::sample::Index>().prop_map(Edit::RepeatLine),
        1 => any::<prop::sample::Index>().prop_map(Edit::Cut),
    ];
    prop::collection::vec(edit, 1..3).prop_map(|edits| {
        let mut text = full_text();
        for edit in edits {
            text = edit.apply(&text);
        }
        text
    })
}

#[derive(Debug, Clone)]
enum Edit {
    Value(prop::sample::Index, String),
    Byte(prop::sample::Index, u8),
    Insert(prop::sample::Index, char),
    DropLine(prop::sample::Index),
    RepeatLine(prop::sample::Index),
    Cut(prop::sample::Index),
}

impl Edit {
    fn apply(&self, text: &str) -> String {
        let lines: Vec<&str> = text.lines().collect();
        match self {
            Edit::Value(i, value) => {
                let assignments: Vec<usize> = (0..lines.len())
                    .filter(|&n| lines[n].contains(" = "))
                    .collect();
                if assignments.is_empty() {
                    return text.to_string();
                }
                let n = assignments[i.index(assignments.len())];
                let key = lines[n].split(" = ").next().unwrap_or("");
                let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                out[n] = format!("{key} = {value}");
                out.join("\n")
            }
            Edit::Byte(i, byte) => {
                let mut bytes = text.as_bytes().to_vec();
                if !bytes.is_empty() {
                    let at = i.index(bytes.len());
                    bytes[at] = *byte;
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Edit::Insert(i, c) => {
                let chars: Vec<char> = text.chars().collect();
                let at = i.index(chars.len() + 1);
                let mut out: String = chars[..at].iter().collect();
                out.push(*c);
                out.extend(&chars[at..]);
                out
            }
            Edit::DropLine(i) if !lines.is_empty() => {
                let n = i.index(lines.len());
                let mut out = lines.clone();
                out.remove(n);
                out.join("\n")
            }
            Edit::RepeatLine(i) if !lines.is_empty() => {
                let n = i.index(lines.len());
                let mut out = lines.clone();
                out.insert(n, lines[n]);
                out.join("\n")
            }
            Edit::Cut(i) => text.chars().take(i.index(text.len() + 1)).collect(),
            _ => text.to_string(),
        }
    }
}

/// What the roles do with their settings at start, without binding or spawning anything.
fn resolves(config: &Config) {
    let state = Path::new("/srv/state");
    let lb_host = config
        .hosts_with(Role::Lb)
        .next()
        .expect("validated: an lb host");
    let lb = config.lb(lb_host, state);
    let now = Instant::now();
    for duration in [
        lb.health.interval,
        lb.health.timeout,
        lb.timeouts.client_header,
        lb.timeouts.connect,
        lb.timeouts.server,
        lb.timeouts.tunnel,
    ] {
        assert!(now.checked_add(duration).is_some());
        assert!(!duration.is_zero());
    }
    // The health check's request, as the prober builds it.
    assert!(
        http::Request::get(lb.health.path.as_str())
            .header(http::header::HOST, "127.0.0.1:8000")
            .body(())
            .is_ok(),
        "{:?}",
        lb.health.path
    );
    assert!(lb.maxconn >= 1 && !lb.servers.is_empty());
    for server in &lb.servers {
        assert!((1..=256).contains(&server.weight));
        assert!(
            server
                .addr
                .to_string()
                .parse::<http::uri::Authority>()
                .is_ok()
        );
    }
    if let Some(tls) = &lb.tls {
        assert!(now.checked_add(tls.handshake_timeout).is_some());
        if let Some(age) = tls.hsts_max_age {
            assert!(http::HeaderValue::from_str(&format!("max-age={}", age.as_secs())).is_ok());
        }
    }
    for host in &config.hosts {
        for role in &host.roles {
            let (service, admin) = (
                config.service_addr(host, *role),
                config.admin_addr(host, *role),
            );
            assert_ne!(service, admin);
            assert!(!host.address.is_unspecified());
        }
        if host.has(Role::Web) {
            let web = config.web(host, std::path::Path::new("/var/lib/webstack"));
            assert!(http::HeaderValue::from_str(&web.cache_control).is_ok());
            assert!(http::HeaderValue::from_str(&web.host_name).is_ok());
            assert!(now.checked_add(web.app_response_timeout).is_some());
        }
        if host.has(Role::Db) {
            let node = config
                .db_node(host, state)
                .expect("a db host has node settings");
            assert!(node.server_id >= 1);
            assert!(now.checked_add(node.semi_sync_timeout).is_some());
        }
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 6000,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn no_topology_text_panics_and_what_is_accepted_resolves(text in edited()) {
        let path = repo().join("webstack.toml");
        match Config::parse(&text, &path) {
            Ok(config) => resolves(&config),
            Err(error) => {
                let said = error.to_string();
                prop_assert!(said.contains("webstack.toml"), "{}", said);
                prop_assert!(!said.is_empty());
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let _ = Config::parse(&text, &repo().join("webstack.toml"));
    }
}

#[test]
fn the_unedited_topologies_are_accepted() {
    for text in [default_text(), full_text()] {
        resolves(&Config::parse(&text, &repo().join("webstack.toml")).unwrap());
    }
}

//! The binary as users run it: `check` on good and broken topology files (file, line, what was
//! expected), and the errors of commands that have nothing to talk to.

use std::process::Command;

use webstack_testkit::topology::{text, toml};
use webstack_testkit::{TempDir, Topology};

const EXE: &str = env!("CARGO_BIN_EXE_webstack");

fn check(config: &str) -> (bool, String) {
    let dir = TempDir::new(&format!("check-{:x}", fxhash(config)));
    let path = dir.path().join("webstack.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(EXE)
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    (out.status.success(), text(&out))
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// The 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in config"))
        + 1
}

#[test]
fn the_default_topology_is_valid() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../webstack.toml");
    let out = Command::new(EXE)
        .arg("check")
        .arg("-c")
        .arg(&repo)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("lb-01 (etcd+lb+monitor)")
            && said.contains("lb-02 (lb+monitor)")
            && said.contains("monitoring: promtool test rules: ok")
            && said.contains("web-01 (etcd+db+app+web)")
            && said.contains("web-02 (etcd+db+app+web)")
            && said.contains("database failover through etcd on lb-01, web-01, web-02"),
        "{said}"
    );
}

#[test]
fn a_generated_topology_with_n_hosts_is_valid() {
    let (ok, said) = check(&toml(99, 5, "algorithm = \"roundrobin\""));
    assert!(ok, "{said}");
    assert!(said.contains("web-05"), "{said}");
}

#[test]
fn broken_topologies_are_rejected_with_file_line_and_expectation() {
    let base = toml(99, 2, "");
    let with_db = webstack_testkit::topology::toml_with_db(99, 2, "");
    // (what we change, the text of the changed line, what the error must say)
    let cases: Vec<(String, &str, &str)> = vec![
        (
            base.replacen("roles = [\"lb\"]", "roles = [\"lb\"]\ncolour = \"red\"", 1),
            "colour",
            "unknown field `colour`",
        ),
        (
            base.replacen("127.0.99.11", "127.0.99.300", 1),
            "127.0.99.300",
            "invalid IP address",
        ),
        (
            base.replacen("interval = \"200ms\"", "interval = \"2x\"", 1),
            "interval = \"2x\"",
            "invalid duration \"2x\"",
        ),
        (
            base.replacen("interval = \"200ms\"", "interval = 5", 1),
            "interval = 5",
            "duration as a string with a unit",
        ),
        (
            base.replacen("name = \"web-02\"", "name = \"web-01\"", 1),
            "",
            "duplicate host name \"web-01\"",
        ),
        (
            base.replacen("address = \"127.0.99.12\"", "address = \"127.0.99.11\"", 1),
            "",
            "already host web-01's",
        ),
        (
            base.replacen("roles = [\"lb\"]", "roles = [\"web\", \"app\"]", 1),
            "",
            "no host has role \"lb\"",
        ),
        (
            base.replace("roles = [\"web\", \"app\"]", "roles = [\"app\"]"),
            "",
            "no host has role \"web\"",
        ),
        (
            base.replacen("roles = [\"web\", \"app\"]", "roles = [\"web\"]", 1),
            "roles = [\"web\"]",
            "needs role app",
        ),
        (
            base.replacen("roles = [\"lb\"]", "roles = [\"lb\", \"dbx\"]", 1),
            "dbx",
            "unknown variant `dbx`",
        ),
        (
            base.replacen("roles = [\"lb\"]", "roles = []", 1),
            "roles = []",
            "roles is empty",
        ),
        (
            base.replacen("[web]\n", "[web]\nport = 9000\n", 1),
            "port = 9000",
            "would bind the same port",
        ),
        (
            base.replacen("[lb]\n", "[lb]\nalgorithm = \"random\"\n", 1),
            "random",
            "unknown variant `random`",
        ),
        (
            base.replacen("fall = 2", "fall = 0", 1),
            "fall = 0",
            "expected 1 to 100",
        ),
        (
            base.replacen("[lb.health]\n", "[lb.health]\npath = \"healthz\"\n", 1),
            "path = \"healthz\"",
            "starting with '/'",
        ),
        (
            // Passed `check` once, then panicked in every health checker.
            base.replacen("[lb.health]\n", "[lb.health]\npath = \"/health z\"\n", 1),
            "path = \"/health z\"",
            "without spaces",
        ),
        (
            // Panicked `check` (a byte index inside a character).
            with_db.replacen("[db]\n", "[db]\nbuffer_pool_size = \"64é\"\n", 1),
            "buffer_pool_size",
            "expected a size like \"64M\"",
        ),
        (
            with_db.replacen("[db]\n", "[db]\nmariadbd = \"/nonexistent/mariadbd\"\n", 1),
            "/nonexistent/mariadbd",
            "is not a program file",
        ),
        (
            // Would overflow the clock when a deadline is computed from it.
            base.replacen("interval = \"200ms\"", "interval = \"500000000y\"", 1),
            "500000000y",
            "is longer than",
        ),
        (
            base.replacen("[lb]\n", "[lb]\nmaxconn = 0\n", 1),
            "maxconn = 0",
            "expected 1 to 1000000",
        ),
        (
            base.replacen("[lb.limits]\n", "[lb.limits]\nmax_body = \"lots\"\n", 1),
            "max_body = \"lots\"",
            "expected a size such as \"10MiB\"",
        ),
        (
            base.replacen(
                "[lb.limits]\n",
                "[lb.limits]\ntrusted_proxies = [\"10.0.0.0/40\"]\n",
                1,
            ),
            "10.0.0.0/40",
            "is not a network",
        ),
        (
            base.replacen(
                "[lb.limits]\n",
                "[lb.limits]\nproxy_protocol = [\"::/0\"]\n",
                1,
            ),
            "::/0",
            "is every address",
        ),
        (
            base.replacen("[lb.limits]\n", "[lb.limits]\nbody_grace = \"0s\"\n", 1),
            "body_grace",
            "expected at least 1s while min_body_rate is on",
        ),
        (
            base.replacen("burst = 1000000", "burst = 0", 1),
            "burst = 0",
            "expected 1 to 1000000 requests",
        ),
        (
            base.replacen("[lb.limits]\n", "[lb.limits]\nrate_limit = 5\n", 1),
            "rate_limit",
            "unknown field `rate_limit`",
        ),
        (
            format!("{base}\n[[lb.server]]\nhost = \"web-09\"\n"),
            "web-09",
            "not a host with role web",
        ),
        (
            format!("{base}\n[[lb.server]]\nhost = \"web-01\"\nweight = 0\n"),
            "weight = 0",
            "expected 1 to 256",
        ),
        (
            format!(
                "{base}\n[[lb.server]]\nhost = \"web-01\"\nbackup = true\n[[lb.server]]\nhost = \"web-02\"\nbackup = true\n"
            ),
            "",
            "every lb server is a backup",
        ),
        (
            base.replacen(
                "[site]\nname = \"www.foobar.com\"",
                "[site]\nname = \"www.foobar.com",
                1,
            ),
            "name = \"www.foobar.com",
            "invalid basic string",
        ),
        (
            base.replacen("name = \"lb-01\"", "name = \"LB 01\"", 1),
            "LB 01",
            "expected lowercase letters",
        ),
        (
            base.replacen("static_root = \"", "static_root = \"/nonexistent", 1),
            "/nonexistent",
            "is not a folder",
        ),
        (
            base.replacen("[site]\nname = \"www.foobar.com\"\n", "", 1),
            "",
            "missing field `site`",
        ),
        (
            base.replacen(
                "expose_server_name = true",
                "expose_server_name = true\naccess_log_format = \"xml\"",
                1,
            ),
            "access_log_format",
            "expected `json` or `combined`",
        ),
    ];
    for (config, needle, message) in cases {
        let (ok, said) = check(&config);
        assert!(
            !ok,
            "accepted a broken topology (expected {message:?}):\n{config}"
        );
        assert!(
            said.contains(message),
            "error should say {message:?}, said:\n{said}"
        );
        assert!(
            said.contains("webstack.toml"),
            "error names the file: {said}"
        );
        if !needle.is_empty() {
            let line = line_of(&config, needle);
            assert!(
                said.contains(&format!("webstack.toml:{line}:")),
                "error should point at line {line} ({needle:?}), said:\n{said}"
            );
        }
        assert!(!said.contains("panicked"), "{said}");
    }
}

#[test]
fn files_the_topology_names_are_read_as_the_roles_will_read_them() {
    let dir = TempDir::new("check-files");
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    let run = |config: &str| {
        write("webstack.toml", config);
        let out = Command::new(EXE)
            .arg("check")
            .arg("-c")
            .arg(dir.path().join("webstack.toml"))
            .output()
            .unwrap();
        (out.status.code(), text(&out))
    };
    let base = toml(97, 1, "");

    // A certificate file that is not one, and a key that is not the certificate's: the lb
    // would refuse to start, so `check` refuses first, at the line that names them.
    write("garbage.pem", "not a certificate\n");
    write("garbage.key", "not a key\n");
    let one = rcgen::generate_simple_self_signed(vec!["www.foobar.com".into()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["www.foobar.com".into()]).unwrap();
    write("site.pem", &one.cert.pem());
    write("site.key", &one.signing_key.serialize_pem());
    write("other.key", &other.signing_key.serialize_pem());
    for (cert, key, message) in [
        ("garbage.pem", "site.key", "no PEM certificate"),
        ("site.pem", "garbage.key", "not a PEM private key"),
        ("site.pem", "other.key", "is not the key of the certificate"),
    ] {
        let config = base.replacen(
            "[lb.tls]\n",
            &format!("[lb.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n"),
            1,
        );
        let (code, said) = run(&config);
        assert_eq!(code, Some(1), "{cert} {key}: {said}");
        assert!(said.contains(message), "{cert} {key}: {said}");
        let needle = if message.contains("key") && key == "garbage.key" {
            key
        } else {
            cert
        };
        let line = line_of(&config, needle);
        assert!(said.contains(&format!("webstack.toml:{line}:")), "{said}");
    }
    let good = base.replacen(
        "[lb.tls]\n",
        "[lb.tls]\ncert = \"site.pem\"\nkey = \"site.key\"\n",
        1,
    );
    let (code, said) = run(&good);
    assert_eq!(code, Some(0), "{said}");

    // A templates folder the app could not start with.
    std::fs::create_dir_all(dir.path().join("templates")).unwrap();
    write("templates/home.html", "{{ site }}");
    let config = base.replace(
        &format!(
            "templates = \"{}\"",
            webstack_testkit::site_dir().join("templates").display()
        ),
        "templates = \"templates\"",
    );
    let (code, said) = run(&config);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("post.html is missing"), "{said}");
    write("templates/post.html", "{% if %}");
    write("templates/error.html", "x");
    let (code, said) = run(&config);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("template post.html is invalid"), "{said}");
}

#[test]
fn status_wait_takes_a_number_of_seconds() {
    for bad in ["inf", "nan", "-1", "1e400"] {
        let out = Command::new(EXE)
            .args(["status", &format!("--wait={bad}")])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        assert!(
            text(&out).contains("expected a number of seconds") && !text(&out).contains("panicked"),
            "{bad}: {}",
            text(&out)
        );
    }
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = Command::new(EXE)
        .args(["check", "-c", "/nonexistent/webstack.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("/nonexistent/webstack.toml: cannot read the topology file"),
        "{}",
        text(&out)
    );
}

#[test]
fn run_names_an_unknown_host() {
    let topology = Topology::write(EXE, "cli-run", 98, &toml(98, 2, ""));
    let out = Command::new(EXE)
        .args(["run", "--host", "web-07", "-c"])
        .arg(&topology.config_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("host \"web-07\" is not in"),
        "{}",
        text(&out)
    );
    let out = Command::new(EXE)
        .args(["run", "--host", "lb-01", "--role", "dns", "-c"])
        .arg(&topology.config_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "bad usage: {}", text(&out));
}

#[test]
fn control_commands_without_a_running_up_explain_themselves() {
    let dir = TempDir::new("cli-nothing");
    for args in [
        vec!["status"],
        vec!["stop", "web-01"],
        vec!["start", "web-01"],
        vec!["status", "--wait", "0.2"],
    ] {
        let out = Command::new(EXE)
            .args(&args)
            .arg("--state-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("no webstack is running"),
            "{args:?}: {}",
            text(&out)
        );
    }
}

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
        said.contains("lb-01 (lb)")
            && said.contains("web-01 (db+app+web)")
            && said.contains("web-02 (db+app+web)"),
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
            "must start with '/'",
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

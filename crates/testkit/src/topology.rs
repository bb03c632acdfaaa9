//! A real topology for a test: a topology file on the test's own loopback network
//! (127.0.N.10 for lb-01, 127.0.N.11.. for web-01..), started with the real `webstack up`,
//! stopped by pid when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::TempDir;

/// How long `up` may take to report every role healthy (a first MariaDB bootstrap on a cold,
/// loaded 2-core machine is the slowest), and to stop (a db role gives mariadbd up to 60 s).
const START_TIMEOUT_SECS: u32 = 240;
const STOP_TIMEOUT: Duration = Duration::from_secs(150);
/// Any one CLI command (`status`, `stop`, `start`) a test runs.
const CLI_TIMEOUT: Duration = Duration::from_secs(240);

pub struct Topology {
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    pub net: u8,
    exe: PathBuf,
    up: Option<Child>,
    /// Role processes started alone with `run_role`.
    roles: Vec<Child>,
    /// `up --netns`: every host in a network namespace.
    netns: bool,
}

/// The lb's per-client limits for test topologies: a test's client is one address sending as
/// fast as it can (a request loop, a distribution count), which the default limits (100
/// requests a second) would rightly cut. Generous, not off: the limits' code runs in every test.
/// `tests/limits.rs` removes this to test the defaults.
pub const TEST_CLIENT_LIMITS: &str = "\n[lb.limits]\nrate = 1000000\nburst = 1000000\n";

/// A topology file with one lb host and `web_hosts` web+app hosts on 127.0.`net`.0/24.
/// `lb_extra` lands inside the `[lb]` section (e.g. `algorithm = "roundrobin"`).
pub fn toml(net: u8, web_hosts: usize, lb_extra: &str) -> String {
    let site = crate::site_dir();
    let mut text = format!(
        "[site]\nname = \"www.foobar.com\"\n\n[[host]]\nname = \"lb-01\"\naddress = \"127.0.{net}.10\"\nroles = [\"lb\"]\n"
    );
    for i in 1..=web_hosts {
        text.push_str(&format!(
            "\n[[host]]\nname = \"web-{i:02}\"\naddress = \"127.0.{net}.{}\"\nroles = [\"web\", \"app\"]\n",
            10 + i
        ));
    }
    text.push_str(&format!(
        "\n[lb]\n{lb_extra}\n\n[lb.health]\ninterval = \"200ms\"\ntimeout = \"2s\"\nrise = 2\nfall = 2\n\n\
         [lb.tls]\nredirect_http = false\n\n\
         [web]\nstatic_root = \"{}\"\nexpose_server_name = true\n\n[app]\ntemplates = \"{}\"\n",
        site.join("static").display(),
        site.join("templates").display()
    ));
    text.push_str(TEST_CLIENT_LIMITS);
    text
}

/// `toml` plus a database tier: every web host also runs db, web-01 is the primary.
pub fn toml_with_db(net: u8, web_hosts: usize, lb_extra: &str) -> String {
    toml(net, web_hosts, lb_extra).replace(
        "roles = [\"web\", \"app\"]",
        "roles = [\"web\", \"app\", \"db\"]",
    ) + "\n[db]\nprimary = \"web-01\"\npoll_interval = \"200ms\"\n"
}

/// `toml_with_db` with failover: lb-01 and the first two web hosts also run etcd (three
/// members), and the database waits for an answer quickly (`query_timeout` 3 s).
pub fn toml_with_failover(net: u8, web_hosts: usize) -> String {
    assert!(web_hosts >= 2, "three etcd members: lb-01, web-01, web-02");
    let mut text = toml_with_db(net, web_hosts, "");
    text = text.replacen("roles = [\"lb\"]", "roles = [\"lb\", \"etcd\"]", 1);
    text = text.replacen(
        "roles = [\"web\", \"app\", \"db\"]",
        "roles = [\"web\", \"app\", \"db\", \"etcd\"]",
        2,
    );
    text + "query_timeout = \"3s\"\n"
}

/// `toml` with two lb hosts sharing the site's address: lb-01 on 127.0.`net`.8, lb-02 on .9,
/// `lb.vip` 127.0.`net`.10 (so `Topology::lb` is the VIP).
pub fn toml_with_two_lbs(net: u8, web_hosts: usize, lb_extra: &str) -> String {
    toml(
        net,
        web_hosts,
        &format!("vip = \"127.0.{net}.10\"\n{lb_extra}"),
    )
    .replacen(
        &format!("name = \"lb-01\"\naddress = \"127.0.{net}.10\"\nroles = [\"lb\"]\n"),
        &format!(
            "name = \"lb-01\"\naddress = \"127.0.{net}.8\"\nroles = [\"lb\"]\n\n\
             [[host]]\nname = \"lb-02\"\naddress = \"127.0.{net}.9\"\nroles = [\"lb\"]\n"
        ),
        1,
    )
}

impl Topology {
    /// Writes `config` into a fresh folder without starting anything.
    pub fn write(exe: &str, name: &str, net: u8, config: &str) -> Topology {
        let dir = TempDir::new(name);
        let config_path = dir.path().join("webstack.toml");
        std::fs::write(&config_path, config).expect("write topology");
        let state_dir = dir.path().join("state");
        Topology {
            config_path,
            state_dir,
            net,
            exe: PathBuf::from(exe),
            up: None,
            roles: Vec::new(),
            netns: false,
            dir,
        }
    }

    /// Writes `config` and runs `webstack up` on it until `status --wait` says all are healthy.
    pub fn start(exe: &str, name: &str, net: u8, config: &str) -> Topology {
        let mut topology = Self::write(exe, name, net, config);
        topology.spawn_up();
        topology
    }

    /// Runs `webstack up` again on the same topology and state dir (after `stop`).
    pub fn restart(&mut self) {
        assert!(self.up.is_none(), "stop the running up first");
        self.spawn_up();
    }

    /// Writes `config` and runs `webstack up --netns` on it (root) until every host is healthy.
    /// `up` gets SIGTERM if this test dies, so its namespaces never outlive the test.
    pub fn start_netns(exe: &str, name: &str, config: &str) -> Topology {
        let mut topology = Self::write(exe, name, 0, config);
        topology.netns = true;
        topology.spawn_up();
        topology
    }

    fn spawn_up(&mut self) {
        let child = if self.netns {
            self.spawn_logged(&["up", "--netns"], "up.log")
        } else {
            self.spawn_logged(&["up"], "up.log")
        };
        self.up = Some(child);
        let status = self.cli(&["status", "--wait", &START_TIMEOUT_SECS.to_string()]);
        assert!(
            status.status.success(),
            "topology did not become healthy:\n{}\nup.log:\n{}",
            text(&status),
            self.up_log()
        );
    }

    /// Runs one role alone (`webstack run --host H --role R`) and waits for its `/ready`.
    pub fn run_role(&mut self, host: &str, role: &str, admin: SocketAddr) {
        let child = self.spawn_logged(
            &["run", "--host", host, "--role", role],
            &format!("{host}-{role}.log"),
        );
        self.roles.push(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = crate::http::get(admin, "/ready", &[]) {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{host}/{role} not ready:\n{}",
                self.role_log(host, role)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `webstack ARGS -c <config> --state-dir <ours>`, its output appended to `log` in the test's
    /// folder (so role state such as the local CA stays there too).
    fn spawn_logged(&self, args: &[&str], log: &str) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(log))
            .expect("open a log file");
        let mut command = if self.netns {
            let mut command = Command::new("/usr/bin/setpriv");
            command.args(["--pdeathsig", "TERM", "--"]).arg(&self.exe);
            command
        } else {
            Command::new(&self.exe)
        };
        command
            .args(args)
            .arg("-c")
            .arg(&self.config_path)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn webstack")
    }

    pub fn role_log(&self, host: &str, role: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{host}-{role}.log")))
            .unwrap_or_default()
    }

    /// The lb's admin address (`/metrics`).
    pub fn lb_admin(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, self.net, 10], 9100))
    }

    pub fn lb(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, self.net, 10], 8080))
    }

    /// The web server of web-0`i`.
    pub fn web(&self, i: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, self.net, 10 + i], 8000))
    }

    pub fn up_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default()
    }

    pub fn log(&self, host: &str, role: &str) -> String {
        std::fs::read_to_string(
            self.state_dir
                .join("logs")
                .join(format!("{host}-{role}.log")),
        )
        .unwrap_or_default()
    }

    /// A role's access log as written so far (lines reach the file within a second).
    pub fn access_log(&self, host: &str, role: &str) -> String {
        std::fs::read_to_string(
            self.state_dir
                .join("logs")
                .join(format!("{host}-{role}.access.log")),
        )
        .unwrap_or_default()
    }

    /// Runs `webstack ARGS --state-dir <ours>`, killed if it takes longer than `CLI_TIMEOUT`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(&self.exe);
        command.args(args).arg("--state-dir").arg(&self.state_dir);
        output_within(&mut command, CLI_TIMEOUT)
    }

    /// `webstack db ARGS -c <this topology>`.
    pub fn db(&self, args: &[&str]) -> Output {
        let mut command = Command::new(&self.exe);
        command
            .arg("db")
            .args(args)
            .arg("-c")
            .arg(&self.config_path);
        output_within(&mut command, CLI_TIMEOUT)
    }

    /// The lb's view of its servers: waits (bounded) until every one of `names` is up, so a
    /// test that counts where requests went starts from a full rotation (the lb is ready after
    /// one check of each, whatever its result).
    pub fn wait_servers_up(&self, names: &[&str]) {
        let up = |name: &str| {
            crate::http::get(self.lb_admin(), "/metrics", &[]).is_ok_and(|r| {
                r.text()
                    .lines()
                    .any(|l| l == format!("webstack_lb_server_up{{server=\"{name}\"}} 1"))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        for name in names {
            while !up(name) {
                assert!(
                    Instant::now() < deadline,
                    "{name} never came up at the lb:\n{}",
                    crate::http::get(self.lb_admin(), "/metrics", &[])
                        .map(|r| r.text())
                        .unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `webstack status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(out.status.success(), "status failed: {}", text(&out));
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// `status`, or `Null` when it failed: for conditions polled with `assert_eventually!`.
    pub fn try_status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Pids of every role process the supervisor reports.
    pub fn role_pids(&self) -> Vec<u32> {
        self.status()["units"]
            .as_array()
            .map(|units| {
                units
                    .iter()
                    .filter_map(|u| u["pid"].as_u64())
                    .map(|p| p as u32)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn up_pid(&self) -> Option<u32> {
        self.up.as_ref().map(Child::id)
    }

    /// SIGTERM to `up` and wait (bounded) for it to exit; SIGKILL if it does not.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.up.take()?;
        match terminate(&mut child) {
            Some(status) => Some(status),
            None => panic!(
                "webstack up did not stop within {STOP_TIMEOUT:?}:\n{}",
                self.up_log()
            ),
        }
    }

    /// Runs the `mariadb` client against host `web-0i`'s database as the app account.
    pub fn sql(&self, i: u8, statement: &str) -> Result<String, String> {
        let password = std::fs::read_to_string(self.state_dir.join("secrets/app.password"))
            .map_err(|e| e.to_string())?;
        let out = Command::new("mariadb")
            .args([
                "--connect-timeout=5",
                "-h",
                &format!("127.0.{}.{}", self.net, 10 + i),
                "-P",
                "3306",
                "-u",
                "foobar_app",
                "--batch",
                "--skip-column-names",
                "foobar",
                "-e",
                statement,
            ])
            .env("MYSQL_PWD", password.trim())
            .output()
            .map_err(|e| {
                format!("cannot run the mariadb client (apt-get install mariadb-client): {e}")
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs the `mariadb` client on `host`'s database as webstack's admin (over its socket).
    pub fn admin_sql(&self, host: &str, statement: &str) -> Result<String, String> {
        let password = std::fs::read_to_string(self.state_dir.join("secrets/admin.password"))
            .map_err(|e| e.to_string())?;
        let socket = self.state_dir.join("db").join(host).join("mariadb.sock");
        let out = output_within(
            Command::new("mariadb")
                .arg("--connect-timeout=5")
                .arg("-S")
                .arg(&socket)
                .args([
                    "-u",
                    "webstack_admin",
                    "--batch",
                    "--skip-column-names",
                    "-e",
                    statement,
                ])
                .env("MYSQL_PWD", password.trim()),
            Duration::from_secs(30),
        );
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A role's facts from `status` (`Null` while they cannot be had).
    pub fn detail(&self, host: &str, role: &str) -> serde_json::Value {
        self.unit(host, role)["detail"].clone()
    }

    /// A role's line of `status --json` (`Null` while it cannot be had).
    pub fn unit(&self, host: &str, role: &str) -> serde_json::Value {
        self.try_status()["units"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| u["host"] == host && u["role"] == role)
            .cloned()
            .unwrap_or_default()
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for mut child in self.roles.drain(..).chain(self.up.take()) {
            terminate(&mut child);
        }
    }
}

/// SIGTERM, then up to `STOP_TIMEOUT` for the process to exit; SIGKILL if it does not (and
/// `None`). Only processes this test started, by pid.
pub fn terminate(child: &mut Child) -> Option<ExitStatus> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Runs `command` to its end and collects its output; killed (by pid) after `limit`, so a
/// stuck command fails the test instead of hanging the suite.
pub fn output_within(command: &mut Command, limit: Duration) -> Output {
    use std::io::Read;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a command");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let readers = (
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            buf
        }),
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.read_to_end(&mut buf);
            buf
        }),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{command:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: readers.0.join().unwrap_or_default(),
        stderr: readers.1.join().unwrap_or_default(),
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Why namespace mode cannot run here, if it cannot (not root, or `ip netns add` refused):
/// tests that need it say so and skip. `probe` names the namespace tried (and removed).
pub fn cannot_make_namespaces(probe: &str) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: network namespaces need root".into());
    }
    match Command::new("ip").args(["netns", "add", probe]).output() {
        Ok(out) if out.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", probe]).output();
            None
        }
        Ok(out) => Some(format!(
            "`ip netns add` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(error) => Some(format!("cannot run `ip`: {error}")),
    }
}

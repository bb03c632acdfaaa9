//! The load balancer is not a single point of failure: two lb hosts share the site's address
//! (`lb.vip`). On loopback, the stand-in: one listening socket shared by the lbs, accepted on
//! by whoever holds the lock. A request loop runs against the VIP while the holder is stopped,
//! started again and killed.

use std::net::SocketAddr;
use std::time::Duration;

use webstack_testkit::http::get;
use webstack_testkit::requests::RequestLoop;
use webstack_testkit::topology::toml_with_two_lbs;
use webstack_testkit::{Topology, assert_eventually};

const EXE: &str = env!("CARGO_BIN_EXE_webstack");
const LBS: [&str; 2] = ["lb-01", "lb-02"];

/// The lb hosts whose status says they hold the VIP.
fn holders(topology: &Topology) -> Vec<String> {
    LBS.iter()
        .filter(|h| topology.detail(h, "lb")["vip"]["holder"] == true)
        .map(|h| h.to_string())
        .collect()
}

fn the_holder(topology: &Topology) -> String {
    assert_eventually!(
        holders(topology).len() == 1,
        Duration::from_secs(10),
        "exactly one lb holds the VIP: {:?}",
        holders(topology)
    );
    holders(topology).remove(0)
}

fn other(host: &str) -> &'static str {
    if host == "lb-01" { "lb-02" } else { "lb-01" }
}

fn holder_gauge(admin: SocketAddr) -> String {
    get(admin, "/metrics", &[])
        .unwrap()
        .text()
        .lines()
        .find(|l| l.starts_with("webstack_lb_vip_holder{"))
        .unwrap_or_default()
        .to_string()
}

fn admin_of(host: &str) -> SocketAddr {
    let last = if host == "lb-01" { 8 } else { 9 };
    SocketAddr::from(([127, 0, 50, last], 9100))
}

#[test]
fn the_site_address_survives_a_stop_and_a_kill_of_the_lb_holding_it() {
    let topology = Topology::start(EXE, "ha-loopback", 50, &toml_with_two_lbs(50, 2, ""));
    let first = the_holder(&topology);
    let second = other(&first);
    assert_eq!(
        holder_gauge(admin_of(&first)),
        format!("webstack_lb_vip_holder{{host=\"{first}\"}} 1")
    );
    assert_eq!(
        holder_gauge(admin_of(second)),
        format!("webstack_lb_vip_holder{{host=\"{second}\"}} 0")
    );
    // `status` answers from what the supervisor polled (every 500 ms): the lb may have taken
    // the VIP since.
    assert_eventually!(
        String::from_utf8_lossy(&topology.cli(&["status"]).stdout)
            .contains("holds VIP 127.0.50.10"),
        Duration::from_secs(10),
        "status names the holder: {:?}",
        topology.cli(&["status"])
    );

    // No other process can join the site's port (no SO_REUSEPORT on it).
    {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_reuse_port(true).unwrap();
        let error = socket
            .bind(&topology.lb().into())
            .expect_err("a foreign socket joined the VIP's port");
        assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse, "{error}");
    }

    // Nor can another program of the same user get the shared socket from an lb.
    {
        use std::io::Read;
        let share = topology.state_dir().join(format!("run/{first}-vip.sock"));
        let mut stream = std::os::unix::net::UnixStream::connect(&share).expect("the share socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got);
        assert!(got.is_empty(), "the lb handed its socket to a stranger");
    }

    // A planned stop of the holder: not one request fails, the other lb takes the address.
    let requests = RequestLoop::start(None, topology.lb());
    std::thread::sleep(Duration::from_millis(500));
    let stop = topology.cli(&["stop", &format!("{first}/lb")]);
    assert!(stop.status.success(), "{stop:?}");
    std::thread::sleep(Duration::from_millis(500));
    let outcomes = requests.finish();
    assert!(
        outcomes.answered() > 10,
        "the loop ran: {}",
        outcomes.answered()
    );
    assert_eq!(
        outcomes.failures(),
        Vec::<String>::new(),
        "a planned stop fails no request"
    );
    webstack_testkit::requests::record("loopback (stand-in)", "clean stop", &outcomes);
    eprintln!(
        "stop of {first}: {} requests answered, longest silence {:?}",
        outcomes.answered(),
        outcomes.longest_silence()
    );
    assert_eq!(the_holder(&topology), second);

    // Started again, it is a standby: the address does not move back.
    let start = topology.cli(&["start", &format!("{first}/lb")]);
    assert!(start.status.success(), "{start:?}");
    for _ in 0..10 {
        assert_eq!(holders(&topology), vec![second.to_string()]);
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGKILL of the holder: only the request it was serving fails; the standby accepts the
    // connections waiting in the shared socket's queue.
    let pid = topology.unit(second, "lb")["pid"].as_u64().expect("a pid") as i32;
    let requests = RequestLoop::start(None, topology.lb());
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let outcomes = requests.finish();
    eprintln!(
        "kill of {second}: {} answered, failed {:?}, longest silence {:?}",
        outcomes.answered(),
        outcomes.failures(),
        outcomes.longest_silence()
    );
    webstack_testkit::requests::record("loopback (stand-in)", "lb role killed", &outcomes);
    assert!(
        outcomes.failures().len() <= 1,
        "only the request in flight may fail: {:?}",
        outcomes.failures()
    );
    assert!(outcomes.answered() > 10);
    assert_eq!(the_holder(&topology), first);
    // The supervisor restarts the killed lb, as a standby.
    assert_eventually!(
        topology.unit(second, "lb")["healthy"] == true,
        Duration::from_secs(30),
        "{second} restarted"
    );
    for _ in 0..5 {
        assert_eq!(holders(&topology), vec![first.clone()]);
        std::thread::sleep(Duration::from_millis(100));
    }
}

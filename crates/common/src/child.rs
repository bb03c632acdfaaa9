//! Child programs that must not outlive the role that runs them (mariadbd, etcd, keepalived),
//! and whether a pid runs this very program. Children are
//! started through util-linux's `setpriv --pdeathsig KILL`, so the kernel kills them if their
//! role dies, even by SIGKILL. (The workspace forbids `unsafe`, which `pre_exec` + `prctl`
//! would need; `setpriv` execs the program, so its pid is the program's.)

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

const SETPRIV: &str = "/usr/bin/setpriv";

/// A command for `program` that dies with this process (when `setpriv` is installed: it is in
/// util-linux, an essential Debian package).
pub fn dies_with_parent(program: impl AsRef<OsStr>) -> Command {
    if Path::new(SETPRIV).is_file() {
        let mut command = Command::new(SETPRIV);
        command
            .arg("--pdeathsig")
            .arg("KILL")
            .arg("--")
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Stops `child` (`name` for the log): SIGTERM, so it can shut down cleanly, and SIGKILL if it
/// has not exited within `limit`.
pub async fn stop(child: &mut Child, limit: Duration, name: &str) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(limit, child.wait()).await.is_err() {
        tracing::warn!("{name} did not stop within {limit:?}; killing it");
        let _ = child.kill().await;
    }
}

/// True when process `pid` runs this very program (its `/proc/<pid>/exe` is ours): another
/// webstack process, not one that reused a dead one's pid. False for a zombie or a gone pid.
pub fn runs_this_program(pid: u32) -> bool {
    let theirs = std::fs::read_link(format!("/proc/{pid}/exe"));
    matches!((theirs, std::env::current_exe()), (Ok(theirs), Ok(ours)) if theirs == ours)
}

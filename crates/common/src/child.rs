//! Child programs that must not outlive the role that runs them (mariadbd, etcd, keepalived):
//! started through util-linux's `setpriv --pdeathsig KILL`, so the kernel kills them if their
//! role dies, even by SIGKILL. (The workspace forbids `unsafe`, which `pre_exec` + `prctl`
//! would need; `setpriv` execs the program, so its pid is the program's.)

use std::ffi::OsStr;
use std::path::Path;

use tokio::process::Command;

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

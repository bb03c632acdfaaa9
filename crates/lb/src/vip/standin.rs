//! The VIP on one machine's loopback, where VRRP cannot run. The lbs share one listening socket
//! per port of the VIP: the first lb binds it, every other gets a duplicate over a Unix socket
//! (`SCM_RIGHTS`) from a running peer. Whoever holds the lock file accepts on it; the others
//! wait on the lock. A holder that stops releases the lock once it stopped accepting, and one
//! that dies releases it with its last file descriptor: either way the standby accepts within
//! `LOCK_POLL`, and connections waiting in the socket's queue meanwhile are served, not refused
//! (the socket lives as long as any lb holds it).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use tokio::sync::{oneshot, watch};
use webstack_common::Shutdown;

use super::VipState;

/// How often a standby tries the lock: the longest the VIP goes unserved after a holder left.
pub const LOCK_POLL: Duration = Duration::from_millis(5);
/// The most sockets one lb shares (the VIP's HTTP and HTTPS ports).
const MAX_SOCKETS: usize = 4;
/// How long a starting lb keeps trying to get the VIP's sockets (a peer may be starting too).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where `host`'s lb hands out its duplicates of the VIP's sockets.
fn share_path(run_dir: &Path, host: &str) -> PathBuf {
    run_dir.join(format!("{host}-vip.sock"))
}

fn lock_path(run_dir: &Path) -> PathBuf {
    run_dir.join("lb-vip.lock")
}

/// The VIP's listening sockets, one per port in `ports` order: a duplicate from a running peer,
/// or bound here when no peer has them. Blocking (run it on a blocking thread).
pub fn acquire(
    vip: IpAddr,
    ports: &[u16],
    run_dir: &Path,
    peers: &[String],
) -> io::Result<Vec<std::net::TcpListener>> {
    let wanted: Vec<SocketAddr> = ports.iter().map(|&p| SocketAddr::new(vip, p)).collect();
    let deadline = Instant::now() + ACQUIRE_TIMEOUT;
    loop {
        for peer in peers {
            match fetch(&share_path(run_dir, peer), &wanted) {
                Ok(sockets) => {
                    tracing::info!(peer = %peer, "got the VIP's sockets from the other lb");
                    return Ok(sockets);
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::debug!(peer = %peer, %error, "no VIP sockets from this peer")
                }
            }
        }
        let bound: io::Result<Vec<_>> = wanted
            .iter()
            .map(|&addr| crate::listen::bind(addr, false))
            .collect();
        match bound {
            Ok(sockets) => return Ok(sockets),
            Err(error) if error.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                // A peer is starting too and bound first, or is between bind and sharing.
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => {
                return Err(io::Error::new(
                    error.kind(),
                    format!(
                        "cannot listen on the VIP ({}): {error}; no other lb of this site shares it (see their logs), so another process holds the address",
                        wanted
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
}

/// Asks one peer for its duplicates; they must be listening sockets on exactly `wanted`.
fn fetch(path: &Path, wanted: &[SocketAddr]) -> io::Result<Vec<std::net::TcpListener>> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    recvmsg(&stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut sockets = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            sockets.extend(fds.map(std::net::TcpListener::from));
        }
    }
    let mut ordered = Vec::new();
    for addr in wanted {
        let position = sockets
            .iter()
            .position(|s| s.local_addr().is_ok_and(|a| a == *addr))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the peer has no socket on {addr}"),
                )
            })?;
        ordered.push(sockets.swap_remove(position));
    }
    for socket in &ordered {
        socket.set_nonblocking(true)?;
    }
    Ok(ordered)
}

/// Binds this lb's share path, private (0600) before it is visible.
fn bind_share(run_dir: &Path, host: &str) -> io::Result<tokio::net::UnixListener> {
    let path = share_path(run_dir, host);
    let fresh = run_dir.join(format!(".{host}-vip.{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&fresh);
    let listener = tokio::net::UnixListener::bind(&fresh)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&fresh, &path))?;
    Ok(listener)
}

/// True when the peer of `stream` runs this very program (another lb of the site): the file
/// mode already keeps other users out, this keeps out other programs of the same user.
fn is_webstack(stream: &tokio::net::UnixStream) -> bool {
    rustix::net::sockopt::socket_peercred(stream).is_ok_and(|peer| {
        u32::try_from(peer.pid.as_raw_pid()).is_ok_and(webstack_common::child::runs_this_program)
    })
}

/// Hands duplicates of `sockets` to every other lb that connects to this lb's share path,
/// until the task is dropped.
async fn share(listener: tokio::net::UnixListener, sockets: Vec<OwnedFd>) {
    let fds: Vec<_> = sockets.iter().map(AsFd::as_fd).collect();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: try again later rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if !is_webstack(&stream) {
            tracing::warn!("refused the VIP's sockets to a process that is not webstack");
            continue;
        }
        let byte = [1u8];
        let iov = [IoSlice::new(&byte)];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        // A fresh connection's send buffer is empty: this small message never blocks.
        if let Err(error) = sendmsg(&stream, &iov, &mut control, SendFlags::empty()) {
            tracing::warn!(%error, "cannot hand the VIP's sockets to a peer");
        }
    }
}

/// Runs this lb's part of the stand-in: shares the sockets, takes the lock as soon as it is
/// free (state `Master`: the gated listeners accept), and after `release` fires (this lb
/// stopped accepting) lets it go. A standby that is stopping never takes the lock.
pub async fn run(
    run_dir: PathBuf,
    host: String,
    sockets: Vec<OwnedFd>,
    state: watch::Sender<VipState>,
    shutdown: Shutdown,
    release: oneshot::Receiver<()>,
) {
    let sharing = match bind_share(&run_dir, &host) {
        Ok(listener) => Some(tokio::spawn(share(listener, sockets))),
        Err(error) => {
            // Still serve: an lb that starts later cannot get the socket from this one (it
            // says so), but the site keeps its address.
            tracing::error!(%error, path = %share_path(&run_dir, &host).display(), "cannot share the VIP's sockets with the other lbs");
            None
        }
    };
    let path = lock_path(&run_dir);
    let mut file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    {
        Ok(file) => Some(file),
        Err(error) => {
            tracing::error!(%error, path = %path.display(), "cannot open the VIP's lock file");
            state.send_replace(VipState::Fault);
            None
        }
    };
    let mut tick = tokio::time::interval(LOCK_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while let Some(candidate) = file.take() {
        tokio::select! {
            biased;
            _ = shutdown.triggered() => break,
            _ = tick.tick() => {}
        }
        match Flock::lock(candidate, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                state.send_replace(VipState::Master);
                tracing::info!("this lb holds the VIP now");
                // Until this lb stopped accepting (or the lb is gone).
                let _ = release.await;
                drop(lock);
                state.send_replace(VipState::Backup);
                tracing::info!("released the VIP to the other lb");
                break;
            }
            Err((candidate, _)) => file = Some(candidate),
        }
    }
    let _ = std::fs::remove_file(share_path(&run_dir, &host));
    if let Some(sharing) = sharing {
        sharing.abort();
    }
}

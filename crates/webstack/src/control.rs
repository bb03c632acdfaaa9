//! The control channel between the CLI and a running supervisor: one JSON request and one JSON
//! reply per connection on a Unix socket in the state dir (`control.sock`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest a stop or start may take before the client gives up waiting for the reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Status,
    Stop { target: String },
    Start { target: String },
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub site: String,
    #[serde(default)]
    pub units: Vec<UnitStatus>,
}

/// One role process as the supervisor sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnitStatus {
    pub host: String,
    pub role: String,
    /// Where the role serves traffic.
    pub address: String,
    /// Where it serves `/live`, `/ready`, `/metrics`.
    pub admin: String,
    pub pid: Option<u32>,
    /// running, stopped (by an operator) or restarting (after a crash).
    pub state: String,
    /// The role's `/ready` answered 200 at the last poll.
    pub healthy: bool,
    /// Role-specific facts from the role's `/status` (a db node: role, replication, lag).
    #[serde(default)]
    pub detail: serde_json::Value,
    pub restarts: u32,
}

impl Reply {
    pub fn failure(error: String) -> Reply {
        Reply {
            ok: false,
            error: Some(error),
            ..Reply::default()
        }
    }
}

/// Answers one connection of a control socket: reads its request (one short JSON line, bounded
/// in size and time) and writes back what `answer` makes of it.
pub async fn answer_one<F, Fut>(mut stream: UnixStream, answer: F)
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        (&mut stream).take(64 * 1024).read_to_end(&mut buf),
    )
    .await;
    let reply = match read
        .ok()
        .and_then(|r| r.ok())
        .map(|_| serde_json::from_slice::<Request>(&buf))
    {
        Some(Ok(request)) => answer(request).await,
        Some(Err(error)) => Reply::failure(format!("bad request: {error}")),
        None => Reply::failure("no request received".into()),
    };
    if let Ok(bytes) = serde_json::to_vec(&reply) {
        let _ = stream.write_all(&bytes).await;
    }
    let _ = stream.shutdown().await;
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// Sends one request to the supervisor of `state_dir`.
pub async fn request(state_dir: &Path, request: &Request) -> anyhow::Result<Reply> {
    let path = socket_path(state_dir);
    let mut stream = UnixStream::connect(&path).await.with_context(|| {
        format!(
            "no webstack is running with state dir {} (cannot connect to {}); start one with `webstack up`",
            state_dir.display(),
            path.display()
        )
    })?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    stream.shutdown().await?;
    let mut reply = Vec::new();
    tokio::time::timeout(REPLY_TIMEOUT, stream.read_to_end(&mut reply))
        .await
        .context("the supervisor did not answer in time")??;
    serde_json::from_slice(&reply).context("the supervisor sent an unreadable reply")
}

/// `webstack stop TARGET` / `webstack start TARGET`.
pub async fn stop_or_start(state_dir: &Path, op: &str, target: &str) -> anyhow::Result<ExitCode> {
    let target = target.to_string();
    let req = if op == "stop" {
        Request::Stop { target }
    } else {
        Request::Start { target }
    };
    let reply = request(state_dir, &req).await?;
    if reply.ok {
        println!("{}", reply.message.unwrap_or_default());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("webstack {op}: {}", reply.error.unwrap_or_default());
        Ok(ExitCode::FAILURE)
    }
}

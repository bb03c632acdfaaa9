//! The foobar.com data: posts, stored in MariaDB through the router (writes to the primary,
//! reads to a replica), with input validation and read-your-writes per session.

use std::sync::Arc;

use mysql_async::prelude::*;
use serde::{Deserialize, Serialize};
use webstack_db::gtid::GtidPos;
use webstack_db::router::{Node, RouteError, Router};

use crate::AppError;
use crate::metrics::{Kind, Metrics};

pub const AUTHOR_MAX: usize = 64;
pub const BODY_MAX: usize = 5000;
/// The cookie that remembers a session's last write (a GTID), so its next reads see it.
pub const SESSION_COOKIE: &str = "foobar_gtid";

#[derive(Clone, Debug, Serialize)]
pub struct Post {
    pub id: u64,
    pub author: String,
    pub body: String,
    pub created_at: String,
}

/// A post as submitted (JSON or form); unknown fields are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPost {
    pub author: String,
    pub body: String,
}

impl NewPost {
    /// Trims and checks lengths and characters; the error says which field and why.
    pub fn validate(self) -> Result<NewPost, AppError> {
        let author = self.author.trim().to_string();
        let body = self.body.trim().to_string();
        let check = |name: &str, value: &str, max: usize, multiline: bool| {
            if value.is_empty() {
                return Err(AppError::BadInput(format!("{name} is required")));
            }
            if value.chars().count() > max {
                return Err(AppError::BadInput(format!(
                    "{name} is longer than {max} characters"
                )));
            }
            if value
                .chars()
                .any(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')))
            {
                return Err(AppError::BadInput(format!(
                    "{name} contains control characters"
                )));
            }
            Ok(())
        };
        check("author", &author, AUTHOR_MAX, false)?;
        check("body", &body, BODY_MAX, true)?;
        Ok(NewPost { author, body })
    }
}

/// A post's columns as the app reads them (`post` takes them in this order).
macro_rules! columns {
    () => {
        "id, author, body, DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%sZ')"
    };
}
const SELECT: &str = concat!("SELECT ", columns!(), " FROM posts");
/// A write in one round trip: the INSERT returns the post as stored (MariaDB's `RETURNING`) and
/// the second statement the write's GTID, which MariaDB would put in the INSERT's own OK packet
/// only for a client that asks for session tracking (mysql_async 0.37 does not). A prepared
/// statement holds one statement, so this is a text query, and its values are hex literals
/// (`insert_statement`): nothing the user sent is ever parsed as SQL, whatever the escaping mode.
const INSERT_HEAD: &str = "INSERT INTO posts (author, body) VALUES (";
const INSERT_TAIL: &str = concat!(") RETURNING ", columns!(), "; SELECT @@last_gtid");

/// The write's statements for `new` (see `INSERT_HEAD`), as go-sql-driver's
/// `interpolateParams` does to save the prepare round trip, but with `_utf8mb4 X'..'` literals:
/// only hex digits reach the SQL text.
fn insert_statement(new: &NewPost) -> String {
    fn literal(sql: &mut String, text: &str) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        sql.push_str("_utf8mb4 X'");
        for byte in text.bytes() {
            sql.push(HEX[usize::from(byte >> 4)] as char);
            sql.push(HEX[usize::from(byte & 0xf)] as char);
        }
        sql.push('\'');
    }
    let mut sql = String::with_capacity(
        INSERT_HEAD.len() + INSERT_TAIL.len() + 2 * (new.author.len() + new.body.len()) + 32,
    );
    sql.push_str(INSERT_HEAD);
    literal(&mut sql, &new.author);
    sql.push_str(", ");
    literal(&mut sql, &new.body);
    sql.push_str(INSERT_TAIL);
    sql
}

fn post((id, author, body, created_at): (u64, String, String, String)) -> Post {
    Post {
        id,
        author,
        body,
        created_at,
    }
}

/// The reads the application makes.
#[derive(Clone, Copy)]
enum Read {
    Recent(u32),
    One(u64),
}

impl Read {
    async fn run(&self, conn: &mut mysql_async::Conn) -> Result<Vec<Post>, mysql_async::Error> {
        match *self {
            Read::Recent(limit) => {
                conn.exec_map(format!("{SELECT} ORDER BY id DESC LIMIT ?"), (limit,), post)
                    .await
            }
            Read::One(id) => {
                conn.exec_map(format!("{SELECT} WHERE id = ?"), (id,), post)
                    .await
            }
        }
    }
}

/// How long a session's read waits on a replica for the session's last write.
const READ_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs a read on the node the router picks; if that node fails mid-way, once more on another
/// (the router has been told), so losing a replica costs no failed request.
async fn read(
    router: &Router,
    metrics: &Metrics,
    after: Option<&GtidPos>,
    query: Read,
) -> Result<(Vec<Post>, Arc<Node>), AppError> {
    let mut last = None;
    let timeout = router.query_timeout();
    // Read-your-writes: when no replica has applied the session's last write yet, its read
    // waits for it on a replica that is catching up (bounded), rather than going to the
    // primary; a replica that does not get there in time sends the read to the primary.
    if let Some(after) = after
        && router
            .reader(Some(after))
            .ok()
            .is_some_and(|n| !n.state().read_only)
        && let Some(node) = router.catching_up_reader(after)
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let position = after.to_string();
        let attempt = async {
            let mut conn = node.conn(router.connect_timeout()).await?;
            let exchange = async move {
                let waited: Option<i64> = conn
                    .exec_first(
                        "SELECT MASTER_GTID_WAIT(?, ?)",
                        (position, READ_WAIT.as_secs_f64()),
                    )
                    .await?;
                if waited != Some(0) {
                    return Ok(None);
                }
                Ok::<_, RouteError>(Some(query.run(&mut conn).await?))
            };
            detached(deadline, exchange)
                .await
                .unwrap_or(Err(RouteError::Timeout(timeout)))
        };
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout_at(deadline, attempt)
            .await
            .unwrap_or(Err(RouteError::Timeout(timeout)));
        metrics.query(&node.name, Kind::Read, started.elapsed(), outcome.is_ok());
        match outcome {
            Ok(Some(posts)) => return Ok((posts, node)),
            Ok(None) => {
                tracing::info!(node = %node.name, "a replica did not catch up in time; reading from the primary")
            }
            Err(error) => {
                tracing::warn!(node = %node.name, %error, "read failed; trying another node");
                router.mark_unreachable(&node);
            }
        }
    }
    for _ in 0..2 {
        let node = router.reader(after)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let attempt = async {
            let mut conn = node.conn(router.connect_timeout()).await?;
            let exchange = async move { Ok::<_, RouteError>(query.run(&mut conn).await?) };
            detached(deadline, exchange)
                .await
                .unwrap_or(Err(RouteError::Timeout(timeout)))
        };
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout_at(deadline, attempt)
            .await
            .unwrap_or(Err(RouteError::Timeout(timeout)));
        metrics.query(&node.name, Kind::Read, started.elapsed(), outcome.is_ok());
        match outcome {
            Ok(posts) => return Ok((posts, node)),
            Err(error) => {
                tracing::warn!(node = %node.name, %error, "read failed; trying another node");
                router.mark_unreachable(&node);
                last = Some(error);
            }
        }
    }
    Err(last.map_or(
        AppError::Unavailable("the database is unavailable".into()),
        AppError::from,
    ))
}

/// Runs one exchange on a pooled connection (`exchange` owns it) in a task of its own, until
/// `deadline`, and waits for it; `None` when it did not end in time (its connection is closed
/// with it) or its task failed. hyper drops a request's handler when its client goes away, and
/// an exchange dropped with it would leave its connection mid-way, which mysql_async can only
/// close: every abandoned request (a client's timeout, the end of a load, a flood of aborted
/// posts) would cost a login, the session's setup and its prepared statements. Detached, the
/// exchange ends and its connection goes back to the pool; a write sent before its client left
/// is committed all the same (as behind nginx and PHP-FPM). Only the exchange is: getting a
/// connection, and a write's wait for a primary, stay with the request, so a client that leaves
/// before its statement is sent starts nothing, and the detached work is bounded by the pools.
async fn detached<T: Send + 'static>(
    deadline: tokio::time::Instant,
    exchange: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    tokio::spawn(tokio::time::timeout_at(deadline, exchange))
        .await
        .ok()?
        .ok()
}

pub async fn recent(
    router: &Router,
    metrics: &Metrics,
    limit: u32,
    after: Option<&GtidPos>,
) -> Result<(Vec<Post>, Arc<Node>), AppError> {
    read(router, metrics, after, Read::Recent(limit)).await
}

pub async fn get(
    router: &Router,
    metrics: &Metrics,
    id: u64,
    after: Option<&GtidPos>,
) -> Result<(Option<Post>, Arc<Node>), AppError> {
    let (posts, node) = read(router, metrics, after, Read::One(id)).await?;
    Ok((posts.into_iter().next(), node))
}

/// Why one attempt at a write failed: `Retry` when nothing reached a primary (there is none
/// right now, it refused the statement as read-only, or no connection could be made), so the
/// write may wait for the next primary; `Fail` otherwise.
enum Attempt {
    Retry(AppError),
    Fail(AppError),
}

/// How often a held write looks for a primary again.
const HOLD_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Inserts on the primary; returns the stored post and the write's GTID. During a failover the
/// write is held (up to `db.write_hold`) and sent to the new primary when it appears. A write
/// whose commit outcome is unknown (the primary failed after the INSERT was sent) is never
/// retried: 503 that says so. Once sent, a write runs to its end even if its client goes away
/// (`detached`); a held one whose client leaves is never sent.
pub async fn create(
    router: &Arc<Router>,
    metrics: &Metrics,
    new: &NewPost,
) -> Result<(Post, String), AppError> {
    let deadline = std::time::Instant::now() + router.write_hold();
    let mut held = false;
    loop {
        match create_once(router, metrics, new).await {
            Ok(done) => {
                if held {
                    tracing::info!("a held write went to the new primary");
                }
                return Ok(done);
            }
            Err(Attempt::Retry(_)) if std::time::Instant::now() < deadline => {
                if !held {
                    metrics.writes_held.inc();
                }
                held = true;
                tokio::time::sleep(HOLD_POLL).await;
                router.refresh_soon().await;
            }
            Err(Attempt::Retry(error)) => {
                metrics.writes_refused.inc();
                return Err(error);
            }
            Err(Attempt::Fail(error)) => return Err(error),
        }
    }
}

async fn create_once(
    router: &Arc<Router>,
    metrics: &Metrics,
    new: &NewPost,
) -> Result<(Post, String), Attempt> {
    let writer = router
        .writer()
        .map_err(|error| Attempt::Retry(error.into()))?;
    let started = std::time::Instant::now();
    let outcome = write_once(router, &writer, new).await;
    metrics.query(
        &writer.name,
        Kind::Write,
        started.elapsed(),
        outcome.is_ok(),
    );
    outcome
}

async fn write_once(
    router: &Arc<Router>,
    writer: &Arc<Node>,
    new: &NewPost,
) -> Result<(Post, String), Attempt> {
    let timeout = router.query_timeout();
    let deadline = tokio::time::Instant::now() + timeout;
    // No connection to the primary, or a pooled one that died with an earlier server (a ping
    // finds out): nothing was sent, so the write may wait for a primary. Bounded by the
    // connect timeout: a frozen primary must not eat the whole hold.
    let ready = async {
        let mut conn = writer.conn(router.connect_timeout()).await?;
        conn.ping().await?;
        Ok::<_, RouteError>(conn)
    };
    let mut conn = match tokio::time::timeout(router.connect_timeout(), ready).await {
        Ok(Ok(conn)) => conn,
        outcome => {
            router.mark_unreachable(writer);
            let error = match outcome {
                Ok(Err(error)) => error.to_string(),
                _ => "no answer".into(),
            };
            tracing::warn!(node = %writer.name, %error, "no usable connection to the primary");
            return Err(Attempt::Retry(RouteError::NoPrimary.into()));
        }
    };
    // Sent from here on: the exchange runs to its end (or the deadline) in a task of its own.
    let statement = insert_statement(new);
    let exchange = {
        let (router, writer) = (router.clone(), writer.clone());
        async move {
            // The first result set is the stored post (`RETURNING`): its rows arrive before the
            // statement's end, and the set ends only after the commit (autocommit, acknowledged
            // by a replica under semi-sync). An error here is the INSERT's: nothing follows it.
            let mut result = conn
                .query_iter(statement)
                .await
                .map_err(|error| write_refused(&router, &writer, error))?;
            let stored = result
                .collect::<(u64, String, String, String)>()
                .await
                .map_err(|error| write_refused(&router, &writer, error))?
                .into_iter()
                .next()
                .map(post)
                .ok_or_else(|| {
                    Attempt::Fail(AppError::Database("the insert returned no row".into()))
                })?;
            // Committed: what follows is only the write's GTID (the session's cookie). If the
            // primary goes away now the post is stored all the same: answer with it and no
            // GTID rather than an error.
            let gtid = async {
                let gtid = result.collect::<String>().await?;
                result.drop_result().await?;
                Ok::<_, mysql_async::Error>(gtid.into_iter().next())
            };
            match gtid.await {
                Ok(gtid) => Ok((stored, gtid.unwrap_or_default())),
                Err(error) => {
                    tracing::warn!(node = %writer.name, %error, id = stored.id, "the primary went away right after a committed write");
                    router.mark_unreachable(&writer);
                    Ok((stored, String::new()))
                }
            }
        }
    };
    match detached(deadline, exchange).await {
        Some(outcome) => outcome,
        None => {
            router.mark_unreachable(writer);
            Err(Attempt::Fail(RouteError::OutcomeUnknown.into()))
        }
    }
}

/// A failed INSERT. The node refused it as read-only (a demoted or fenced primary): nothing was
/// written, so it may wait for the next primary. The connection failed: the commit may or may
/// not have happened, so it is never sent again.
fn write_refused(router: &Router, writer: &Node, error: mysql_async::Error) -> Attempt {
    /// ER_OPTION_PREVENTS_STATEMENT: the node runs with read_only.
    const READ_ONLY: u16 = 1290;
    match &error {
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => {
            router.mark_unreachable(writer);
            tracing::warn!(node = %writer.name, %error, "the primary failed during a write");
            Attempt::Fail(RouteError::OutcomeUnknown.into())
        }
        mysql_async::Error::Server(server) if server.code == READ_ONLY => {
            router.mark_unreachable(writer);
            tracing::warn!(node = %writer.name, %error, "the primary no longer takes writes");
            Attempt::Retry(RouteError::NoPrimary.into())
        }
        _ => Attempt::Fail(error.into()),
    }
}

/// The session's last write position, from its cookie.
pub fn session_position(headers: &axum::http::HeaderMap) -> Option<GtidPos> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
        .map(GtidPos::parse)
        .find(|pos| !pos.is_empty())
}

/// `Set-Cookie` for a write at `gtid`.
pub fn session_cookie(gtid: &str, secure: bool) -> String {
    let gtid: String = gtid
        .chars()
        .filter(|c| c.is_ascii_digit() || matches!(c, '-' | ','))
        .collect();
    format!(
        "{SESSION_COOKIE}={gtid}; Path=/; Max-Age=300; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(author: &str, body: &str) -> NewPost {
        NewPost {
            author: author.into(),
            body: body.into(),
        }
    }

    #[test]
    fn validation_trims_and_explains() {
        let ok = new("  ada ", " hello\nworld ").validate().unwrap();
        assert_eq!(
            (ok.author.as_str(), ok.body.as_str()),
            ("ada", "hello\nworld")
        );
        let message = |p: NewPost| p.validate().unwrap_err().to_string();
        assert_eq!(message(new(" ", "x")), "author is required");
        assert_eq!(message(new("a", "")), "body is required");
        assert_eq!(
            message(new(&"a".repeat(65), "x")),
            "author is longer than 64 characters"
        );
        assert_eq!(
            message(new("a", &"é".repeat(5001))),
            "body is longer than 5000 characters"
        );
        assert!(
            new("a", &"é".repeat(5000)).validate().is_ok(),
            "characters, not bytes"
        );
        assert_eq!(
            message(new("a\u{0}b", "x")),
            "author contains control characters"
        );
        assert_eq!(
            message(new("a\nb", "x")),
            "author contains control characters"
        );
    }

    #[test]
    fn a_write_s_values_reach_the_sql_only_as_hex_digits() {
        let sql = insert_statement(&new("a'b", "\\'); DROP TABLE posts; -- é🦀"));
        assert_eq!(
            sql,
            concat!(
                "INSERT INTO posts (author, body) VALUES (_utf8mb4 X'612762', _utf8mb4 X'",
                "5C27293B2044524F50205441424C4520706F7374733B202D2D20C3A9F09FA680",
                "') RETURNING ",
                columns!(),
                "; SELECT @@last_gtid"
            )
        );
    }

    #[test]
    fn session_cookie_round_trips_and_is_sanitized() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            "a=b; foobar_gtid=0-1-42".parse().unwrap(),
        );
        assert_eq!(session_position(&headers), Some(GtidPos::parse("0-1-42")));
        assert_eq!(
            session_cookie("0-1-7\"; x", false),
            "foobar_gtid=0-1-7; Path=/; Max-Age=300; HttpOnly; SameSite=Lax"
        );
        assert!(session_cookie("0-1-7", true).ends_with("; Secure"));
    }
}

//! The foobar.com data: posts, stored in MariaDB through the router (writes to the primary,
//! reads to a replica), with input validation and read-your-writes per session.

use std::sync::Arc;

use mysql_async::prelude::*;
use serde::{Deserialize, Serialize};
use webstack_db::gtid::GtidPos;
use webstack_db::router::{Node, RouteError, Router};

use crate::AppError;

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

const SELECT: &str =
    "SELECT id, author, body, DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%sZ') FROM posts";

fn post((id, author, body, created_at): (u64, String, String, String)) -> Post {
    Post {
        id,
        author,
        body,
        created_at,
    }
}

/// The reads the application makes.
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

/// Runs a read on the node the router picks; if that node fails mid-way, once more on another
/// (the router has been told), so losing a replica costs no failed request.
async fn read(
    router: &Router,
    after: Option<&GtidPos>,
    query: Read,
) -> Result<(Vec<Post>, Arc<Node>), AppError> {
    let mut last = None;
    for _ in 0..2 {
        let node = router.reader(after)?;
        let attempt = async {
            let mut conn = node.conn(router.connect_timeout()).await?;
            Ok::<_, RouteError>(query.run(&mut conn).await?)
        };
        let timeout = router.query_timeout();
        let attempt = async {
            tokio::time::timeout(timeout, attempt)
                .await
                .unwrap_or(Err(RouteError::Timeout(timeout)))
        };
        match attempt.await {
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

pub async fn recent(
    router: &Router,
    limit: u32,
    after: Option<&GtidPos>,
) -> Result<(Vec<Post>, Arc<Node>), AppError> {
    read(router, after, Read::Recent(limit)).await
}

pub async fn get(
    router: &Router,
    id: u64,
    after: Option<&GtidPos>,
) -> Result<(Option<Post>, Arc<Node>), AppError> {
    let (posts, node) = read(router, after, Read::One(id)).await?;
    Ok((posts.into_iter().next(), node))
}

/// Inserts on the primary; returns the stored post and the write's GTID. Bounded by the query
/// timeout: a primary that hangs answers 503, not never.
pub async fn create(router: &Router, new: &NewPost) -> Result<(Post, String), AppError> {
    let writer = router.writer()?;
    let timeout = router.query_timeout();
    let write = async {
        // No connection to the primary: writes are unavailable (503), not our fault (500).
        let mut conn = writer
            .conn(router.connect_timeout())
            .await
            .map_err(|error| {
                router.mark_unreachable(&writer);
                tracing::warn!(node = %writer.name, %error, "no connection to the primary");
                AppError::from(RouteError::NoPrimary)
            })?;
        conn.exec_drop(
            "INSERT INTO posts (author, body) VALUES (?, ?)",
            (&new.author, &new.body),
        )
        .await
        .map_err(|error| write_refused(router, &writer, error))?;
        let id = conn
            .last_insert_id()
            .ok_or_else(|| AppError::Database("no insert id".into()))?;
        let gtid: Option<String> = conn.query_first("SELECT @@last_gtid").await?;
        let stored = conn
            .exec_first(format!("{SELECT} WHERE id = ?"), (id,))
            .await?
            .map(post);
        let stored = stored.ok_or_else(|| AppError::Database("inserted post not found".into()))?;
        Ok((stored, gtid.unwrap_or_default()))
    };
    tokio::time::timeout(timeout, write)
        .await
        .unwrap_or_else(|_| Err(RouteError::Timeout(timeout).into()))
}

/// A failed INSERT: the primary went away or stopped taking writes (read_only, a demoted or
/// fenced node) is the unavailability the router answers 503 for, not our fault (500).
fn write_refused(router: &Router, writer: &Node, error: mysql_async::Error) -> AppError {
    /// ER_OPTION_PREVENTS_STATEMENT: the node runs with read_only.
    const READ_ONLY: u16 = 1290;
    match &error {
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => {
            router.mark_unreachable(writer);
            tracing::warn!(node = %writer.name, %error, "the primary failed a write");
            RouteError::NoPrimary.into()
        }
        mysql_async::Error::Server(server) if server.code == READ_ONLY => {
            router.mark_unreachable(writer);
            tracing::warn!(node = %writer.name, %error, "the primary no longer takes writes");
            RouteError::NoPrimary.into()
        }
        _ => error.into(),
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

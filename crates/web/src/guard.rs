//! Path safety before anything touches the file system or the app: no `..` or `.` segments
//! (raw or percent-encoded), no encoded slashes or backslashes, no NUL, valid UTF-8 only.
//! `ServeDir` also refuses to leave its root; this is the second, explicit wall.

use http::Uri;

/// `Err(reason)` when the path must be refused with 400.
pub fn check_path(uri: &Uri) -> Result<(), &'static str> {
    let raw = uri.path();
    if !raw.starts_with('/') {
        return Err("path does not start with /");
    }
    if raw.contains('\\') {
        return Err("backslash in path");
    }
    for segment in raw.split('/') {
        let decoded = decode(segment)?;
        if decoded == "." || decoded == ".." {
            return Err("dot segment in path");
        }
        if decoded.contains(['/', '\\', '\0']) {
            return Err("encoded slash, backslash or NUL in path");
        }
    }
    Ok(())
}

/// Strict percent-decoding: a malformed escape or non-UTF-8 result is an error.
fn decode(segment: &str) -> Result<String, &'static str> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or("truncated percent escape")?;
            let text = std::str::from_utf8(hex).map_err(|_| "invalid percent escape")?;
            out.push(u8::from_str_radix(text, 16).map_err(|_| "invalid percent escape")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "path is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::check_path;

    fn ok(path: &str) -> bool {
        check_path(&path.parse().unwrap()).is_ok()
    }

    #[test]
    fn ordinary_paths_pass() {
        for path in [
            "/",
            "/static/style.css",
            "/api/whoami?x=1",
            "/static/a%20b.txt",
            "/a..b/c",
            "/%C3%A9t%C3%A9",
        ] {
            assert!(ok(path), "{path}");
        }
    }

    #[test]
    fn traversal_attempts_are_refused() {
        for path in [
            "/static/../Cargo.toml",
            "/static/%2e%2e/Cargo.toml",
            "/static/%2E%2E/%2E%2E/etc/passwd",
            "/static/.%2e/x",
            "/static/..%2fCargo.toml",
            "/static/..%2FCargo.toml",
            "/static/..%5cCargo.toml",
            "/static/%00",
            "/static/a%00.css",
            "/static/./style.css",
            "/static/%ff",
            "/static/%zz",
            "/static/%2",
        ] {
            assert!(!ok(path), "{path} must be refused");
        }
    }
}

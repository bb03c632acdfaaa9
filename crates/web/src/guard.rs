//! Path safety before anything touches the file system or the app: no `..` or `.` segments
//! (raw or percent-encoded), no encoded slashes or backslashes, no NUL, valid UTF-8 only.
//! Paths are joined below the static root only after this check.

/// `Err(reason)` when the path (the request target without its query) must be refused with
/// 400.
pub fn check_path(raw: &str) -> Result<(), &'static str> {
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

/// Percent-decoding (the `percent-encoding` crate), strictly: a malformed escape (`%2`, `%zz`)
/// is refused, as nginx does, rather than kept as text; a result that is not UTF-8 too.
fn decode(segment: &str) -> Result<std::borrow::Cow<'_, str>, &'static str> {
    let bytes = segment.as_bytes();
    if !bytes.contains(&b'%') {
        // Nothing to decode, and already UTF-8 (a `str`): most paths.
        return Ok(std::borrow::Cow::Borrowed(segment));
    }
    let well_formed = bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return Err("malformed percent escape");
    }
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| "path is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::check_path;

    fn ok(path: &str) -> bool {
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        check_path(path).is_ok()
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

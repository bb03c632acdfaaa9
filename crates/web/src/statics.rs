//! Static files from the site's `static/` folder, kept like nginx's `open_file_cache`: each
//! file's descriptor, metadata and response headers are kept per version (a `stat`, at most once
//! per `web.file_check_interval` and file, notices a new version: another inode, size or mtime),
//! small files' bytes in memory, large ones sent with `sendfile(2)` from the kept descriptor. Validators and conditions follow
//! RFC 9110: strong ETag, Last-Modified, If-Match / If-Unmodified-Since (412), If-None-Match /
//! If-Modified-Since (304), one byte range (206, 416 when unsatisfiable), several ranges as
//! `multipart/byteranges` (overlapping ones coalesced, at most 16), If-Range (a validator that no longer matches
//! gets the whole file), and precompressed `.br` / `.gz` siblings for clients that accept them.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use webstack_http1::coarse::CoarseInstant;

/// Files up to this size are kept in memory and written with their head in one call; larger
/// ones are sent from the file with `sendfile`.
const IN_MEMORY_MAX: u64 = 64 * 1024;
/// Versions kept at most (nginx's `open_file_cache max=`); when full, the cache starts over.
/// Only large files keep a descriptor.
pub const CACHE_MAX: usize = 1024;

/// Which file path a request path maps to, when it is a static file: `/static/x` -> `/x`, and
/// the two root files browsers and crawlers ask for.
pub fn static_path(path: &str) -> Option<&str> {
    match path {
        "/favicon.ico" | "/robots.txt" => Some(path),
        _ => path
            .strip_prefix("/static")
            .filter(|rest| rest.starts_with('/')),
    }
}

/// How a file's content is encoded on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Brotli,
}

impl Coding {
    fn suffix(self) -> &'static str {
        match self {
            Coding::Identity => "",
            Coding::Gzip => ".gz",
            Coding::Brotli => ".br",
        }
    }
}

/// What identifies one version of a file on disk: a file replaced by a rename has another
/// inode, one rewritten in place another ctime (even when its mtime was kept, `cp -p`). Seen
/// through a kept descriptor (`fstat`), a file replaced or deleted has lost its name: no links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    links: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            links: meta.nlink(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }
}

/// One version of one file, open, with its response headers made once.
pub struct Version {
    stamp: Stamp,
    /// Open for `sendfile`: a large file (a small one is in `bytes`, its descriptor closed).
    pub file: Option<File>,
    pub len: u64,
    /// The whole content, for a small file.
    pub bytes: Option<Bytes>,
    /// Quoted, strong.
    pub etag: String,
    /// Whole seconds since the epoch (what `Last-Modified` can say).
    pub modified: u64,
    /// `Content-Type`, `ETag`, `Last-Modified`, `Cache-Control`, `Vary`, `Accept-Ranges` and
    /// `Content-Encoding` lines, ready to write.
    pub headers: Vec<u8>,
    /// `ETag`, `Last-Modified`, `Cache-Control` and `Vary` lines: what a 304 repeats.
    pub validators: Vec<u8>,
    /// For the parts of a multipart answer.
    pub content_type: &'static str,
    /// Bytes of `headers` its `Content-Type` line takes (first): a multipart answer has its own.
    pub content_type_line: usize,
}

pub struct Statics {
    root: PathBuf,
    cache_control: String,
    /// How long what is kept of a file is trusted without a `stat` (nginx's
    /// `open_file_cache_valid`): a `stat` per request was 11% of the web role's CPU for a small
    /// file (a path walk in the kernel). Zero: checked at every request.
    check_interval: Duration,
    files: Mutex<Cache>,
}

/// What is kept, by path below the root, one map per coding (a request for `/a.css.gz` itself
/// is the identity of that name, never the gzip variant of `/a.css`).
#[derive(Default)]
struct Cache {
    maps: [HashMap<String, Kept>; 3],
    /// Entries with a version: what `CACHE_MAX` bounds (only they hold bytes or a descriptor);
    /// a site without precompressed files keeps two markers per file besides.
    versions: usize,
}

impl Cache {
    fn insert(&mut self, slot: usize, relative: &str, kept: Kept) {
        let entries: usize = self.maps.iter().map(HashMap::len).sum();
        if self.versions >= CACHE_MAX || entries >= 3 * CACHE_MAX {
            self.maps.iter_mut().for_each(HashMap::clear);
            self.versions = 0;
        }
        self.versions += usize::from(kept.version.is_some());
        if let Some(old) = self.maps[slot].insert(relative.to_string(), kept) {
            self.versions -= usize::from(old.version.is_some());
        }
    }

    fn remove(&mut self, slot: usize, relative: &str) {
        if let Some(old) = self.maps[slot].remove(relative) {
            self.versions -= usize::from(old.version.is_some());
        }
    }
}

/// What is kept of one name in one coding, and when the disk last confirmed it.
struct Kept {
    /// None: no such variant next to a file that exists (a precompressed sibling that is not
    /// there is checked once per interval too, not at every request of a browser).
    version: Option<Arc<Version>>,
    checked: CoarseInstant,
}

impl Statics {
    pub fn new(root: &Path, cache_control: &str, check_interval: Duration) -> Self {
        Self {
            root: root.to_path_buf(),
            cache_control: cache_control.to_string(),
            check_interval,
            files: Mutex::new(Default::default()),
        }
    }

    /// The current version of `relative` (a decoded path below the root, starting with `/`)
    /// in `coding`: what is kept, checked with a `stat` when it was last checked
    /// `check_interval` ago or more, a new open when the file changed. `None` for a missing
    /// file, a directory, or anything that is not a regular file. Within the interval a small
    /// file replaced or deleted is served as it was, from memory, whole and with its own
    /// validators; a large one is checked with an `fstat` of its kept descriptor (no path walk),
    /// which sees it written in place (its descriptor would send the new bytes under the old
    /// validators) or replaced and deleted (the old inode has no link left). A missing name is
    /// looked for at every request (no entry is kept for it: requests for random names cannot
    /// push the site's files out).
    pub fn open(&self, relative: &str, coding: Coding) -> Option<Arc<Version>> {
        let slot = coding as usize;
        if !self.check_interval.is_zero() {
            let recent = self.lock().maps[slot]
                .get(relative)
                .filter(|kept| kept.checked.elapsed() < self.check_interval)
                .map(|kept| kept.version.clone());
            match recent {
                Some(None) => return None,
                Some(Some(version)) => match &version.file {
                    None => return Some(version),
                    Some(file) => {
                        let same = file
                            .metadata()
                            .is_ok_and(|m| Stamp::of(&m) == version.stamp);
                        if same {
                            return Some(version);
                        }
                    }
                },
                None => {}
            }
        }
        let mut path = self.root.join(relative.trim_start_matches('/'));
        if coding != Coding::Identity {
            path.as_mut_os_string().push(coding.suffix());
        }
        let checked = CoarseInstant::now();
        let meta = match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => meta,
            _ => {
                let mut files = self.lock();
                if coding == Coding::Identity {
                    // Gone (or never a file): its descriptor is closed now, not when evicted.
                    files.remove(slot, relative);
                } else {
                    // Asked only next to a file that exists (`identity` first).
                    let kept = Kept {
                        version: None,
                        checked,
                    };
                    files.insert(slot, relative, kept);
                }
                return None;
            }
        };
        let stamp = Stamp::of(&meta);
        if let Some(kept) = self.lock().maps[slot].get_mut(relative)
            && let Some(version) = &kept.version
            && version.stamp == stamp
        {
            kept.checked = checked;
            return Some(version.clone());
        }
        let version = Arc::new(self.load(&path, relative, coding)?);
        let kept = Kept {
            version: Some(version.clone()),
            checked,
        };
        self.lock().insert(slot, relative, kept);
        Some(version)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens `path` and makes its headers; the stamp is taken from the open file, so what is
    /// kept describes exactly what will be sent.
    fn load(&self, path: &Path, relative: &str, coding: Coding) -> Option<Version> {
        let mut file = File::open(path).ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() {
            return None;
        }
        let stamp = Stamp::of(&meta);
        let len = meta.len();
        let bytes = if len <= IN_MEMORY_MAX {
            let mut content = Vec::with_capacity(len as usize);
            (&mut file).take(len).read_to_end(&mut content).ok()?;
            if content.len() as u64 != len {
                return None;
            }
            Some(Bytes::from(content))
        } else {
            None
        };
        // RFC 9110 §8.8.2.1: never a Last-Modified later than the answer's Date. A time in the
        // future (written by a clock that was ahead, kept by a deploy tool) becomes this load's
        // time, on the clock `Date` is read from: every later answer's Date is at or after it.
        let loaded = webstack_http1::coarse::system_now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let modified = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
            .min(loaded);
        // nginx's form (mtime and size in hex), with the nanoseconds: two versions written in
        // the same second with the same size still differ.
        let etag = format!(
            "\"{:x}.{:x}-{:x}{}\"",
            stamp.mtime,
            stamp.mtime_nsec,
            len,
            match coding {
                Coding::Identity => "",
                Coding::Gzip => "-gz",
                Coding::Brotli => "-br",
            }
        );
        let last_modified = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(modified));
        let mut validators = Vec::with_capacity(160);
        push_line(&mut validators, "ETag", &etag);
        push_line(&mut validators, "Last-Modified", &last_modified);
        push_line(&mut validators, "Cache-Control", &self.cache_control);
        push_line(&mut validators, "Vary", "Accept-Encoding");
        let content_type = mime_guess::from_path(relative)
            .first_raw()
            .unwrap_or("application/octet-stream");
        let mut headers = Vec::with_capacity(256);
        push_line(&mut headers, "Content-Type", content_type);
        let content_type_line = headers.len();
        headers.extend_from_slice(&validators);
        push_line(&mut headers, "Accept-Ranges", "bytes");
        match coding {
            Coding::Identity => {}
            Coding::Gzip => push_line(&mut headers, "Content-Encoding", "gzip"),
            Coding::Brotli => push_line(&mut headers, "Content-Encoding", "br"),
        }
        Some(Version {
            stamp,
            file: bytes.is_none().then_some(file),
            len,
            bytes,
            etag,
            modified,
            headers,
            validators,
            content_type,
            content_type_line,
        })
    }
}

fn push_line(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The request headers a static answer depends on.
#[derive(Default, Debug)]
pub struct Conditions<'a> {
    /// Every line's list (a repeated field is one list, RFC 9110 §5.3).
    pub if_match: Vec<&'a [u8]>,
    pub if_none_match: Vec<&'a [u8]>,
    pub if_modified_since: Option<&'a [u8]>,
    pub if_unmodified_since: Option<&'a [u8]>,
    pub range: Option<&'a [u8]>,
    pub if_range: Option<&'a [u8]>,
    pub accept_encoding: Option<&'a [u8]>,
}

impl<'a> Conditions<'a> {
    /// Reads them from a request head (`Name: value` lines after the request line; of a
    /// repeated single-value field the last wins, as nginx does).
    pub fn of(head: &'a [u8]) -> Self {
        let mut found = Self::default();
        let Some(first_end) = memchr::memchr(b'\n', head) else {
            return found;
        };
        // Line ends found with SIMD, and only lines whose name starts as one of ours (a, i, r)
        // are looked into: the byte-by-byte split this replaced was 14% of the instructions of
        // a small file's request.
        let mut start = first_end + 1;
        let ends = memchr::memchr_iter(b'\n', &head[start..])
            .map(move |i| i + first_end + 1)
            .chain(std::iter::once(head.len()));
        for end in ends {
            let line = &head[start..end];
            start = end + 1;
            if !matches!(line.first().map(|b| b | 0x20), Some(b'a' | b'i' | b'r')) {
                continue;
            }
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = memchr::memchr(b':', line) else {
                continue;
            };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            let slot = match name.len() {
                5 if name.eq_ignore_ascii_case(b"range") => &mut found.range,
                8 if name.eq_ignore_ascii_case(b"if-match") => {
                    found.if_match.push(value);
                    continue;
                }
                8 if name.eq_ignore_ascii_case(b"if-range") => &mut found.if_range,
                13 if name.eq_ignore_ascii_case(b"if-none-match") => {
                    found.if_none_match.push(value);
                    continue;
                }
                15 if name.eq_ignore_ascii_case(b"accept-encoding") => &mut found.accept_encoding,
                17 if name.eq_ignore_ascii_case(b"if-modified-since") => {
                    &mut found.if_modified_since
                }
                19 if name.eq_ignore_ascii_case(b"if-unmodified-since") => {
                    &mut found.if_unmodified_since
                }
                _ => continue,
            };
            *slot = Some(value);
        }
        found
    }

    /// Whether the client takes `coding` (named with a q-value other than 0, or `*`).
    pub fn accepts(&self, coding: &str) -> bool {
        let Some(list) = self.accept_encoding else {
            return false;
        };
        let mut star = false;
        for item in list.split(|&b| b == b',') {
            let mut parts = item.split(|&b| b == b';');
            let name = parts.next().unwrap_or_default().trim_ascii();
            let refused = parts.any(|p| {
                let p = p.trim_ascii();
                p.len() >= 2
                    && p[..2].eq_ignore_ascii_case(b"q=")
                    && std::str::from_utf8(&p[2..])
                        .ok()
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
            });
            if name.eq_ignore_ascii_case(coding.as_bytes()) {
                return !refused;
            }
            if name == b"*" {
                star = !refused;
            }
        }
        star
    }
}

/// What to answer for a file, given the request's conditions.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// 200, the whole file.
    Whole,
    /// 206, bytes `start..end`.
    Part { start: u64, end: u64 },
    /// 206 `multipart/byteranges`, these ranges (`start..end`, apart).
    Parts(Vec<(u64, u64)>),
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    PreconditionFailed,
    /// 416 Range Not Satisfiable.
    Unsatisfiable,
}

/// RFC 9110 §13.2.2: the preconditions in order (for GET and HEAD, the only methods static
/// files answer), then the range: `ranges` is false for HEAD (§14.2: Range is for GET only).
pub fn decide(version: &Version, conditions: &Conditions<'_>, ranges: bool) -> Decision {
    if !conditions.if_match.is_empty() {
        if !conditions
            .if_match
            .iter()
            .any(|list| etag_listed(list, &version.etag, true))
        {
            return Decision::PreconditionFailed;
        }
    } else if let Some(since) = conditions.if_unmodified_since.and_then(http_date)
        && version.modified > since
    {
        return Decision::PreconditionFailed;
    }
    if !conditions.if_none_match.is_empty() {
        if conditions
            .if_none_match
            .iter()
            .any(|list| etag_listed(list, &version.etag, false))
        {
            return Decision::NotModified;
        }
    } else if let Some(since) = conditions.if_modified_since.and_then(http_date)
        && version.modified <= since
    {
        return Decision::NotModified;
    }
    let Some(range) = conditions.range.filter(|_| ranges) else {
        return Decision::Whole;
    };
    if let Some(validator) = conditions.if_range
        && !if_range_matches(validator, version, SystemTime::now())
    {
        // The client holds another version: a slice of this one would corrupt its copy.
        return Decision::Whole;
    }
    match parse_range(range, version.len) {
        RangeAnswer::Ignore => Decision::Whole,
        RangeAnswer::One(start, end) => Decision::Part { start, end },
        RangeAnswer::Several(ranges) => several(ranges),
        RangeAnswer::Unsatisfiable => Decision::Unsatisfiable,
    }
}

/// At most this many parts in a multipart answer; more get the whole file.
const MAX_PARTS: usize = 16;

/// Several satisfiable ranges (RFC 9110 §14.3, guarding against the many-small-or-overlapping
/// ranges attack): in the order asked when they are apart (§15.3.7.2); when some overlap or
/// touch, coalesced, in ascending order (allowed). One left is a plain 206; more than
/// `MAX_PARTS` get the whole file (allowed: a server may ignore Range).
fn several(ranges: Vec<(u64, u64)>) -> Decision {
    let mut sorted = ranges.clone();
    sorted.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
    for (start, end) in sorted {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let parts = if merged.len() == ranges.len() {
        ranges
    } else {
        merged
    };
    match parts.as_slice() {
        [(start, end)] => Decision::Part {
            start: *start,
            end: *end,
        },
        parts if parts.len() > MAX_PARTS => Decision::Whole,
        _ => Decision::Parts(parts),
    }
}

/// The `multipart/byteranges` body of `ranges` of a file of `len` bytes and `content_type`:
/// each part's head (boundary line, `Content-Type`, `Content-Range`), then the closing
/// boundary. The body is `heads[0]`, range 0, `heads[1]`, range 1, ..., `closing`.
pub struct Multipart {
    pub heads: Vec<Vec<u8>>,
    pub closing: Vec<u8>,
    /// Of the whole body.
    pub length: u64,
}

impl Multipart {
    pub fn new(ranges: &[(u64, u64)], len: u64, content_type: &str, boundary: &str) -> Self {
        let heads: Vec<Vec<u8>> = ranges
            .iter()
            .map(|(start, end)| {
                // Each boundary line after a CRLF, the first one too (as nginx writes it).
                format!(
                    "\r\n--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: bytes {start}-{}/{len}\r\n\r\n",
                    end - 1
                )
                .into_bytes()
            })
            .collect();
        let closing = format!("\r\n--{boundary}--\r\n").into_bytes();
        let length = heads.iter().map(|h| h.len() as u64).sum::<u64>()
            + ranges.iter().map(|(s, e)| e - s).sum::<u64>()
            + closing.len() as u64;
        Self {
            heads,
            closing,
            length,
        }
    }
}

/// `If-Range`: an entity tag compared strongly, or a date equal to Last-Modified when that is
/// a strong validator (RFC 9110 §8.8.2.2: the file is at least a second older than `now`, so no
/// other version can have had the same date).
fn if_range_matches(validator: &[u8], version: &Version, now: SystemTime) -> bool {
    if validator.starts_with(b"\"") || validator.starts_with(b"W/") {
        validator == version.etag.as_bytes()
    } else {
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        http_date(validator) == Some(version.modified) && now > version.modified
    }
}

/// Whether `etag` is in the list (`*` matches any); `strong` comparison refuses weak tags.
fn etag_listed(list: &[u8], etag: &str, strong: bool) -> bool {
    let list = list.trim_ascii();
    if list == b"*" {
        return true;
    }
    let ours = etag.as_bytes();
    list.split(|&b| b == b',').any(|tag| {
        let tag = tag.trim_ascii();
        match tag.strip_prefix(b"W/") {
            Some(weak) => !strong && weak == ours,
            None => tag == ours,
        }
    })
}

fn http_date(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let time: SystemTime = httpdate::parse_http_date(text).ok()?;
    time.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

#[derive(Debug, PartialEq, Eq)]
enum RangeAnswer {
    /// Not a byte range we understand: the whole file, as if none was asked.
    Ignore,
    One(u64, u64),
    /// More than one satisfiable range, as asked.
    Several(Vec<(u64, u64)>),
    Unsatisfiable,
}

/// `bytes=a-b, c-, -n` against a file of `len` bytes.
fn parse_range(value: &[u8], len: u64) -> RangeAnswer {
    let Some(spec) = value
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case(b"bytes="))
        .map(|_| &value[6..])
    else {
        return RangeAnswer::Ignore;
    };
    let mut satisfiable = Vec::new();
    let mut any = false;
    for part in spec.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() {
            continue;
        }
        any = true;
        let Some(dash) = part.iter().position(|&b| b == b'-') else {
            return RangeAnswer::Ignore;
        };
        let number = |digits: &[u8]| -> Option<u64> {
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(digits).ok()?.parse().ok()
        };
        let (first, last) = (&part[..dash], &part[dash + 1..]);
        let range = if first.is_empty() {
            // The last n bytes.
            let Some(n) = number(last) else {
                return RangeAnswer::Ignore;
            };
            (n > 0 && len > 0).then(|| (len.saturating_sub(n), len))
        } else {
            let Some(start) = number(first) else {
                return RangeAnswer::Ignore;
            };
            let end = if last.is_empty() {
                len
            } else {
                match number(last) {
                    Some(end) if end >= start => end.saturating_add(1).min(len),
                    _ => return RangeAnswer::Ignore,
                }
            };
            (start < len).then_some((start, end))
        };
        if let Some(range) = range {
            satisfiable.push(range);
        }
    }
    match satisfiable.as_slice() {
        _ if !any => RangeAnswer::Ignore,
        [] => RangeAnswer::Unsatisfiable,
        [(start, end)] => RangeAnswer::One(*start, *end),
        _ => RangeAnswer::Several(satisfiable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_static_paths() {
        assert_eq!(static_path("/static/style.css"), Some("/style.css"));
        assert_eq!(static_path("/favicon.ico"), Some("/favicon.ico"));
        assert_eq!(static_path("/robots.txt"), Some("/robots.txt"));
        assert_eq!(static_path("/staticx/a"), None);
        assert_eq!(static_path("/static"), None);
        assert_eq!(static_path("/"), None);
        assert_eq!(static_path("/api/whoami"), None);
    }

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        assert_eq!(parse_range(b"bytes=0-9", 100), One(0, 10));
        assert_eq!(parse_range(b"bytes=90-", 100), One(90, 100));
        assert_eq!(parse_range(b"bytes=-5", 100), One(95, 100));
        assert_eq!(parse_range(b"bytes=-500", 100), One(0, 100));
        assert_eq!(parse_range(b"bytes=50-500", 100), One(50, 100));
        assert_eq!(
            parse_range(b"bytes=0-1,5-6", 100),
            Several(vec![(0, 2), (5, 7)])
        );
        assert_eq!(parse_range(b"bytes=0-1, 500-600", 100), One(0, 2));
        assert_eq!(parse_range(b"bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=0-0", 0), Unsatisfiable);
        for ignored in [
            &b"items=0-1"[..],
            b"bytes=5-1",
            b"bytes=a-b",
            b"bytes=",
            b"bytes=1",
        ] {
            assert_eq!(parse_range(ignored, 100), Ignore, "{ignored:?}");
        }
    }

    fn version(etag: &str, modified: u64, len: u64) -> Version {
        Version {
            stamp: Stamp {
                dev: 0,
                ino: 0,
                links: 1,
                len,
                mtime: 0,
                mtime_nsec: 0,
                ctime: 0,
                ctime_nsec: 0,
            },
            file: None,
            len,
            bytes: None,
            etag: etag.into(),
            modified,
            headers: Vec::new(),
            validators: Vec::new(),
            content_type: "text/plain",
            content_type_line: 0,
        }
    }

    #[test]
    fn preconditions_in_rfc_order() {
        let v = version("\"a\"", 1_000_000_000, 100);
        let date = |secs: u64| -> &'static str {
            httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs)).leak()
        };
        let (earlier, same) = (date(999_999_999), date(1_000_000_000));
        let c = |f: &dyn Fn(&mut Conditions<'static>)| {
            let mut c = Conditions::default();
            f(&mut c);
            decide(&v, &c, true)
        };
        assert_eq!(c(&|_| {}), Decision::Whole);
        assert_eq!(
            c(&|c| c.if_none_match = vec![&b"\"b\", \"a\""[..]]),
            Decision::NotModified
        );
        assert_eq!(
            c(&|c| c.if_none_match = vec![&b"W/\"a\""[..]]),
            Decision::NotModified
        );
        assert_eq!(
            c(&|c| c.if_none_match = vec![&b"\"b\""[..]]),
            Decision::Whole
        );
        assert_eq!(
            c(&|c| c.if_modified_since = Some(same.as_bytes())),
            Decision::NotModified
        );
        assert_eq!(
            c(&|c| c.if_modified_since = Some(earlier.as_bytes())),
            Decision::Whole
        );
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            c(&|c| {
                c.if_none_match = vec![&b"\"b\""[..]];
                c.if_modified_since = Some(same.as_bytes());
            }),
            Decision::Whole
        );
        assert_eq!(
            c(&|c| c.if_match = vec![&b"\"b\""[..]]),
            Decision::PreconditionFailed
        );
        assert_eq!(
            c(&|c| c.if_match = vec![&b"W/\"a\""[..]]),
            Decision::PreconditionFailed
        );
        assert_eq!(c(&|c| c.if_match = vec![&b"*"[..]]), Decision::Whole);
        assert_eq!(
            c(&|c| c.if_unmodified_since = Some(earlier.as_bytes())),
            Decision::PreconditionFailed
        );
        // If-Range: the same version gets the part, another version the whole file.
        let part = Decision::Part { start: 0, end: 10 };
        assert_eq!(c(&|c| c.range = Some(b"bytes=0-9")), part);
        assert_eq!(
            c(&|c| {
                c.range = Some(b"bytes=0-9");
                c.if_range = Some(b"\"a\"");
            }),
            part
        );
        assert_eq!(
            c(&|c| {
                c.range = Some(b"bytes=0-9");
                c.if_range = Some(b"\"old\"");
            }),
            Decision::Whole
        );
        assert_eq!(
            c(&|c| {
                c.range = Some(b"bytes=0-9");
                c.if_range = Some(earlier.as_bytes());
            }),
            Decision::Whole
        );
        assert_eq!(
            c(&|c| {
                c.range = Some(b"bytes=0-9");
                c.if_range = Some(same.as_bytes());
            }),
            part
        );
        assert_eq!(
            c(&|c| c.range = Some(b"bytes=0-1,5-6")),
            Decision::Parts(vec![(0, 2), (5, 7)])
        );
        assert_eq!(
            c(&|c| c.range = Some(b"bytes=200-")),
            Decision::Unsatisfiable
        );
    }

    #[test]
    fn several_ranges_sorted_coalesced_and_bounded() {
        // Apart: in the order asked. Overlapping or touching: coalesced, ascending.
        assert_eq!(
            several(vec![(50, 60), (0, 10)]),
            Decision::Parts(vec![(50, 60), (0, 10)])
        );
        assert_eq!(
            several(vec![(50, 60), (0, 10), (5, 20), (20, 30)]),
            Decision::Parts(vec![(0, 30), (50, 60)])
        );
        assert_eq!(
            several(vec![(0, 10), (5, 20)]),
            Decision::Part { start: 0, end: 20 }
        );
        // The many-small-ranges attack: the whole file.
        let many: Vec<(u64, u64)> = (0..17).map(|i| (i * 4, i * 4 + 1)).collect();
        assert_eq!(several(many.clone()), Decision::Whole);
        assert_eq!(
            several(many[..16].to_vec()),
            Decision::Parts(many[..16].to_vec())
        );
    }

    #[test]
    fn multipart_layout_like_nginx() {
        let body = Multipart::new(&[(0, 2), (5, 7)], 10, "text/css", "B");
        let content = b"0123456789";
        let mut whole = Vec::new();
        for (head, (start, end)) in body.heads.iter().zip([(0, 2), (5, 7)]) {
            whole.extend_from_slice(head);
            whole.extend_from_slice(&content[start..end]);
        }
        whole.extend_from_slice(&body.closing);
        assert_eq!(
            String::from_utf8(whole.clone()).unwrap(),
            "\r\n--B\r\nContent-Type: text/css\r\nContent-Range: bytes 0-1/10\r\n\r\n01\
             \r\n--B\r\nContent-Type: text/css\r\nContent-Range: bytes 5-6/10\r\n\r\n56\
             \r\n--B--\r\n"
        );
        assert_eq!(body.length, whole.len() as u64);
    }

    #[test]
    fn request_conditions_and_encodings() {
        let head = b"GET /static/a.css HTTP/1.1\r\nHost: x\r\nrange: bytes=1-2\r\nIf-None-Match: \"x\"\r\nAccept-Encoding: gzip;q=0, br\r\n";
        let c = Conditions::of(head);
        assert_eq!(c.range, Some(&b"bytes=1-2"[..]));
        assert_eq!(c.if_none_match, vec![&b"\"x\""[..]]);
        assert!(c.accepts("br"));
        assert!(!c.accepts("gzip"));
        let c = Conditions::of(b"GET / HTTP/1.1\r\nAccept-Encoding: *\r\n");
        assert!(c.accepts("gzip"));
        let c = Conditions::of(b"GET / HTTP/1.1\r\nAccept-Encoding: GZIP , deflate\r\n");
        assert!(c.accepts("gzip") && !c.accepts("br"));
        assert!(!Conditions::of(b"GET / HTTP/1.1\r\n").accepts("gzip"));
    }

    #[test]
    fn conditions_are_found_in_every_shape_of_head() {
        // What the scan that skips to line ends must find: the fields byte by byte.
        fn by_bytes(head: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
            let mut out = Vec::new();
            for line in head.split(|&b| b == b'\n').skip(1) {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if let Some(colon) = line.iter().position(|&b| b == b':') {
                    let name = line[..colon].to_ascii_lowercase();
                    let ours = [
                        &b"range"[..],
                        b"if-match",
                        b"if-range",
                        b"if-none-match",
                        b"accept-encoding",
                        b"if-modified-since",
                        b"if-unmodified-since",
                    ];
                    if ours.contains(&&name[..]) {
                        out.push((name, line[colon + 1..].trim_ascii().to_vec()));
                    }
                }
            }
            out
        }
        fn found(c: &Conditions) -> Vec<(Vec<u8>, Vec<u8>)> {
            let mut out = Vec::new();
            let mut one = |name: &[u8], value: Option<&[u8]>| {
                if let Some(v) = value {
                    out.push((name.to_vec(), v.to_vec()));
                }
            };
            one(b"range", c.range);
            one(b"if-range", c.if_range);
            one(b"accept-encoding", c.accept_encoding);
            one(b"if-modified-since", c.if_modified_since);
            one(b"if-unmodified-since", c.if_unmodified_since);
            for v in &c.if_match {
                out.push((b"if-match".to_vec(), v.to_vec()));
            }
            for v in &c.if_none_match {
                out.push((b"if-none-match".to_vec(), v.to_vec()));
            }
            out.sort();
            out
        }
        let heads: [&[u8]; 7] = [
            b"GET / HTTP/1.1\r\nHost: a\r\nRANGE: bytes=0-1\r\nIf-Match: \"x\"\r\nif-match: \"y\"\r\n\r\n",
            b"GET / HTTP/1.1\nAccept-Encoding: gzip\nIf-None-Match: *\nx-range: no\n",
            b"GET / HTTP/1.1\r\nIf-Range: \"e\"\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT",
            b"GET / HTTP/1.1\r\nIf-Unmodified-Since:x\r\nauthorization: a:b\r\nreferer: r\r\n",
            b"GET / HTTP/1.1\r\nrange\r\n\r\n\r\nRange: bytes=5-\r\n",
            b"GET / HTTP/1.1",
            b"",
        ];
        for head in heads {
            let mut wanted = by_bytes(head);
            wanted.sort();
            assert_eq!(
                found(&Conditions::of(head)),
                wanted,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn a_new_version_on_disk_is_noticed_and_gets_another_etag() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"one").unwrap();
        let statics = Statics::new(dir.path(), "no-cache", Duration::ZERO);
        let first = statics.open("/a.txt", Coding::Identity).unwrap();
        assert_eq!(first.bytes.as_deref(), Some(&b"one"[..]));
        let again = statics.open("/a.txt", Coding::Identity).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "kept while unchanged");
        // Same size, replaced by a rename (a new inode), as deploy tools do.
        std::fs::write(dir.path().join("a.tmp"), b"two").unwrap();
        // mtime ticks are coarse (a few ms): set it, as a deploy tool keeping times would.
        File::options()
            .write(true)
            .open(dir.path().join("a.tmp"))
            .unwrap()
            .set_modified(UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
        std::fs::rename(dir.path().join("a.tmp"), dir.path().join("a.txt")).unwrap();
        let second = statics.open("/a.txt", Coding::Identity).unwrap();
        assert_eq!(second.bytes.as_deref(), Some(&b"two"[..]));
        assert_ne!(first.etag, second.etag);
        assert!(statics.open("/a.txt", Coding::Gzip).is_none());
        assert!(statics.open("/", Coding::Identity).is_none(), "a directory");
        assert!(statics.open("/missing", Coding::Identity).is_none());
    }

    #[test]
    fn a_modification_time_in_the_future_is_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ahead.txt");
        std::fs::write(&file, b"from a clock a day ahead").unwrap();
        let day_ahead = SystemTime::now() + Duration::from_secs(86_400);
        File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(day_ahead)
            .unwrap();
        let statics = Statics::new(dir.path(), "no-cache", Duration::ZERO);
        let version = statics.open("/ahead.txt", Coding::Identity).unwrap();
        // Not after the Date of an answer made now, nor of any later one.
        let date =
            httpdate::parse_http_date(std::str::from_utf8(&webstack_http1::date::now()).unwrap())
                .unwrap();
        let date = date.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(version.modified <= date, "{} > {date}", version.modified);
        assert!(
            version.modified + 60 > date,
            "the load's time, not the epoch"
        );
        let head = String::from_utf8_lossy(&version.validators);
        let sent = head
            .lines()
            .find_map(|l| l.strip_prefix("Last-Modified: "))
            .unwrap();
        let sent = httpdate::parse_http_date(sent).unwrap();
        assert_eq!(sent, UNIX_EPOCH + Duration::from_secs(version.modified));
        // The conditions compare against what was sent: its own date is not modified since.
        let same = httpdate::fmt_http_date(sent);
        let conditions = Conditions {
            if_modified_since: Some(same.as_bytes()),
            ..Default::default()
        };
        assert_eq!(decide(&version, &conditions, true), Decision::NotModified);
        // A past time is sent as it is.
        File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
        let past = statics.open("/ahead.txt", Coding::Identity).unwrap();
        assert_eq!(past.modified, 1_000_000);
    }

    #[test]
    fn within_the_check_interval_what_is_kept_is_served_without_looking() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.txt");
        std::fs::write(&file, b"one").unwrap();
        // Long enough never to end during the test: no timing in it.
        let statics = Statics::new(dir.path(), "no-cache", Duration::from_secs(3600));
        let first = statics.open("/a.txt", Coding::Identity).unwrap();
        assert!(statics.open("/a.txt", Coding::Gzip).is_none());
        std::fs::write(dir.path().join("a.tmp"), b"two").unwrap();
        std::fs::rename(dir.path().join("a.tmp"), &file).unwrap();
        std::fs::write(dir.path().join("a.txt.gz"), b"gz").unwrap();
        let again = statics.open("/a.txt", Coding::Identity).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the kept version, unchecked");
        assert_eq!(again.bytes.as_deref(), Some(&b"one"[..]));
        assert!(
            statics.open("/a.txt", Coding::Gzip).is_none(),
            "a missing variant is remembered too"
        );
        // A name never seen is looked for at once, and nothing is kept for a missing one.
        std::fs::write(dir.path().join("b.txt"), b"b").unwrap();
        assert!(statics.open("/b.txt", Coding::Identity).is_some());
        assert!(statics.open("/missing", Coding::Identity).is_none());
        std::fs::write(dir.path().join("missing"), b"here now").unwrap();
        assert!(statics.open("/missing", Coding::Identity).is_some());

        // A large file written in place (same inode) is noticed within the interval: its kept
        // descriptor would send the new bytes under the old length and validators.
        let large = dir.path().join("large.bin");
        std::fs::write(&large, vec![1u8; 100_000]).unwrap();
        let before = statics.open("/large.bin", Coding::Identity).unwrap();
        assert!(before.file.is_some(), "sent from its descriptor");
        let same_inode = File::options().write(true).open(&large).unwrap();
        same_inode.set_len(70_000).unwrap();
        same_inode
            .set_modified(UNIX_EPOCH + Duration::from_secs(2_000_000))
            .unwrap();
        let after = statics.open("/large.bin", Coding::Identity).unwrap();
        assert_eq!((before.len, after.len), (100_000, 70_000));
        assert_ne!(before.etag, after.etag);
        // Replaced by a rename: the kept inode lost its name.
        std::fs::write(dir.path().join("large.tmp"), vec![2u8; 80_000]).unwrap();
        std::fs::rename(dir.path().join("large.tmp"), &large).unwrap();
        let replaced = statics.open("/large.bin", Coding::Identity).unwrap();
        assert_eq!(replaced.len, 80_000);
    }

    #[test]
    fn once_the_check_interval_is_over_the_disk_is_asked_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"one").unwrap();
        let statics = Statics::new(dir.path(), "no-cache", Duration::from_millis(20));
        statics.open("/a.txt", Coding::Identity).unwrap();
        std::fs::write(dir.path().join("a.tmp"), b"two").unwrap();
        std::fs::rename(dir.path().join("a.tmp"), dir.path().join("a.txt")).unwrap();
        // Longer than the interval, however slow the machine: the check is due.
        std::thread::sleep(Duration::from_millis(50));
        let now = statics.open("/a.txt", Coding::Identity).unwrap();
        assert_eq!(now.bytes.as_deref(), Some(&b"two"[..]));
    }

    #[test]
    fn markers_of_missing_variants_do_not_push_files_out() {
        let dir = tempfile::tempdir().unwrap();
        let statics = Statics::new(dir.path(), "no-cache", Duration::from_secs(3600));
        // 600 files asked for by a browser: 600 versions and 1200 markers, under CACHE_MAX
        // versions; before, every entry counted and the cache started over at 1024.
        let files = 600;
        for n in 0..files {
            std::fs::write(dir.path().join(format!("{n}.css")), b"x").unwrap();
        }
        let first = statics.open("/0.css", Coding::Identity).unwrap();
        for n in 0..files {
            let name = format!("/{n}.css");
            statics.open(&name, Coding::Identity).unwrap();
            assert!(statics.open(&name, Coding::Brotli).is_none());
            assert!(statics.open(&name, Coding::Gzip).is_none());
        }
        let again = statics.open("/0.css", Coding::Identity).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "still kept");
        assert_eq!(statics.lock().versions, files);
    }
}

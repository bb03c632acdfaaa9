//! Access logs kept the way nginx keeps them with `access_log ... buffer=64k flush=1s`: each
//! line is formatted straight into the log's buffer (no allocation per field, no tracing event),
//! a buffer is written to the file when 64 KiB have gathered or a second has passed, and the
//! file is opened again on SIGUSR1 (logrotate's `postrotate ... kill -USR1`). One line per
//! request in JSON or in the combined format operators' tools read. Each thread appends to a
//! buffer of its own (as each nginx worker has its own), so the lb's workers never wait for
//! each other to log: lines of one thread are in order, those of different threads
//! interleave a buffer at a time.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use webstack_http1::head::{push_address, push_decimal};

/// Lines gather until this much is buffered, then go to the file at once.
const BUFFER: usize = 64 * 1024;
/// Buffered lines reach the file within this long.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Buffers per log: threads beyond this many share them (a thread's is its number modulo).
const SHARDS: usize = 16;

/// How a line is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line: time, client, method, path, status, bytes, duration, request
    /// id, and the tier's own fields.
    #[default]
    Json,
    /// NCSA combined (Apache's and nginx's `combined`), for tools such as GoAccess.
    Combined,
}

/// Where a role's access log goes and how its lines look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub path: PathBuf,
    pub format: Format,
}

impl Settings {
    /// `<state dir>/logs/<host>-<role>.access.log`, next to the role's own log.
    pub fn for_role(state_dir: &Path, host: &str, role: &str, format: Format) -> Self {
        Self {
            path: state_dir
                .join("logs")
                .join(format!("{host}-{role}.access.log")),
            format,
        }
    }

    /// Opens the file (its folder made if missing).
    pub fn open(&self) -> std::io::Result<AccessLog> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        AccessLog::open(&self.path, self.format).map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!(
                    "cannot open the access log {}: {error}",
                    self.path.display()
                ),
            )
        })
    }
}

/// One request, as its access line tells it.
pub struct Entry<'a> {
    pub client: IpAddr,
    pub method: &'a str,
    /// The request target as the client sent it (path and query).
    pub target: &'a str,
    /// `HTTP/1.0`, `HTTP/1.1`, `HTTP/2.0`.
    pub version: &'a str,
    pub status: u16,
    /// Response body bytes, when known.
    pub bytes: Option<u64>,
    pub duration: Duration,
    pub request_id: &'a [u8],
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    /// The tier's own fields (JSON only): which server, handler, route, database time...
    pub extra: &'a [(&'a str, Value<'a>)],
}

/// A tier's own field value.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    Text(&'a str),
    Number(u64),
    Millis(Duration),
}

/// An access log file, shared by the tasks and threads of one role.
#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    format: Format,
    /// Lines not yet written, one buffer per thread (`shard`); each allocated at its first line.
    shards: Box<[Mutex<Vec<u8>>]>,
    /// The file; writes and reopens take turns under this lock.
    file: Mutex<File>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("path", &self.shared.path)
            .field("format", &self.shared.format)
            .finish()
    }
}

impl AccessLog {
    /// Opens (or creates, mode 0640) `path` for appending, and has it flushed every second.
    pub fn open(path: &Path, format: Format) -> std::io::Result<Self> {
        let file = open_append(path)?;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            format,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            file: Mutex::new(file),
        });
        registry()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&shared));
        start_flusher();
        Ok(Self { shared })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Appends one line; the buffer goes to the file when it is full.
    pub fn log(&self, entry: &Entry<'_>) {
        let shard = shard();
        let full = {
            let mut buf = self.shared.lock_shard(shard);
            if buf.capacity() == 0 {
                buf.reserve(BUFFER + 4096);
            }
            match self.shared.format {
                Format::Json => json_line(&mut buf, entry),
                Format::Combined => combined_line(&mut buf, entry),
            }
            buf.len() >= BUFFER
        };
        if full {
            self.shared.flush_shards(shard..shard + 1);
        }
    }

    /// Writes what is buffered now.
    pub fn flush(&self) {
        self.shared.flush();
    }
}

impl Shared {
    fn lock_shard(&self, shard: usize) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.shards[shard].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes every buffer's lines.
    fn flush(&self) {
        self.flush_shards(0..SHARDS);
    }

    /// Writes the lines of some buffers. The file's lock is taken first and held from taking
    /// the lines to writing them: writes keep each thread's lines in order, and a flush that
    /// returns has everything logged before it in the file (none sits in another thread's
    /// hands). A buffer's lock is held only to take its lines, never while writing.
    fn flush_shards(&self, shards: std::ops::Range<usize>) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        for shard in shards {
            let lines = {
                let mut buf = self.lock_shard(shard);
                if buf.is_empty() {
                    continue;
                }
                std::mem::replace(&mut *buf, Vec::with_capacity(BUFFER + 4096))
            };
            if let Err(error) = file.write_all(&lines) {
                // Said once per failed write, on the role's own log; the lines are lost, as
                // nginx's.
                tracing::warn!(path = %self.path.display(), %error, "cannot write the access log");
            }
        }
    }

    /// Writes what is buffered to the old file, then continues in a file opened by name again.
    fn reopen(&self) -> std::io::Result<()> {
        let fresh = open_append(&self.path)?;
        self.flush();
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

/// This thread's buffer in every log: threads are numbered as they first log.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// Every access log this process has open.
fn registry() -> &'static Mutex<Vec<Weak<Shared>>> {
    static LOGS: OnceLock<Mutex<Vec<Weak<Shared>>>> = OnceLock::new();
    LOGS.get_or_init(Mutex::default)
}

fn each_log(mut f: impl FnMut(&Shared)) {
    let logs: Vec<Arc<Shared>> = {
        let mut list = registry().lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|log| log.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    };
    for log in &logs {
        f(log);
    }
}

/// Writes every access log's buffered lines (at exit).
pub fn flush_all() {
    each_log(Shared::flush);
}

/// Opens every access log again by name (SIGUSR1, after logrotate moved the files).
pub fn reopen_all() {
    each_log(|log| {
        if let Err(error) = log.reopen() {
            tracing::error!(path = %log.path.display(), %error, "cannot reopen the access log");
        } else {
            tracing::info!(path = %log.path.display(), "access log reopened");
        }
    });
}

/// One thread per process writes buffered lines every second (off the request path, and
/// whether or not requests come).
fn start_flusher() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flush_all();
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the access log writer: lines are written when 64 KiB gathered");
        }
    });
}

/// A line's time: the wall clock to the kernel's last tick (nginx's log times come from a
/// clock it reads once per event loop). Durations are measured with `Instant`.
fn line_time() -> SystemTime {
    webstack_http1::coarse::system_now()
}

fn json_line(out: &mut Vec<u8>, e: &Entry<'_>) {
    out.extend_from_slice(b"{\"time\":\"");
    push_iso_time(out, line_time());
    out.extend_from_slice(b"\",\"client\":\"");
    push_address(out, e.client);
    out.extend_from_slice(b"\",\"method\":");
    json_string(out, e.method.as_bytes());
    out.extend_from_slice(b",\"path\":");
    json_string(out, e.target.as_bytes());
    out.extend_from_slice(b",\"status\":");
    push_decimal(out, u64::from(e.status));
    if let Some(bytes) = e.bytes {
        out.extend_from_slice(b",\"bytes\":");
        push_decimal(out, bytes);
    }
    out.extend_from_slice(b",\"duration_ms\":");
    push_millis(out, e.duration);
    out.extend_from_slice(b",\"request_id\":");
    json_string(out, e.request_id);
    if let Some(referer) = e.referer {
        out.extend_from_slice(b",\"referer\":");
        json_string(out, referer);
    }
    if let Some(agent) = e.user_agent {
        out.extend_from_slice(b",\"user_agent\":");
        json_string(out, agent);
    }
    for (name, value) in e.extra {
        out.push(b',');
        json_string(out, name.as_bytes());
        out.push(b':');
        match value {
            Value::Text(text) => json_string(out, text.as_bytes()),
            Value::Number(n) => push_decimal(out, *n),
            Value::Millis(d) => push_millis(out, *d),
        }
    }
    out.extend_from_slice(b"}\n");
}

/// `client - - [time] "METHOD target VERSION" status bytes "referer" "agent"`
fn combined_line(out: &mut Vec<u8>, e: &Entry<'_>) {
    push_address(out, e.client);
    out.extend_from_slice(b" - - [");
    push_clf_time(out, line_time());
    out.extend_from_slice(b"] \"");
    if e.method == "-" {
        // A refused head: nginx's `"-"` for a request line it could not read.
        out.push(b'-');
    } else {
        clf_escaped(out, e.method.as_bytes());
        out.push(b' ');
        clf_escaped(out, e.target.as_bytes());
        out.push(b' ');
        clf_escaped(out, e.version.as_bytes());
    }
    out.extend_from_slice(b"\" ");
    push_decimal(out, u64::from(e.status));
    out.push(b' ');
    match e.bytes {
        Some(bytes) => push_decimal(out, bytes),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" \"");
    clf_escaped(out, e.referer.unwrap_or(b"-"));
    out.extend_from_slice(b"\" \"");
    clf_escaped(out, e.user_agent.unwrap_or(b"-"));
    out.extend_from_slice(b"\"\n");
}

/// Milliseconds with three decimals: `12.345`.
fn push_millis(out: &mut Vec<u8>, d: Duration) {
    let micros = d.as_micros();
    push_decimal(out, (micros / 1000) as u64);
    out.push(b'.');
    push_padded(out, (micros % 1000) as u32, 3);
}

/// `n` in decimal with leading zeros to `width` digits (`n` < 10^width).
fn push_padded(out: &mut Vec<u8>, n: u32, width: u32) {
    let mut unit = 10u32.pow(width - 1);
    while unit > 0 {
        out.push(b'0' + (n / unit % 10) as u8);
        unit /= 10;
    }
}

/// Printable ASCII but `"` and `\`: written as it is, in either format.
fn plain(value: &[u8]) -> bool {
    let mut words = value.chunks_exact(8);
    let mut flagged = 0;
    for word in &mut words {
        flagged |= needs_escape(u64::from_le_bytes(word.try_into().unwrap_or_default()));
    }
    // The rest padded with spaces, which need nothing.
    let mut last = [b' '; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    flagged |= needs_escape(u64::from_le_bytes(last));
    flagged == 0
}

/// Non-zero when one of the eight bytes is a control character, `"`, `\`, DEL or not ASCII
/// (eight at a time, without a branch per byte: a line's values are ~100 bytes). Each test is
/// exact for the word as a whole (a false mark can only follow a true one in a lower byte).
fn needs_escape(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte below `n` (n <= 0x80).
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let zero = |x: u64| below(x, 1);
    below(x, 0x20)
        | zero(x ^ (ONES * u64::from(b'"')))
        | zero(x ^ (ONES * u64::from(b'\\')))
        | zero(x ^ (ONES * 0x7f))
        | (x & HIGH)
}

/// A JSON string: quotes, backslashes and control characters escaped; bytes that are not
/// UTF-8 as U+FFFD.
fn json_string(out: &mut Vec<u8>, value: &[u8]) {
    out.push(b'"');
    if plain(value) {
        out.extend_from_slice(value);
        out.push(b'"');
        return;
    }
    for chunk in value.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0..0x20 | 0x7f => {
                    let _ = write!(out, "\\u{b:04x}");
                }
                _ => out.push(b),
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
    out.push(b'"');
}

/// nginx's escaping in text logs: `"`, `\`, control and non-ASCII bytes as `\xHH`.
fn clf_escaped(out: &mut Vec<u8>, value: &[u8]) {
    if plain(value) {
        out.extend_from_slice(value);
        return;
    }
    for &b in value {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

/// Days since 1970-01-01 as (year, month, day) (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// One second's time in both formats: `2026-11-30T01:23:45.` and `30/Nov/2026:01:23:45 +0000`.
struct SecondText {
    second: u64,
    iso: [u8; 20],
    clf: [u8; 26],
}

impl SecondText {
    fn of(second: u64) -> Self {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let (year, month, day) = civil((second / 86_400) as i64);
        let of_day = second % 86_400;
        let (hour, minute, sec) = (of_day / 3600, of_day / 60 % 60, of_day % 60);
        let mut text = Self {
            second,
            iso: [b' '; 20],
            clf: [b' '; 26],
        };
        let iso = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{sec:02}.");
        let clf = format!(
            "{day:02}/{}/{year:04}:{hour:02}:{minute:02}:{sec:02} +0000",
            MONTHS[(month - 1) as usize]
        );
        // Years past 9999 would not fit: cut (a clock that far off is wrong anyway).
        let n = iso.len().min(20);
        text.iso[..n].copy_from_slice(&iso.as_bytes()[..n]);
        let n = clf.len().min(26);
        text.clf[..n].copy_from_slice(&clf.as_bytes()[..n]);
        text
    }
}

/// Runs `f` on this second's text, formatted at most once a second per thread (nginx keeps
/// its log times the same way).
fn with_second<R>(second: u64, f: impl FnOnce(&SecondText) -> R) -> R {
    thread_local! {
        static SECOND: std::cell::RefCell<SecondText> = std::cell::RefCell::new(SecondText::of(0));
    }
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.second != second {
            *cached = SecondText::of(second);
        }
        f(&cached)
    })
}

/// `2026-11-30T01:23:45.678Z`
fn push_iso_time(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    with_second(since.as_secs(), |text| out.extend_from_slice(&text.iso));
    push_padded(out, since.subsec_millis(), 3);
    out.push(b'Z');
}

/// `30/Nov/2026:01:23:45 +0000`
fn push_clf_time(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    with_second(since.as_secs(), |text| out.extend_from_slice(&text.clf));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(extra: &'a [(&'a str, Value<'a>)]) -> Entry<'a> {
        Entry {
            client: "192.0.2.7".parse().unwrap(),
            method: "GET",
            target: "/a\"b?c=\u{e9}",
            version: "HTTP/1.1",
            status: 200,
            bytes: Some(1234),
            duration: Duration::from_micros(1_500),
            request_id: b"abc",
            referer: None,
            user_agent: Some(b"curl/8 \"x\"\n\xff"),
            extra,
        }
    }

    #[test]
    fn json_lines_parse_and_keep_every_field() {
        let mut out = Vec::new();
        json_line(
            &mut out,
            &entry(&[
                ("server", Value::Text("web-01")),
                ("attempts", Value::Number(2)),
            ]),
        );
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["client"], "192.0.2.7");
        assert_eq!(v["path"], "/a\"b?c=\u{e9}");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 1234);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["user_agent"], "curl/8 \"x\"\n\u{fffd}");
        assert_eq!(v["server"], "web-01");
        assert_eq!(v["attempts"], 2);
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn combined_lines_escape_like_nginx() {
        let mut out = Vec::new();
        combined_line(&mut out, &entry(&[]));
        let line = String::from_utf8(out).unwrap();
        let (start, rest) = line.split_once(" [").unwrap();
        assert_eq!(start, "192.0.2.7 - -");
        let (_, rest) = rest.split_once("] ").unwrap();
        assert_eq!(
            rest,
            "\"GET /a\\x22b?c=\\xC3\\xA9 HTTP/1.1\" 200 1234 \"-\" \"curl/8 \\x22x\\x22\\x0A\\xFF\"\n"
        );
        // A refused head (no method, target or version): `"-"` as nginx writes it.
        let mut out = Vec::new();
        combined_line(
            &mut out,
            &Entry {
                method: "-",
                target: "-",
                version: "-",
                status: 400,
                ..entry(&[])
            },
        );
        let line = String::from_utf8(out).unwrap();
        assert!(line.contains("] \"-\" 400 1234 "), "{line}");
    }

    #[test]
    fn times() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_001_825_678);
        let mut iso = Vec::new();
        push_iso_time(&mut iso, t);
        assert_eq!(iso, b"2026-11-30T01:23:45.678Z");
        let mut clf = Vec::new();
        push_clf_time(&mut clf, t);
        assert_eq!(clf, b"30/Nov/2026:01:23:45 +0000");
        let mut leap = Vec::new();
        push_iso_time(&mut leap, UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(leap, b"2000-02-29T00:00:00.000Z");
        // The same thread's text of each second, formatted again when the second changes
        // (also backwards: the clock was set back).
        for (millis, iso, clf) in [
            (
                1_796_001_825_999,
                "2026-11-30T01:23:45.999Z",
                "30/Nov/2026:01:23:45 +0000",
            ),
            (
                1_796_001_826_000,
                "2026-11-30T01:23:46.000Z",
                "30/Nov/2026:01:23:46 +0000",
            ),
            (
                1_796_001_826_007,
                "2026-11-30T01:23:46.007Z",
                "30/Nov/2026:01:23:46 +0000",
            ),
            (
                1_796_001_825_050,
                "2026-11-30T01:23:45.050Z",
                "30/Nov/2026:01:23:45 +0000",
            ),
            (
                1_798_761_599_000,
                "2026-12-31T23:59:59.000Z",
                "31/Dec/2026:23:59:59 +0000",
            ),
            (
                1_798_761_600_000,
                "2027-01-01T00:00:00.000Z",
                "01/Jan/2027:00:00:00 +0000",
            ),
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(millis);
            let mut out = Vec::new();
            push_iso_time(&mut out, t);
            assert_eq!(String::from_utf8(out).unwrap(), iso);
            let mut out = Vec::new();
            push_clf_time(&mut out, t);
            assert_eq!(String::from_utf8(out).unwrap(), clf);
        }
    }

    #[test]
    fn numbers_and_plain_text_as_the_formatting_machinery_writes_them() {
        for micros in [
            0,
            7,
            999,
            1_000,
            1_500,
            12_345_678,
            u64::from(u32::MAX) * 1_000,
        ] {
            let mut out = Vec::new();
            push_millis(&mut out, Duration::from_micros(micros));
            let expected = format!("{}.{:03}", micros / 1000, micros % 1000);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
        for address in [
            "0.0.0.0",
            "192.0.2.7",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let mut out = Vec::new();
            push_address(&mut out, address.parse().unwrap());
            assert_eq!(String::from_utf8(out).unwrap(), address);
        }
        // Every byte, alone and at each place of a word and of the padded rest, against the
        // byte-wise rule.
        for b in 0..=255u8 {
            let rule = (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\';
            for len in 1..=17 {
                for at in 0..len {
                    let mut value = vec![b'a'; len];
                    value[at] = b;
                    assert_eq!(plain(&value), rule, "byte {b:#x} at {at} of {len}");
                }
            }
        }
        // Plain text is copied; a byte that needs escaping anywhere in it takes the escaping
        // path.
        for (value, json) in [
            ("/static/style.css?v=1", "\"/static/style.css?v=1\""),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 ~",
                "\"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 ~\"",
            ),
            (
                "0123456789abcdef0123456789abcde\"",
                "\"0123456789abcdef0123456789abcde\\\"\"",
            ),
            (
                "0123456789abcdef0123456789abcdef\\",
                "\"0123456789abcdef0123456789abcdef\\\\\"",
            ),
            ("tab\there", "\"tab\\there\""),
            ("del\u{7f}", "\"del\\u007f\""),
            ("caf\u{e9}", "\"caf\u{e9}\""),
            ("", "\"\""),
        ] {
            let mut out = Vec::new();
            json_string(&mut out, value.as_bytes());
            assert_eq!(String::from_utf8(out).unwrap(), json, "{value:?}");
            let parsed: String = serde_json::from_str(json).unwrap();
            assert_eq!(parsed, value);
        }
    }

    #[test]
    fn lines_reach_the_file_when_flushed_and_after_a_reopen_go_to_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&path, Format::Json).unwrap();
        log.log(&entry(&[]));
        log.flush();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        // logrotate: the file is moved away, then the process is told to reopen.
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.log(&entry(&[]));
        reopen_all();
        log.log(&entry(&[]));
        log.flush();
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap().lines().count(),
            2
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        // A full buffer is written without waiting for the flush.
        for _ in 0..BUFFER / 100 {
            log.log(&entry(&[]));
        }
        assert!(std::fs::read_to_string(&path).unwrap().lines().count() > 1);
    }

    #[test]
    fn threads_log_into_their_own_buffers_and_every_line_arrives_once_in_its_threads_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&path, Format::Json).unwrap();
        // More threads than buffers, and enough lines for full buffers on the way.
        let threads = SHARDS + 4;
        let per_thread = 2 * BUFFER / 150;
        std::thread::scope(|scope| {
            for t in 0..threads {
                let log = &log;
                scope.spawn(move || {
                    for n in 0..per_thread {
                        let id = format!("{t}-{n}");
                        log.log(&Entry {
                            request_id: id.as_bytes(),
                            ..entry(&[])
                        });
                    }
                });
            }
        });
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut next = vec![0; threads];
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let (t, n) = v["request_id"].as_str().unwrap().split_once('-').unwrap();
            let (t, n): (usize, usize) = (t.parse().unwrap(), n.parse().unwrap());
            assert_eq!(n, next[t], "thread {t}'s lines out of order or repeated");
            next[t] += 1;
        }
        assert_eq!(next, vec![per_thread; threads], "lines lost");
    }
}

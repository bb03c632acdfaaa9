//! Test helpers: a temporary topology started with the real `webstack up`, fake backends,
//! servers speaking HTTP by hand (`raw`), a small HTTP client (also raw bytes, for malformed
//! requests) and `assert_eventually!`.
//! Every test picks its own loopback network (127.0.N.0/24), so tests never share a port.

pub mod backend;
pub mod http;
pub mod ledger;
pub mod pebble;
pub mod raw;
pub mod requests;
pub mod topology;
pub mod webdriver;

pub use topology::Topology;

/// Retries a condition until it holds or the timeout passes; a bounded wait instead of a sleep.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $timeout:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + $timeout;
        loop {
            if $cond {
                break;
            }
            if std::time::Instant::now() >= deadline {
                panic!("condition not met within {:?}: {}", $timeout, format!($($msg)+));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }};
}

/// A folder removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("webstack-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Keep logs and state for a look: always those of a failing test (its thread is
        // panicking), all of them with WEBSTACK_KEEP_TEST_DIRS=1.
        if std::thread::panicking() || std::env::var_os("WEBSTACK_KEEP_TEST_DIRS").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The repository's `site/` folder (the code base the roles serve).
pub fn site_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../site")
        .canonicalize()
        .expect("site/ exists")
}

/// True while `pid` is a live process (a zombie awaiting its reaper counts as gone).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

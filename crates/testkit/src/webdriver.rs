//! A real browser for tests: Debian's `chromedriver` driving headless `chromium` over the W3C
//! WebDriver protocol (JSON over HTTP/1.1). Only what tests need: open a page, read elements'
//! attributes and text, take a screenshot.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A chromedriver process with one browser session; both end when dropped.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless chromium session whose
    /// profile lives in `profile` and which reaches nothing outside this machine.
    pub fn start(profile: &Path) -> Browser {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Its own process group: chromium and its helpers go with it (see Drop).
        let driver = Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium-driver)");
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
        };
        crate::assert_eventually!(
            exchange(addr, "GET", "/status", "").is_ok_and(|(status, _)| status == 200),
            Duration::from_secs(30),
            "chromedriver answers on {addr}"
        );
        let capabilities = serde_json::json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--disable-extensions",
                        "--window-size=1280,1400",
                        format!("--user-data-dir={}", profile.display()),
                    ]
                }
            }}
        });
        let answer = browser.call("POST", "/session", Some(capabilities));
        browser.session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_string();
        browser
    }

    /// One WebDriver command. chromedriver keeps connections open whatever the request says,
    /// so the answer is read by its `Content-Length`, not to the end of the stream.
    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, answer) = exchange(self.addr, method, path, &body)
            .unwrap_or_else(|e| panic!("chromedriver {method} {path}: {e}"));
        let json: serde_json::Value = serde_json::from_slice(&answer)
            .unwrap_or_else(|e| panic!("chromedriver {method} {path}: not JSON ({e})"));
        assert!(
            status == 200,
            "chromedriver {method} {path}: {status} {json}"
        );
        json
    }

    fn session_call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(serde_json::json!({ "url": url })));
    }

    /// The value of `script` (a function body: `return ...`) run in the page.
    pub fn eval(&self, script: &str) -> serde_json::Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(serde_json::json!({ "script": script, "args": [] })),
        )["value"]
            .clone()
    }

    /// `attribute` of the first element matching `css`, None when there is no such element
    /// or attribute.
    pub fn attribute(&self, css: &str, attribute: &str) -> Option<String> {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.getAttribute({}) : null;",
            serde_json::Value::from(css),
            serde_json::Value::from(attribute)
        );
        self.eval(&script).as_str().map(str::to_string)
    }

    /// The rendered text of the first element matching `css` (empty when there is none).
    pub fn text(&self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.innerText : '';",
            serde_json::Value::from(css)
        );
        self.eval(&script).as_str().unwrap_or_default().to_string()
    }

    /// A PNG of the window, written to `file`.
    pub fn screenshot(&self, file: &Path) {
        let answer = self.session_call("GET", "/screenshot", None);
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD
            .decode(answer["value"].as_str().expect("a screenshot"))
            .expect("base64 from chromedriver");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        std::fs::write(file, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = exchange(
                self.addr,
                "DELETE",
                &format!("/session/{}", self.session),
                "",
            );
        }
        // Our own child's process group (by its pid): chromedriver and the chromium it started,
        // also when the session could not be closed.
        let group = nix::unistd::Pid::from_raw(self.driver.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

/// Sends one request and reads one response (head, then `Content-Length` bytes): the status
/// and the body. Bounded: a driver that stops answering fails the test in 60 s.
fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, Vec<u8>), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let (head_end, status, length) = loop {
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a response head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("no status")?;
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .ok_or("no Content-Length")?;
        break (end + 4, status, length);
    };
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the end of the body".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((status, buf[head_end..head_end + length].to_vec()))
}

//! The certificates the lb serves: PEM files loaded at start, one picked per handshake by SNI,
//! and reloaded when the files change (polled) or on SIGHUP. A reload swaps the set for new
//! handshakes only: open connections keep the session they negotiated, so nothing is dropped.
//! A file that fails to load keeps the previous certificate in service (logged), never none.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Serialize;

use super::TlsError;
use crate::{CertificateOrigin, CertificateSource};

/// What `webstack status` shows of a certificate.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateInfo {
    /// DNS names from the subject alternative names (the common name when there are none).
    pub names: Vec<String>,
    /// The validity period, seconds since the epoch; `expires` is `not_after` as a UTC date.
    pub not_before: i64,
    pub not_after: i64,
    pub expires: String,
    pub origin: CertificateOrigin,
    pub path: std::path::PathBuf,
}

impl CertificateInfo {
    /// Whole days of validity left (negative once expired).
    pub fn days_left(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        (self.not_after - now).div_euclid(86_400)
    }
}

#[derive(Clone)]
struct Loaded {
    key: Arc<CertifiedKey>,
    info: CertificateInfo,
    stamp: Stamp,
}

/// Modification time and length of the chain and key files: a change to either reloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp([Option<(SystemTime, u64)>; 2]);

impl Stamp {
    fn of(source: &CertificateSource) -> Self {
        let stat = |path: &Path| {
            fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        };
        Self([stat(&source.cert), stat(&source.key)])
    }
}

#[derive(Debug)]
pub struct CertStore {
    sources: Vec<CertificateSource>,
    /// One slot per source, in priority order; None until it loads (an ACME certificate not
    /// issued yet).
    loaded: RwLock<Arc<Vec<Option<Loaded>>>>,
    /// Held while files are rewritten (`replace`), so a reload never sees a new chain with an
    /// old key.
    writing: Mutex<()>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").field("info", &self.info).finish()
    }
}

impl CertStore {
    /// Loads every source. Configured files and the local CA's leaf must load; an ACME
    /// certificate may not exist yet.
    pub fn load(sources: Vec<CertificateSource>) -> Result<Self, TlsError> {
        let mut loaded = Vec::with_capacity(sources.len());
        for source in &sources {
            loaded.push(match load(source) {
                Ok(entry) => Some(entry),
                Err(_) if source.origin == CertificateOrigin::Acme => None,
                Err(error) => return Err(error),
            });
        }
        if loaded.iter().all(Option::is_none) {
            return Err(TlsError::NoCertificate {
                path: sources.first().map(|s| s.cert.clone()).unwrap_or_default(),
            });
        }
        Ok(Self {
            sources,
            loaded: RwLock::new(Arc::new(loaded)),
            writing: Mutex::new(()),
        })
    }

    fn current(&self) -> Arc<Vec<Option<Loaded>>> {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the files that changed since they were loaded (all of them when `force`).
    /// Returns how many certificates were replaced.
    pub fn reload(&self, force: bool) -> usize {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.reload_locked(force)
    }

    /// Rewrites certificate files with `write`, then loads them: no reload in between.
    pub fn replace(&self, write: impl FnOnce() -> Result<(), TlsError>) -> Result<usize, TlsError> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        write()?;
        Ok(self.reload_locked(true))
    }

    fn reload_locked(&self, force: bool) -> usize {
        let current = self.current();
        let mut next = current.as_ref().clone();
        let mut changed = 0;
        for (slot, source) in next.iter_mut().zip(&self.sources) {
            let stamp = Stamp::of(source);
            if !force && slot.as_ref().is_some_and(|l| l.stamp == stamp) {
                continue;
            }
            if slot.is_none() && stamp.0.iter().any(Option::is_none) {
                continue; // not there (yet)
            }
            match load(source) {
                Ok(entry) => {
                    if slot.as_ref().is_some_and(|l| l.key.cert == entry.key.cert) {
                        // Same chain (touched, or a forced reload): nothing to swap.
                        if let Some(l) = slot.as_mut() {
                            l.stamp = entry.stamp;
                        }
                        continue;
                    }
                    tracing::info!(
                        names = %entry.info.names.join(","),
                        expires = %entry.info.expires,
                        path = %source.cert.display(),
                        "certificate loaded"
                    );
                    *slot = Some(entry);
                    changed += 1;
                }
                Err(error) => {
                    // Keep serving the previous certificate; remember the stamp so a broken
                    // file is reported once, not on every poll.
                    tracing::error!(%error, "certificate not reloaded; the previous one stays in service");
                    if let Some(l) = slot.as_mut() {
                        l.stamp = stamp;
                    }
                }
            }
        }
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        changed
    }

    /// True when a loaded certificate covers `host` (a name, not an address).
    pub fn covers(&self, host: &str) -> bool {
        // Under the read lock: on the plain-HTTP request path, no reference count to touch.
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
            .any(|l| covers(&l.info.names, host))
    }

    /// The loaded certificates, in priority order.
    pub fn certificates(&self) -> Vec<CertificateInfo> {
        self.current()
            .iter()
            .flatten()
            .map(|l| l.info.clone())
            .collect()
    }

    /// The loaded certificate of `origin`, if any.
    pub fn certificate(&self, origin: CertificateOrigin) -> Option<CertificateInfo> {
        self.certificates().into_iter().find(|c| c.origin == origin)
    }

    /// Reloads changed files every `interval`, and everything on SIGHUP, until dropped.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let force = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
            };
            if force {
                tracing::info!("SIGHUP: reloading certificates");
            }
            self.reload(force);
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current();
        let mut loaded = current.iter().flatten();
        let first = loaded.clone().next()?;
        let chosen = hello
            .server_name()
            .and_then(|name| loaded.find(|l| covers(&l.info.names, name)))
            .unwrap_or(first);
        Some(chosen.key.clone())
    }
}

/// Exact names, and `*.example.com` for exactly one more label, case-insensitively.
fn covers(names: &[String], host: &str) -> bool {
    names.iter().any(|name| match name.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(parent)),
        None => name.eq_ignore_ascii_case(host),
    })
}

/// Reads a certificate chain and its key as the lb will at start: the chain parses, the key
/// parses and is the leaf's (`webstack check` runs this on configured files).
pub fn check(source: &CertificateSource) -> Result<CertificateInfo, TlsError> {
    load(source).map(|loaded| loaded.info)
}

fn load(source: &CertificateSource) -> Result<Loaded, TlsError> {
    let stamp = Stamp::of(source);
    let read_error = |e: rustls::pki_types::pem::Error| TlsError::Read {
        path: source.cert.clone(),
        source: match e {
            rustls::pki_types::pem::Error::Io(io) => io,
            other => std::io::Error::other(other.to_string()),
        },
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&source.cert)
        .map_err(read_error)?
        .collect::<Result<_, _>>()
        .map_err(read_error)?;
    let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate {
        path: source.cert.clone(),
    })?;
    let info = describe(leaf, source)?;
    let key = PrivateKeyDer::from_pem_file(&source.key).map_err(|e| TlsError::BadKey {
        path: source.key.clone(),
        message: e.to_string(),
    })?;
    let key = CertifiedKey::from_der(chain, key, &super::provider()).map_err(|error| {
        TlsError::KeyMismatch {
            cert: source.cert.clone(),
            key: source.key.clone(),
            source: error,
        }
    })?;
    Ok(Loaded {
        key: Arc::new(key),
        info,
        stamp,
    })
}

/// Names and expiry of a leaf certificate.
pub(crate) fn describe(
    der: &CertificateDer<'_>,
    source: &CertificateSource,
) -> Result<CertificateInfo, TlsError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let bad = |message: String| TlsError::BadCertificate {
        path: source.cert.clone(),
        message,
    };
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(bad(e.to_string())),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let not_after = cert.validity().not_after.timestamp();
    Ok(CertificateInfo {
        names,
        not_before: cert.validity().not_before.timestamp(),
        not_after,
        expires: utc_date(not_after),
        origin: source.origin,
        path: source.cert.clone(),
    })
}

/// `YYYY-MM-DD HH:MM UTC`.
fn utc_date(unix: i64) -> String {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp(unix) else {
        return format!("{unix} (seconds since 1970)");
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_wildcards() {
        let names = ["www.example.test".to_string(), "*.api.example.test".into()];
        assert!(covers(&names, "www.example.test"));
        assert!(covers(&names, "WWW.Example.Test"));
        assert!(covers(&names, "v1.api.example.test"));
        assert!(
            !covers(&names, "api.example.test"),
            "a wildcard needs a label"
        );
        assert!(!covers(&names, "a.v1.api.example.test"), "only one label");
        assert!(!covers(&names, "example.test"));
        assert!(!covers(&names, "127.0.0.10"));
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_date(1_798_761_600 + 3_660), "2027-01-01 01:01 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00 UTC");
    }
}

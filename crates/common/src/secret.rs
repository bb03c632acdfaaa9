//! A value that must never reach a log line or an error message: `Debug` shows
//! `Secret([redacted])`, and the value comes out only through `expose`. And the files secrets
//! live in: random values made once, mode 0600, refused when others can read them.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A password or key held in memory.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that must send it (a login).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// 32 characters from [A-Za-z0-9], from the operating system's random source.
pub fn generate() -> io::Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut value = String::with_capacity(32);
    while value.len() < 32 {
        let mut bytes = [0u8; 64];
        getrandom::fill(&mut bytes).map_err(|error| io::Error::other(error.to_string()))?;
        // Rejection sampling keeps the distribution uniform (248 = 4 * 62).
        value.extend(
            bytes
                .iter()
                .filter(|&&b| b < 248)
                .map(|&b| ALPHABET[usize::from(b % 62)] as char)
                .take(32 - value.len()),
        );
    }
    Ok(value)
}

/// The lb runtime API's token (`webstack lb ...`): made by the supervisor before any role
/// starts, read by every lb and by the CLI.
pub fn control_token_path(state_dir: &Path) -> PathBuf {
    state_dir.join("secrets/lb-control.token")
}

/// Creates the secret file at `path` (random, mode 0600, its folder 0700) unless it exists.
pub fn ensure_file(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    if path.exists() {
        return Ok(());
    }
    // Whole or not at all: a crash midway leaves no empty secret behind.
    crate::files::write_atomic(path, generate()?.as_bytes(), 0o600)
}

/// Reads a secret file, refusing one that others can read.
pub fn read_file(path: &Path) -> io::Result<Secret> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is readable by others (mode {mode:o}); expected 0600",
                path.display()
            ),
        ));
    }
    let value = fs::read_to_string(path)?.trim().to_string();
    if value.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(Secret::from(value))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_secret_file_is_made_once_private_and_refused_when_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("webstack-secret-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("secrets/x.token");
        super::ensure_file(&path).unwrap();
        let first = super::read_file(&path).unwrap();
        assert_eq!(first.expose().len(), 32);
        super::ensure_file(&path).unwrap();
        assert_eq!(super::read_file(&path).unwrap(), first, "kept");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = super::read_file(&path).unwrap_err().to_string();
        assert!(error.contains("readable by others"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn debug_never_shows_the_value() {
        let secret = super::Secret::from("hunter2".to_string());
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(Secret([redacted]))");
        assert_eq!(secret.expose(), "hunter2");
    }
}

//! Generated database passwords, kept in `<state dir>/secrets/<name>.password` with mode 0600,
//! never in the topology file or the logs.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use webstack_common::secret::Secret;

/// The accounts webstack creates on every database node.
pub const ACCOUNTS: [&str; 4] = ["admin", "repl", "app", "monitor"];

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot write secret {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read secret {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret {path} is readable by others (mode {mode:o}); expected 0600")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("no random numbers from the operating system: {0}")]
    Random(String),
}

pub fn secrets_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("secrets")
}

/// Creates any missing password (random, 32 characters); existing ones are kept.
pub fn ensure_all(state_dir: &Path) -> Result<(), SecretError> {
    let dir = secrets_dir(state_dir);
    fs::create_dir_all(&dir).map_err(|source| SecretError::Write {
        path: dir.clone(),
        source,
    })?;
    let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
    for name in ACCOUNTS {
        let path = dir.join(format!("{name}.password"));
        if path.exists() {
            continue;
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| SecretError::Write {
                path: path.clone(),
                source,
            })?;
        file.write_all(generate()?.as_bytes())
            .map_err(|source| SecretError::Write {
                path: path.clone(),
                source,
            })?;
    }
    Ok(())
}

/// Reads one password, refusing a file that others can read.
pub fn read(state_dir: &Path, name: &str) -> Result<Secret, SecretError> {
    let path = secrets_dir(state_dir).join(format!("{name}.password"));
    let meta = fs::metadata(&path).map_err(|source| SecretError::Read {
        path: path.clone(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Permissions { path, mode });
    }
    fs::read_to_string(&path)
        .map(|s| Secret::from(s.trim().to_string()))
        .map_err(|source| SecretError::Read { path, source })
}

/// 32 random characters (`webstack_common::secret::generate`).
fn generate() -> Result<String, SecretError> {
    webstack_common::secret::generate().map_err(|error| SecretError::Random(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_generated_once_private_and_distinct() {
        let dir = std::env::temp_dir().join(format!("webstack-secrets-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        ensure_all(&dir).unwrap();
        let read_all = || -> Vec<String> {
            ACCOUNTS
                .iter()
                .map(|a| read(&dir, a).unwrap().expose().to_string())
                .collect()
        };
        let first = read_all();
        ensure_all(&dir).unwrap();
        let again = read_all();
        assert_eq!(first, again, "kept across starts");
        assert!(
            first
                .iter()
                .all(|p| p.len() == 32 && p.chars().all(|c| c.is_ascii_alphanumeric()))
        );
        assert_ne!(first[0], first[1]);
        let path = secrets_dir(&dir).join("app.password");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read(&dir, "app"),
            Err(SecretError::Permissions { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}

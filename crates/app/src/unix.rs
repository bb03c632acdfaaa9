//! The app's Unix socket (`app.unix_socket`): the web server of the same host proxies through
//! it (nginx's `proxy_pass http://unix:`), sparing both the TCP/IP stack of every request.
//! Only the account that runs webstack may connect (mode 0600), unlike a TCP port that the
//! firewall has to guard.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// A bound socket file, removed when the app stops (if it is still the one it bound).
#[derive(Debug)]
pub struct UnixSocket {
    pub listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the file it bound: a later app's socket is left alone.
    identity: (u64, u64),
}

impl UnixSocket {
    /// Binds `path`, replacing a socket file a stopped app left behind. The caller has bound
    /// the app's TCP port first: no other app of this host is running, so a socket there is
    /// stale. Anything else at the path is an error, not removed.
    pub fn bind(path: &Path) -> io::Result<UnixSocket> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let meta = std::fs::metadata(path)?;
        Ok(UnixSocket {
            listener,
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still the one bound here.
    pub fn remove(&self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.identity);
        if ours && let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove the app's socket");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_replaces_a_stale_socket_refuses_other_files_and_removes_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("web-01-app.sock");
        let first = UnixSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only the owner connects");
        // A stopped app's file (never removed) is replaced; the first one's removal then
        // leaves the new file alone.
        let second = UnixSocket::bind(&path).unwrap();
        first.remove();
        assert!(path.exists(), "the newer socket stays");
        tokio::net::UnixStream::connect(&path).await.unwrap();
        second.remove();
        assert!(!path.exists());

        std::fs::write(&path, b"not a socket").unwrap();
        let error = UnixSocket::bind(&path).unwrap_err();
        assert!(error.to_string().contains("is not a socket"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    }
}

//! The app's Unix socket (`app.unix_socket`): the web server of the same host proxies through
//! it (nginx's `proxy_pass http://unix:`), sparing both the TCP/IP stack of every request. The
//! file is the webstack account's only (mode 0600); the app's TCP port stays open as well.

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
    /// stale. Anything else at the path is an error, not removed. The socket is made under a
    /// private name, set to 0600, then renamed into place (the supervisor's control socket is
    /// made the same way): no moment with the umask's wider mode, and a stale file is replaced
    /// in one step (the web server never finds the name missing).
    pub fn bind(path: &Path) -> io::Result<UnixSocket> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let fresh = private_name(dir);
        let _ = std::fs::remove_file(&fresh);
        let listener = UnixListener::bind(&fresh)?;
        let placed = std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&fresh, path));
        if let Err(error) = placed {
            let _ = std::fs::remove_file(&fresh);
            return Err(error);
        }
        let meta = std::fs::metadata(path)?;
        Ok(UnixSocket {
            listener,
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
        })
    }

    /// The longest path `bind` uses for `path` (the private name may be longer than the
    /// socket's own): what must fit in a socket address.
    pub fn longest_path(path: &Path) -> usize {
        let dir = path.parent().unwrap_or(Path::new("."));
        let private = dir.join(format!(".{}.sock", u32::MAX));
        path.as_os_str().len().max(private.as_os_str().len())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still the one bound here.
    fn remove(&self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.identity);
        if ours && let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove the app's socket");
        }
    }
}

/// Gone with the app (a failed start too); a newer app's socket at the path is left alone.
impl Drop for UnixSocket {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The name a socket is made under before it is renamed into place.
fn private_name(dir: &Path) -> PathBuf {
    dir.join(format!(".{}.sock", std::process::id()))
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
        drop(first);
        assert!(path.exists(), "the newer socket stays");
        tokio::net::UnixStream::connect(&path).await.unwrap();
        drop(second);
        assert!(!path.exists());
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert!(left.is_empty(), "no private name left behind: {left:?}");

        std::fs::write(&path, b"not a socket").unwrap();
        let error = UnixSocket::bind(&path).unwrap_err();
        assert!(error.to_string().contains("is not a socket"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    }
}

//! Writing files that may hold secrets (keys, passwords, configurations naming them).

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `text` to `path` with `mode` (e.g. 0o600), atomically: a temporary file of its own
/// (a unique name in the same folder, with its final mode from the start) is written, synced
/// and renamed over `path`, so no reader ever sees a half-written file or a moment with wider
/// permissions, and two writers in one folder never share a temporary name.
pub fn write_atomic(path: &Path, text: &[u8], mode: u32) -> std::io::Result<()> {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut file = tempfile::Builder::new()
        .prefix(".webstack-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(folder)?;
    file.write_all(text)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|error| error.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_with_the_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        super::write_atomic(&path, b"one", 0o600).unwrap();
        super::write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        super::write_atomic(&dir.path().join("cert.pem"), b"c", 0o644).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("cert.pem"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o644
        );
    }

    #[test]
    fn concurrent_writers_in_one_folder_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let path = dir.path().join(format!("file{i}.key"));
                std::thread::spawn(move || {
                    for n in 0..50 {
                        super::write_atomic(&path, format!("{i}-{n}").as_bytes(), 0o600).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        for i in 0..8 {
            let text = std::fs::read_to_string(dir.path().join(format!("file{i}.key"))).unwrap();
            assert_eq!(text, format!("{i}-49"));
        }
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".webstack-")
            })
            .count();
        assert_eq!(leftovers, 0, "no temporary file left behind");
    }
}

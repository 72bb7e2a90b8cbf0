//! Files only the server's user may read: the data folder holds Secrets, tokens and keys, so
//! folders are created 0700 and files 0600, and what an earlier run (or an older version)
//! left readable to others is tightened at start.

use std::io;
use std::path::Path;

/// Mode of folders under the data folder.
pub const DIR_MODE: u32 = 0o700;
/// Mode of files under the data folder.
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` (and missing parents) with mode 0700; an existing folder open to group or
/// others is narrowed to 0700.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(path)?;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            match std::fs::set_permissions(path, std::fs::Permissions::from_mode(DIR_MODE)) {
                Ok(()) => {}
                // A volume's mount point belongs to the platform (root, group fsGroup), not to
                // this user: what is created inside it is still private.
                Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
                    tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777),
                        "the data folder is not ours to narrow; files inside it stay owner-only");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(path)
    }
}

/// Narrows every folder under `root` (and `root`) to 0700 and every file to 0600 when group
/// or others have any access. Symbolic links are left alone and not followed.
pub fn tighten_tree(root: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::symlink_metadata(root)?;
        let mode = meta.permissions().mode();
        let wanted = if meta.is_dir() {
            DIR_MODE
        } else if meta.is_file() {
            FILE_MODE
        } else {
            return Ok(());
        };
        if mode & 0o077 != 0 {
            tracing::info!(path = %root.display(), mode = format!("{:o}", mode & 0o777), "narrowing access to the owner");
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(wanted))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(root)? {
                tighten_tree(&entry?.path())?;
            }
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = root;
        Ok(())
    }
}

/// Replaces `path` with `bytes`, readable by the owner only, atomically: written to a
/// temporary file beside it, flushed, then renamed over it, so a crash leaves the old or the
/// new content.
pub fn replace_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    write_private(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

/// Writes `bytes` to `path` as a new file readable by the owner only (an existing file's
/// mode is reset too), and flushes it to disk.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_folders_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_private_dir(&nested).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&nested), 0o700);
        let file = nested.join("secret.json");
        std::fs::write(&file, b"old").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&file, b"new").unwrap();
        assert_eq!(mode(&file), 0o600, "an existing file's mode is reset");
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
    }

    #[test]
    fn loose_trees_are_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/f.json"), b"{}").unwrap();
        std::fs::write(root.join("private"), b"x").unwrap();
        for (path, m) in [
            ("", 0o755),
            ("sub", 0o777),
            ("sub/f.json", 0o644),
            ("private", 0o600),
        ] {
            std::fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(m)).unwrap();
        }
        create_private_dir(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        tighten_tree(&root).unwrap();
        assert_eq!(mode(&root.join("sub")), 0o700);
        assert_eq!(mode(&root.join("sub/f.json")), 0o600);
        assert_eq!(mode(&root.join("private")), 0o600);
    }
}

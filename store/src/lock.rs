//! One `rivulet serve` per data folder: a second one would open the same logs and resource
//! files, and look healthy while its brokers could not take events. The lock is an exclusive
//! advisory lock on `{data-dir}/rivulet.lock`, released by the system when the process ends,
//! however it ends (kill -9 included), so a restart never finds a stale lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;

/// The lock file's name inside the data folder.
pub const LOCK_FILE: &str = "rivulet.lock";

/// Why the data folder could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "the data folder {path} is in use by another rivulet process{holder}; stop it, or give this one another --data-dir"
    )]
    InUse { path: String, holder: String },
    #[error("cannot lock the data folder {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Locks `data_dir` for this process; the lock lasts as long as the returned file is open.
/// The file holds the process id, so a refusal can name the holder.
pub fn lock_data_dir(data_dir: &Path) -> Result<File, LockError> {
    let path = data_dir.join(LOCK_FILE);
    let io = |source| LockError::Io {
        path: data_dir.display().to_string(),
        source,
    };
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(LockError::InUse {
                path: data_dir.display().to_string(),
                holder: if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                },
            });
        }
        Err(TryLockError::Error(error)) => return Err(io(error)),
    }
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_folder_is_refused_naming_the_holder_until_the_first_ends() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_data_dir(dir.path()).unwrap();
        let refused = lock_data_dir(dir.path()).unwrap_err();
        assert!(matches!(refused, LockError::InUse { .. }), "{refused}");
        let message = refused.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(first);
        lock_data_dir(dir.path()).expect("free again once the holder let go");
    }
}

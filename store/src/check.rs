//! What `rivulet serve` checks in the data dir before it opens anything, and what
//! `rivulet store repair` does about damage: a damaged file is never silently replaced.
//!
//! Checked: every resource file (`resources/**/*.json`) and every embedded log
//! (`channels/{namespace}/{broker}.redb`). A zero-length file, a file that does not parse or
//! pages that fail their checksums are damage; a log that was not closed cleanly is not (redb
//! rolls it back to its last durable commit when it opens it, and says so in the log).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rivulet_channels::ChannelError;
use rivulet_channels::embedded;
use serde_json::Value;

/// One damaged file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
    kind: FileKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Resource,
    Log,
}

/// What [`repair`] did with one damaged file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    pub path: PathBuf,
    /// Where the damaged file was moved.
    pub moved_to: PathBuf,
    /// What was kept, in words.
    pub outcome: String,
}

/// Every damaged file under `data_dir`; changes nothing.
pub fn check(data_dir: &Path) -> std::io::Result<Vec<Damage>> {
    let mut damage = Vec::new();
    for path in files_under(&data_dir.join("resources"), "json")? {
        if let Err(problem) = check_resource(&path) {
            damage.push(Damage {
                path,
                problem,
                kind: FileKind::Resource,
            });
        }
    }
    for path in files_under(&data_dir.join("channels"), "redb")? {
        match embedded::check_file(&path) {
            Ok(()) => {}
            Err(ChannelError::Corrupt(problem)) => damage.push(Damage {
                path,
                problem,
                kind: FileKind::Log,
            }),
            // Not damage (a log another process has open, say): opening it later says so.
            Err(other) => {
                tracing::warn!(path = %path.display(), error = %other, "cannot check the embedded log")
            }
        }
    }
    Ok(damage)
}

fn check_resource(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
    if bytes.is_empty() {
        return Err("the file is empty (zero bytes) where a resource must be".into());
    }
    let object: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    match object.pointer("/metadata/name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => Ok(()),
        _ => Err("not a resource: it has no metadata.name".into()),
    }
}

/// The message `rivulet serve` refuses to start with.
pub fn refusal(data_dir: &Path, damage: &[Damage]) -> String {
    let mut message = format!(
        "{} damaged file(s) in the data dir {}; nothing was changed:\n",
        damage.len(),
        data_dir.display()
    );
    for item in damage {
        message.push_str(&format!("  {}: {}\n", item.path.display(), item.problem));
    }
    message.push_str(&format!(
        "To recover, restore the files from a backup, or run `rivulet store repair --data-dir {}`: \
         it keeps every intact record, moves each damaged file aside (NAME.damaged-TIME) and \
         lists what could not be kept; damaged resources must then be applied again.",
        data_dir.display()
    ));
    message
}

/// Repairs every damaged file under `data_dir`: resources are moved aside (re-apply them);
/// a log is rebuilt from its intact records and the damaged file moved aside. The server
/// must not be running.
pub fn repair(data_dir: &Path) -> anyhow::Result<Vec<Repaired>> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut repaired = Vec::new();
    for damage in check(data_dir)? {
        let moved_to = aside(&damage.path, stamp);
        let outcome = match damage.kind {
            FileKind::Resource => {
                std::fs::rename(&damage.path, &moved_to)?;
                "moved aside; apply that resource again".to_owned()
            }
            FileKind::Log => {
                let rebuilt = damage.path.with_extension("redb.salvaged");
                let salvaged = embedded::salvage_file(&damage.path, &rebuilt);
                std::fs::rename(&damage.path, &moved_to)?;
                match salvaged {
                    Ok(kept) => {
                        std::fs::rename(&rebuilt, &damage.path)?;
                        format!(
                            "rebuilt with {} queued event(s) and {} subscription(s); {} \
                             unreadable record(s) left behind",
                            kept.events, kept.subscriptions, kept.lost_records
                        )
                    }
                    Err(error) => {
                        let _ = std::fs::remove_file(&rebuilt);
                        format!(
                            "nothing could be read ({error}); the broker starts with an empty log"
                        )
                    }
                }
            }
        };
        if let Some(folder) = damage.path.parent() {
            std::fs::File::open(folder)?.sync_all()?;
        }
        repaired.push(Repaired {
            path: damage.path,
            moved_to,
            outcome,
        });
    }
    Ok(repaired)
}

fn aside(path: &Path, stamp: u64) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".damaged-{stamp}"));
    path.with_file_name(name)
}

/// Files ending in `.{extension}` anywhere under `root` (nothing when it does not exist).
fn files_under(root: &Path, extension: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                folders.push(path);
            } else if path.extension().and_then(|e| e.to_str()) == Some(extension) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_garbled_resources_are_damage_and_repair_moves_them_aside() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir
            .path()
            .join("resources/eventing.knative.dev/triggers/default");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("good.json"), br#"{"metadata":{"name":"good"}}"#).unwrap();
        std::fs::write(folder.join("empty.json"), b"").unwrap();
        std::fs::write(folder.join("garbled.json"), b"{\"metadata\": {\"na\x00").unwrap();
        let damage = check(dir.path()).unwrap();
        let names: Vec<_> = damage
            .iter()
            .map(|d| d.path.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["empty.json", "garbled.json"]);
        assert!(damage[0].problem.contains("zero bytes"), "{damage:?}");
        assert!(damage[1].problem.contains("not valid JSON"), "{damage:?}");
        let message = refusal(dir.path(), &damage);
        assert!(message.contains("empty.json") && message.contains("rivulet store repair"));

        let repaired = repair(dir.path()).unwrap();
        assert_eq!(repaired.len(), 2);
        assert!(
            repaired
                .iter()
                .all(|r| r.moved_to.exists() && !r.path.exists())
        );
        assert!(folder.join("good.json").exists());
        assert!(check(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn an_empty_log_is_damage_and_repair_replaces_it_with_an_empty_log() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("channels/default");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("default.redb"), b"").unwrap();
        let damage = check(dir.path()).unwrap();
        assert_eq!(damage.len(), 1);
        assert!(damage[0].problem.contains("zero bytes"), "{damage:?}");
        let repaired = repair(dir.path()).unwrap();
        assert_eq!(repaired.len(), 1);
        assert!(repaired[0].moved_to.exists());
        assert!(check(dir.path()).unwrap().is_empty());
    }
}

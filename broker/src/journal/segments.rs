//! The journal on disk: JSON lines in segment files named by the time they were begun. A
//! segment is begun every eighth of the size bound or of the retention, so whole segments
//! can be removed once they are past either. Records are not synced: the journal explains
//! what happened, and a crash may cost its last moments, never an event.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::record::{EventRef, Millis, Step, now_millis};

const SUFFIX: &str = ".jsonl";

#[derive(Serialize)]
struct LineOut<'a> {
    event: &'a EventRef,
    step: &'a Step,
}

#[derive(Deserialize)]
struct LineIn {
    event: EventRef,
    step: Step,
}

struct Segment {
    path: PathBuf,
    begun: Millis,
    bytes: u64,
}

pub(super) struct Segments {
    dir: PathBuf,
    max_bytes: u64,
    retention_ms: Millis,
    /// Closed segments, oldest first.
    closed: Vec<Segment>,
    current: Option<(Segment, BufWriter<File>)>,
    /// The line being written.
    line: Vec<u8>,
}

impl Segments {
    /// Opens the folder (made if missing) and reads back what it holds, oldest first. A
    /// line that cannot be read (cut short by a crash) is skipped.
    pub(super) fn open(
        dir: &Path,
        max_bytes: u64,
        retention: Duration,
    ) -> io::Result<(Segments, Vec<(EventRef, Step)>)> {
        rivulet_store::create_private_dir(dir)?;
        let mut closed = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(begun) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.parse::<Millis>().ok())
            else {
                continue;
            };
            closed.push(Segment {
                path: entry.path(),
                begun,
                bytes: entry.metadata()?.len(),
            });
        }
        closed.sort_by_key(|s| s.begun);
        let mut segments = Segments {
            dir: dir.to_path_buf(),
            max_bytes,
            retention_ms: retention.as_millis() as Millis,
            closed,
            current: None,
            line: Vec::with_capacity(1024),
        };
        segments.remove_old(now_millis());
        let mut records = Vec::new();
        let mut unreadable = 0u64;
        for segment in &segments.closed {
            let file = BufReader::new(File::open(&segment.path)?);
            for line in file.lines() {
                match line
                    .ok()
                    .and_then(|l| serde_json::from_str::<LineIn>(&l).ok())
                {
                    Some(line) => records.push((line.event, line.step)),
                    None => unreadable += 1,
                }
            }
        }
        if unreadable > 0 {
            tracing::info!(
                unreadable,
                "the event journal skipped lines it could not read (cut short by a crash?)"
            );
        }
        Ok((segments, records))
    }

    /// Appends records to the current segment, beginning a new one when it is full or old.
    pub(super) fn append(&mut self, records: &[(EventRef, Step)]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let now = now_millis();
        self.roll_if_due(now)?;
        let (segment, writer) = match &mut self.current {
            Some(current) => current,
            None => {
                let path = self.dir.join(format!("{now:016}{SUFFIX}"));
                let file = OpenOptions::new().create(true).append(true).open(&path)?;
                restrict(&path)?;
                self.current.insert((
                    Segment {
                        path,
                        begun: now,
                        bytes: 0,
                    },
                    BufWriter::new(file),
                ))
            }
        };
        // One buffer for every line: no allocation per record.
        let line = &mut self.line;
        for (event, step) in records {
            line.clear();
            serde_json::to_writer(&mut *line, &LineOut { event, step })
                .map_err(io::Error::other)?;
            line.push(b'\n');
            writer.write_all(line)?;
            segment.bytes += line.len() as u64;
        }
        writer.flush()
    }

    /// Writes out what is buffered.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        match &mut self.current {
            Some((_, writer)) => writer.flush(),
            None => Ok(()),
        }
    }

    fn roll_if_due(&mut self, now: Millis) -> io::Result<()> {
        let full = self.max_bytes / 8;
        let old = (self.retention_ms / 8).max(1_000);
        let due = self
            .current
            .as_ref()
            .is_some_and(|(s, _)| s.bytes >= full || now.saturating_sub(s.begun) >= old);
        if due && let Some((segment, mut writer)) = self.current.take() {
            writer.flush()?;
            self.closed.push(segment);
            self.remove_old(now);
        }
        Ok(())
    }

    /// Removes closed segments whose every record is past the retention (the next one began
    /// before the oldest time kept), then the oldest while over the size bound.
    fn remove_old(&mut self, now: Millis) {
        let oldest_kept = now.saturating_sub(self.retention_ms);
        let current_bytes = self.current.as_ref().map_or(0, |(s, _)| s.bytes);
        let mut keep_from = 0;
        for (i, pair) in self.closed.windows(2).enumerate() {
            if pair[1].begun < oldest_kept {
                keep_from = i + 1;
            }
        }
        let mut total: u64 = self.closed[keep_from..]
            .iter()
            .map(|s| s.bytes)
            .sum::<u64>()
            + current_bytes;
        while keep_from < self.closed.len() && total > self.max_bytes {
            total -= self.closed[keep_from].bytes;
            keep_from += 1;
        }
        for segment in self.closed.drain(..keep_from) {
            if let Err(error) = std::fs::remove_file(&segment.path) {
                tracing::warn!(path = %segment.path.display(), %error, "could not remove an old event journal segment");
            }
        }
    }
}

/// Journal files are read by the server's user only: events can carry personal data.
fn restrict(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> (EventRef, Step) {
        (
            EventRef {
                namespace: "ns".into(),
                broker: "b".into(),
                id: n.to_string(),
                source: "/s".into(),
            },
            Step::Dropped {
                at: n,
                trigger: "t".repeat(100),
                reason: "ttl".into(),
            },
        )
    }

    #[test]
    fn segments_roll_and_stay_under_the_size_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (mut segments, loaded) =
            Segments::open(dir.path(), 8_000, Duration::from_secs(3600)).unwrap();
        assert!(loaded.is_empty());
        for n in 0..200 {
            segments.append(&[record(n)]).unwrap();
            // Segment names are milliseconds: give each roll its own.
            if n % 20 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        segments.flush().unwrap();
        let on_disk: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(
            on_disk <= 8_000 + 8_000 / 8 + 200,
            "{on_disk} bytes on disk"
        );
        let (_, loaded) = Segments::open(dir.path(), 8_000, Duration::from_secs(3600)).unwrap();
        assert!(!loaded.is_empty());
        assert_eq!(
            loaded.last().unwrap().0.id,
            "199",
            "the newest records are kept"
        );
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut segments, _) =
            Segments::open(dir.path(), 1 << 20, Duration::from_secs(3600)).unwrap();
        segments.append(&[record(1), record(2)]).unwrap();
        let path = segments.current.as_ref().unwrap().0.path.clone();
        drop(segments);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"event\":{\"names").unwrap();
        let (_, loaded) = Segments::open(dir.path(), 1 << 20, Duration::from_secs(3600)).unwrap();
        assert_eq!(loaded.len(), 2);
    }
}

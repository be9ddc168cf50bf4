//! One owner per database file: an advisory lock on a lock file beside it.
//!
//! [`SqliteStore::open`](super::sqlite::SqliteStore::open) takes an exclusive `flock`-style
//! lock on `<database>-lock` before it reads or writes the database, and writes who holds it
//! (pid, host name, since when) into that file. A second opener — another process, or another
//! runtime in the same process — finds the lock taken and is refused with
//! [`StoreError::Locked`], naming the holder, before it touches anything.
//!
//! The operating system drops the lock when the holder's file handle is closed, so a process
//! killed with SIGKILL leaves only a stale lock file behind, which the next opener takes over.
//! The lock file is never deleted: deleting it would let two openers lock two different files.

use super::StoreError;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Who holds a database file, as written in its lock file by the holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// The holder's process id.
    pub pid: u32,
    /// The host name of the machine it runs on.
    pub host: String,
    /// When it took the file, RFC 3339 (UTC).
    pub since: String,
}

impl LockHolder {
    /// This process, now.
    fn current() -> LockHolder {
        LockHolder {
            pid: std::process::id(),
            host: host_name(),
            since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        }
    }

    /// Whether the holder is this very process.
    pub fn is_this_process(&self) -> bool {
        self.pid == std::process::id() && self.host == host_name()
    }
}

fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// The lock file of the database at `db`: its path with `-lock` appended (beside SQLite's own
/// `-wal` and `-shm`).
pub fn lock_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-lock");
    PathBuf::from(s)
}

/// An exclusive hold on a database file, released when dropped (or when the process dies).
#[derive(Debug)]
pub(crate) struct StoreLock {
    file: File,
}

impl StoreLock {
    /// Takes the database at `db` for this process, or says who has it. Creates the lock file
    /// when missing; never truncates it unless the lock was taken.
    pub(crate) fn acquire(db: &Path) -> Result<StoreLock, StoreError> {
        let path = lock_path(db);
        let shown = db.display();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                StoreError::Backend(format!(
                    "opening `{shown}`: cannot open its lock file `{}`: {e}; orch needs to \
                     create it beside the database (check the directory exists and is writable)",
                    path.display()
                ))
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: shown.to_string(),
                    lock_file: path.display().to_string(),
                    holder: read_holder(&mut file),
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(StoreError::Backend(format!(
                    "opening `{shown}`: cannot lock `{}`: {e}; orch locks this file to keep a \
                     second process off the database, so put the database on a file system \
                     that supports file locks",
                    path.display()
                )));
            }
        }
        let holder = LockHolder::current();
        write_holder(&mut file, &holder).map_err(|e| {
            StoreError::Backend(format!(
                "opening `{shown}`: cannot write the lock file `{}`: {e}",
                path.display()
            ))
        })?;
        Ok(StoreLock { file })
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first also covers a copy of the
        // handle inherited by a child process that has not exec'd yet.
        let _ = self.file.unlock();
    }
}

fn write_holder(file: &mut File, holder: &LockHolder) -> std::io::Result<()> {
    let text = serde_json::to_string(holder).map_err(std::io::Error::other)?;
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    // One small write: a reader sees nothing, a prefix, or all of it.
    file.write_all(text.as_bytes())?;
    file.flush()
}

/// The holder named in the lock file. The holder writes its name right after taking the lock,
/// so a reader that comes in between finds the file empty or half written: it tries again for
/// a moment, then gives up (`None`, the holder is unknown).
fn read_holder(file: &mut File) -> Option<LockHolder> {
    const TRIES: u32 = 50;
    for attempt in 0..TRIES {
        let mut text = String::new();
        let read = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_string(&mut text));
        if read.is_ok()
            && let Ok(holder) = serde_json::from_str::<LockHolder>(&text)
        {
            return Some(holder);
        }
        if attempt + 1 < TRIES {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    None
}

/// The message of [`StoreError::Locked`].
pub(crate) fn locked_message(path: &str, lock_file: &str, holder: Option<&LockHolder>) -> String {
    match holder {
        Some(h) if h.is_this_process() => format!(
            "`{path}` is already open in this process (pid {} on host `{}`, since {}): another \
             Runtime or SqliteStore has it. One SQLite file serves one runtime at a time: use \
             the runtime that has it, or call `shutdown()` on it before building a new one \
             (nothing was changed)",
            h.pid, h.host, h.since
        ),
        Some(h) => format!(
            "`{path}` is in use by another orch process: pid {} on host `{}`, since {}. One \
             SQLite file serves one process at a time: stop that process first, or point this \
             one at another file; several processes cannot share one SQLite store yet \
             (nothing was changed)",
            h.pid, h.host, h.since
        ),
        None => format!(
            "`{path}` is in use by another orch process (which one is unknown: its lock file \
             `{lock_file}` names none). One SQLite file serves one process at a time: stop that \
             process first, or point this one at another file; several processes cannot share \
             one SQLite store yet (nothing was changed)"
        ),
    }
}

/// The message of [`StoreError::SchemaLocked`].
pub(crate) fn schema_locked_message(store: &str, holder: Option<&LockHolder>) -> String {
    let rule = "One PostgreSQL schema serves one runtime at a time (until ownership leases \
                let several nodes share it)";
    match holder {
        Some(h) if h.is_this_process() => format!(
            "`{store}` is already open in this process (pid {} on host `{}`, since {}): another \
             Runtime or PostgresStore has it. {rule}: use the runtime that has it, or call \
             `shutdown()` on it before building a new one (nothing was changed)",
            h.pid, h.host, h.since
        ),
        Some(h) => format!(
            "`{store}` is in use by another orch process: pid {} on host `{}`, since {}. \
             {rule}: stop that process first, or give this one another schema \
             (PostgresOptions::schema) (nothing was changed)",
            h.pid, h.host, h.since
        ),
        None => format!(
            "`{store}` is in use by another orch process (which one is unknown: it has not \
             recorded itself in the schema's store_holder table yet). {rule}: stop that \
             process first, or give this one another schema (PostgresOptions::schema) \
             (nothing was changed)"
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_held_file_is_refused_with_its_holder_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let held = StoreLock::acquire(&db).unwrap();
        let err = StoreLock::acquire(&db).unwrap_err();
        let StoreError::Locked { path, holder, .. } = &err else {
            panic!("expected Locked, got {err:?}");
        };
        assert_eq!(path, &db.display().to_string());
        let holder = holder.as_ref().unwrap();
        assert_eq!(holder.pid, std::process::id());
        assert!(
            humantime::parse_rfc3339(&holder.since).is_ok(),
            "{holder:?}"
        );
        assert!(
            err.to_string().contains("already open in this process"),
            "{err}"
        );
        drop(held);
        StoreLock::acquire(&db).unwrap();
    }

    #[test]
    fn a_holder_that_wrote_nothing_is_reported_as_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        // Someone holds the lock but never wrote who they are.
        let raw = File::create(lock_path(&db)).unwrap();
        raw.try_lock().unwrap();
        let err = StoreLock::acquire(&db).unwrap_err();
        assert!(
            matches!(&err, StoreError::Locked { holder: None, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("which one is unknown"), "{msg}");
        assert!(msg.contains("a.db-lock"), "{msg}");
        assert!(msg.contains("stop that process"), "{msg}");
    }

    #[test]
    fn a_stale_lock_file_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        // Left by a holder that died: it names a process, but nobody holds the lock.
        std::fs::write(
            lock_path(&db),
            r#"{"pid":1,"host":"gone","since":"2020-01-01T00:00:00Z"} and some more bytes"#,
        )
        .unwrap();
        let _held = StoreLock::acquire(&db).unwrap();
        let now: LockHolder =
            serde_json::from_str(&std::fs::read_to_string(lock_path(&db)).unwrap()).unwrap();
        assert_eq!(now.pid, std::process::id());
    }
}

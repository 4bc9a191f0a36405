//! Files graft reads and writes, done so that nothing is lost: durable atomic writes
//! (temporary file, fsync, rename, fsync of the folder), a refusal of special files before
//! they are opened (a FIFO would block the open forever), and an exclusive lock on a
//! training run's folder so that two runs cannot resume each other's state.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Fault injection for the test suite: `GRAFT_FAIL_WRITES=SUBSTRING` makes every atomic write
/// whose path contains SUBSTRING fail as a full disk would, after its temporary file was
/// created and partly written (so that the clean-up is exercised too). Unset, it costs nothing.
const FAIL_WRITES: &str = "GRAFT_FAIL_WRITES";

/// An error that names the file it is about.
fn at(path: &Path, e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` durably and atomically: a temporary file in the same folder,
/// written and fsynced, renamed over `path`, then the folder fsynced, so neither a crash nor
/// a power cut leaves a truncated or missing file. On failure the temporary file is removed
/// and the error names the path.
///
/// # Errors
/// The I/O error, its message starting with the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_all_atomic(&[(path, bytes)])
}

/// Writes several files as one: every temporary file is written and fsynced before any is
/// renamed into place, so a failure (a full disk) leaves all the old files, never a new one
/// beside an old one (an adapter's weights beside another run's config).
///
/// # Errors
/// As [`write_atomic`].
pub fn write_all_atomic(files: &[(&Path, &[u8])]) -> std::io::Result<()> {
    let mut temps: Vec<(PathBuf, &Path)> = Vec::new();
    let clean = |temps: &[(PathBuf, &Path)]| {
        for (t, _) in temps {
            let _ = std::fs::remove_file(t);
        }
    };
    for (path, bytes) in files {
        let dir = parent(path);
        if let Err(e) = std::fs::create_dir_all(dir) {
            clean(&temps);
            return Err(at(dir, &e));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let thread = format!("{:?}", std::thread::current().id()).replace(['(', ')'], "");
        let tmp = dir.join(format!(".{name}.tmp-{}-{thread}", std::process::id()));
        let written = (|| {
            let mut f = File::create(&tmp)?;
            if let Some(pattern) = std::env::var_os(FAIL_WRITES)
                && path.to_string_lossy().contains(&*pattern.to_string_lossy())
            {
                f.write_all(&bytes[..bytes.len() / 2])?;
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            f.write_all(bytes)?;
            f.sync_all()
        })();
        temps.push((tmp, path));
        if let Err(e) = written {
            clean(&temps);
            return Err(at(path, &e));
        }
    }
    for (i, (tmp, path)) in temps.iter().enumerate() {
        if let Err(e) = std::fs::rename(tmp, path) {
            clean(&temps[i..]);
            return Err(at(path, &e));
        }
    }
    for (_, path) in &temps {
        sync_dir(parent(path));
    }
    Ok(())
}

/// The folder a file is written into.
fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Fsyncs a folder so that a rename into it is durable (best effort: some file systems do
/// not support it, and the data itself is already synced).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Checks that `path` is a regular file (following symlinks) before anything opens it: a
/// FIFO, a socket or a device would block or stream forever. `what` says what the file is
/// for ("weights file", "data file").
///
/// # Errors
/// The message to show, naming the file.
pub fn regular_file(path: &Path, what: &str) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) if m.is_dir() => Err(format!("{what} {} is a folder, not a file", path.display())),
        Ok(_) => Err(format!(
            "{what} {} is not a regular file (a FIFO, socket or device); graft reads only regular files",
            path.display()
        )),
        Err(e) => Err(format!("cannot read {what} {}: {e}", path.display())),
    }
}

/// Removes temporary files that writers in `dir` left behind when they died mid-write (a
/// second signal exits at once, a power cut): `.NAME.tmp-PID-THREAD` whose process is gone.
/// Returns how many were removed.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .split_once(".tmp-")
            .filter(|_| name.starts_with('.'))
            .and_then(|(_, rest)| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// An exclusive lock on a folder, held while a run uses it (`<dir>/.graft-lock`, released
/// when dropped or when the process dies). Taking it clears the folder of temporary files
/// that dead writers left.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    /// The lock file.
    pub path: PathBuf,
}

/// Locks `dir` (creating it) for this process.
///
/// # Errors
/// A message naming the folder: another run holds it (with that run's process id), or the
/// lock file cannot be made.
pub fn lock_dir(dir: &Path) -> Result<DirLock, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(".graft-lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(format!(
                "{} is in use by another graft run (process {}); give each run its own folder",
                dir.display(),
                holder.trim()
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(format!("cannot lock {}: {e}", path.display()));
        }
    }
    let _ = file.set_len(0);
    let _ = write!(file, "{}", std::process::id());
    remove_stale_temporaries(dir);
    Ok(DirLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("x.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.bin")]);
    }

    #[test]
    fn a_failed_write_names_the_path_keeps_the_old_file_and_removes_the_temporary_one() {
        let dir = tempfile::tempdir().unwrap();
        // A folder where the file should go: the rename fails after the data was written.
        let p = dir.path().join("taken");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside"), b"keep").unwrap();
        let e = write_atomic(&p, b"new").unwrap_err();
        assert!(e.to_string().contains("taken"), "{e}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("taken")]);
        assert_eq!(std::fs::read(p.join("inside")).unwrap(), b"keep");
    }

    #[test]
    fn special_files_and_folders_are_refused_before_opening() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let e = regular_file(&fifo, "data file").unwrap_err();
        assert!(
            e.contains("not a regular file") && e.contains("pipe"),
            "{e}"
        );
        let e = regular_file(dir.path(), "weights file").unwrap_err();
        assert!(e.contains("is a folder"), "{e}");
        let e = regular_file(&dir.path().join("absent"), "spec").unwrap_err();
        assert!(e.contains("cannot read spec"), "{e}");
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        regular_file(&dir.path().join("f"), "spec").unwrap();
    }

    #[test]
    fn temporaries_of_dead_writers_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir
            .path()
            .join(".checkpoint.safetensors.tmp-4000000-ThreadId1");
        let mine = dir
            .path()
            .join(format!(".x.tmp-{}-ThreadId2", std::process::id()));
        let other = dir.path().join("notes.tmp-1-2");
        for p in [&dead, &mine, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(remove_stale_temporaries(dir.path()), 1);
        assert!(!dead.exists() && mine.exists() && other.exists());
    }

    #[test]
    fn a_locked_folder_is_refused_until_the_lock_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_dir(dir.path()).unwrap();
        let e = lock_dir(dir.path()).unwrap_err();
        assert!(e.contains("in use by another graft run"), "{e}");
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        drop(first);
        lock_dir(dir.path()).unwrap();
    }
}

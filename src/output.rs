//! Output files are written atomically: a temporary file in the target's directory, then a
//! rename, so a failed run never leaves a half-written file behind.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Temporary files being written right now, so an interrupted run can remove them
/// ([`remove_partial_files`]) and leave only complete outputs behind.
static IN_FLIGHT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn in_flight() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes every temporary file a [`write_atomic`] is writing at this moment and keeps any new
/// one from starting: for a signal handler that is about to end the process. Completed outputs
/// (already renamed into place) are not touched.
pub fn remove_partial_files() {
    let mut files = in_flight();
    for tmp in files.drain(..) {
        let _ = std::fs::remove_file(tmp);
    }
    // Hold the lock until the process exits, so no writer registers (or renames) another file.
    std::mem::forget(files);
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// failed run never leaves a half-written file behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| Ok(f.write_all(bytes)?))
}

/// [`write_atomic`] for contents that `write` streams into the temporary file (which it may
/// also seek in); an error from `write` leaves no file.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "cannot write {}: directory {} does not exist",
            path.display(),
            dir.display()
        );
    }
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    // Unique per process and per call, so concurrent writers (processes or threads) never
    // share a temporary file; the last rename wins and the target is never torn or mixed.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    in_flight().push(tmp.clone());
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        write(&mut f).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().ok();
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    })();
    let mut files = in_flight();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    files.retain(|p| *p != tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_refuses_missing_directory_and_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("ddim-io-test-{}", std::process::id()));
        let missing = dir.join("nope").join("x.png");
        assert!(write_atomic(&missing, b"abc").is_err());
        std::fs::create_dir_all(&dir).unwrap();
        let ok = dir.join("x.bin");
        write_atomic(&ok, b"abc").unwrap();
        assert_eq!(std::fs::read(&ok).unwrap(), b"abc");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .collect();
        assert_eq!(leftovers.len(), 1, "temporary files left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

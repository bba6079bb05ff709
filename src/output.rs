//! Output files: checked before any work ([`check_all`]) and written so that nothing is left
//! half-written and nothing is replaced that should not be. Per kind of target:
//!
//! * a regular file, or a name not taken yet: a temporary file in the same directory, renamed
//!   over the target (readers see the old file or the new one, never a torn one);
//! * a symbolic link: the same at the file it points to, so the link stays a link;
//! * a character or block device, or a FIFO: written straight to it (there is nothing to rename
//!   onto; `/dev/null` stays a device), and a failed write (`/dev/full`) is an error;
//! * a directory, a socket, a symbolic link loop: refused.

use crate::path_kind::{follow_links, is_name_too_long, kind_of, PathKind};
use anyhow::{bail, Context, Result};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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

const TEMP_PREFIX: &str = ".ddim-";
const TEMP_SUFFIX: &str = ".tmp";

/// A temporary name of this process, unique per call: `.ddim-<pid>-<n>.tmp`, padded with `x`
/// to `len` bytes when `len` is longer. Short whatever the final name, so that a final name
/// the file system accepts is never refused because of its temporary one.
fn temporary_name(len: usize) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = format!(
        "{TEMP_PREFIX}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let pad = len.saturating_sub(base.len() + TEMP_SUFFIX.len());
    format!("{base}{}{TEMP_SUFFIX}", "x".repeat(pad))
}

/// True for the name of a temporary file an output writer makes (this version's
/// `.ddim-<pid>-<n>.tmp`, and earlier versions' `.<name>.tmp-<pid>-<n>`): one left behind by a
/// killed process is garbage, never an output.
pub fn is_temporary_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let pid_and_count =
        |s: &str| matches!(s.split_once('-'), Some((a, b)) if digits(a) && digits(b));
    if let Some(rest) = name
        .strip_prefix(TEMP_PREFIX)
        .and_then(|r| r.strip_suffix(TEMP_SUFFIX))
    {
        return pid_and_count(rest.trim_end_matches('x'));
    }
    match name.rfind(".tmp-") {
        Some(i) if name.starts_with('.') && i > 1 => pid_and_count(&name[i + 5..]),
        _ => false,
    }
}

/// Where an output goes, once its path is resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Where the bytes land: the path with the symbolic links of its last component followed.
    pub place: PathBuf,
    /// A device or FIFO, written straight to; else a file replaced atomically.
    pub stream: bool,
}

/// The directory holding `path` ("." for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Resolves `path` and decides how it is written, without touching the file system beyond
/// looking. Fails on a directory, a socket, a symlink loop, or a name that is no file name.
pub fn resolve(path: &Path) -> Result<Target> {
    let text = path.as_os_str().to_string_lossy();
    if text.is_empty() {
        bail!("an empty path is no file name");
    }
    if text.ends_with('/') || path.file_name().is_none() {
        bail!("{} names a directory, not a file", path.display());
    }
    let kind = kind_of(path);
    let place = match &kind {
        PathKind::DanglingLink(to) => to.clone(),
        // Opened where it is: the kernel follows the links, also /proc's magic ones
        // (`/dev/stdout` → `/proc/self/fd/1` → `pipe:[…]`), which no path spells.
        k if k.is_stream() => path.to_path_buf(),
        _ => follow_links(path).unwrap_or_else(|_| path.to_path_buf()),
    };
    match kind {
        PathKind::File | PathKind::Missing | PathKind::DanglingLink(_) => Ok(Target {
            place,
            stream: false,
        }),
        k if k.is_stream() => Ok(Target {
            place,
            stream: true,
        }),
        PathKind::Dir => bail!(
            "{} is a directory; name a file inside it to write",
            path.display()
        ),
        PathKind::Unreachable(e) => {
            // Say which part of the path is wrong: usually the directory.
            check_dir(parent_of(path), path)?;
            if is_name_too_long(&e) {
                bail!(
                    "cannot write {}: its file name is {} bytes, more than the file system takes",
                    path.display(),
                    path.file_name().map_or(0, |n| n.as_encoded_bytes().len())
                );
            }
            bail!("cannot write {}: {e}", path.display())
        }
        other => bail!("cannot write {}: it {other}", path.display()),
    }
}

/// Fails unless `dir` is an existing directory; `path` is the output named in the message.
fn check_dir(dir: &Path, path: &Path) -> Result<()> {
    match kind_of(dir) {
        PathKind::Dir => Ok(()),
        PathKind::Missing => bail!(
            "cannot write {}: directory {} does not exist",
            path.display(),
            dir.display()
        ),
        other => bail!(
            "cannot write {}: {} {other}, not a directory",
            path.display(),
            dir.display()
        ),
    }
}

/// [`resolve`], then proves that the output can be made: its directory exists and takes a new
/// file of the final name's length (a file is created there and removed at once). A device or
/// FIFO is not opened (that could block, or start the device).
pub fn check(path: &Path) -> Result<Target> {
    let target = resolve(path)?;
    if target.stream {
        return Ok(target);
    }
    let dir = parent_of(&target.place);
    check_dir(dir, path)?;
    let name_len = target
        .place
        .file_name()
        .map_or(0, |n| n.as_encoded_bytes().len());
    match probe(dir, name_len) {
        Ok(()) => Ok(target),
        Err(e) if is_name_too_long(&e) => bail!(
            "cannot write {}: its file name is {name_len} bytes, more than the file system in {} \
             takes",
            path.display(),
            dir.display()
        ),
        Err(e) => bail!(
            "cannot write {}: directory {} is not writable ({e})",
            path.display(),
            dir.display()
        ),
    }
}

/// Fails unless `dir` is a directory that takes new files (for a folder of outputs).
pub fn check_writable_dir(dir: &Path) -> Result<()> {
    check_dir(dir, dir)?;
    probe(dir, 0).with_context(|| format!("directory {} is not writable", dir.display()))
}

/// Creates and removes a file in `dir` whose name is `name_len` bytes long (at least a short
/// temporary name): proves that a new file of that name length can be made there.
fn probe(dir: &Path, name_len: usize) -> std::io::Result<()> {
    let probe = dir.join(temporary_name(name_len));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    match std::fs::remove_file(&probe) {
        // Creating it proved the point; a seed folder's other writer may have swept it away
        // as a leftover before we got to remove it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// What identifies the file an output lands on: the device and inode when it exists (on Unix),
/// else its directory's canonical path and its name.
#[derive(PartialEq, Eq)]
enum Identity {
    #[cfg(unix)]
    Inode(u64, u64),
    Path(PathBuf),
}

fn identity(place: &Path) -> Option<Identity> {
    #[cfg(unix)]
    if let Ok(m) = std::fs::metadata(place) {
        use std::os::unix::fs::MetadataExt;
        return Some(Identity::Inode(m.dev(), m.ino()));
    }
    let dir = std::fs::canonicalize(parent_of(place)).ok()?;
    Some(Identity::Path(dir.join(place.file_name()?)))
}

/// Checks every output of a command before any work ([`check`]), naming it by `label` (the
/// flag), and refuses two that land on the same file (after symbolic links are followed).
pub fn check_all(outputs: &[(&str, &Path)]) -> Result<Vec<Target>> {
    let mut seen: Vec<(&str, &Path, Identity)> = Vec::new();
    let mut targets = Vec::new();
    for &(label, path) in outputs {
        let target = check(path).with_context(|| format!("{label} {}", path.display()))?;
        if let Some(id) = identity(&target.place) {
            if let Some((first, first_path, _)) = seen.iter().find(|(_, _, s)| *s == id) {
                bail!(
                    "{first} {} and {label} {} name the same file; give each output its own",
                    first_path.display(),
                    path.display()
                );
            }
            seen.push((label, path, id));
        }
        targets.push(target);
    }
    Ok(targets)
}

/// Writes `bytes` to `path` the way its kind needs (see the module doc): atomically for a
/// file, straight to a device or FIFO.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let target = resolve(path)?;
    if target.stream {
        return write_stream(path, &target.place, |out| Ok(out.write_all(bytes)?));
    }
    replace_file(path, &target.place, |f| Ok(f.write_all(bytes)?))
}

/// [`write_atomic`] for contents that `write` streams into a file (which it may also seek in);
/// an error from `write` leaves no file. A device or FIFO gets the finished contents, which are
/// spooled first to an unnamed temporary file (so a writer that seeks works there too).
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    let target = resolve(path)?;
    if !target.stream {
        return replace_file(path, &target.place, write);
    }
    let mut spool = spool_file()?;
    write(&mut spool).with_context(|| format!("cannot write {}", path.display()))?;
    spool
        .rewind()
        .context("cannot read back the spooled output")?;
    write_stream(path, &target.place, |out| {
        std::io::copy(&mut spool, out)?;
        Ok(())
    })
}

/// A temporary file with no name (removed at once on Unix), for output that must be complete
/// before it goes to a stream.
fn spool_file() -> Result<std::fs::File> {
    let path = std::env::temp_dir().join(temporary_name(0));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("cannot create a temporary file {}", path.display()))?;
    // On Unix the open file outlives its name; elsewhere the name goes when the file closes
    // (best effort).
    let _ = std::fs::remove_file(&path);
    Ok(file)
}

/// Opens the device or FIFO at `place` and lets `write` fill it; every error is the command's.
fn write_stream(
    path: &Path,
    place: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .open(place)
        .with_context(|| format!("cannot open {} for writing", path.display()))?;
    write(&mut out)
        .and_then(|()| Ok(out.flush()?))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes a temporary file next to `place` and renames it over `place`.
fn replace_file(
    path: &Path,
    place: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    let dir = parent_of(place);
    check_dir(dir, path)?;
    let tmp = dir.join(temporary_name(0));
    in_flight().push(tmp.clone());
    let result = (|| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        // A replaced file keeps its permissions.
        if let Ok(old) = std::fs::metadata(place) {
            let _ = f.set_permissions(old.permissions());
        }
        write(&mut f).with_context(|| format!("cannot write {}", path.display()))?;
        f.sync_all()
            .with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::rename(&tmp, place)
            .with_context(|| format!("cannot move the finished file onto {}", path.display()))
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

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ddim-out-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn atomic_write_refuses_missing_directory_and_leaves_nothing() {
        let dir = temp_dir("missing");
        let missing = dir.join("nope").join("x.png");
        assert!(write_atomic(&missing, b"abc").is_err());
        let ok = dir.join("x.bin");
        write_atomic(&ok, b"abc").unwrap();
        assert_eq!(std::fs::read(&ok).unwrap(), b"abc");
        assert_eq!(names(&dir), ["x.bin"], "temporary files left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporary_names_are_short_and_recognised() {
        let t = temporary_name(0);
        assert!(t.len() < 40 && is_temporary_name(&t), "{t}");
        let padded = temporary_name(255);
        assert_eq!(padded.len(), 255);
        assert!(is_temporary_name(&padded));
        assert!(is_temporary_name(".000123.png.tmp-4242-7"));
        for name in [
            "000123.png",
            ".ddim-1-2.png",
            ".ddim-a-2.tmp",
            "ddim-manifest.json",
            ".x.tmp-",
        ] {
            assert!(!is_temporary_name(name), "{name}");
        }
    }

    #[test]
    fn a_name_of_255_bytes_is_written_and_one_of_256_refused_up_front() {
        let dir = temp_dir("long");
        let ok = dir.join("a".repeat(251) + ".png");
        check(&ok).unwrap();
        write_atomic(&ok, b"png").unwrap();
        assert_eq!(std::fs::read(&ok).unwrap(), b"png");
        let long = dir.join("a".repeat(252) + ".png");
        let e = format!("{:#}", check(&long).unwrap_err());
        assert!(e.contains("256 bytes"), "{e}");
        assert_eq!(names(&dir).len(), 1, "the probe was left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_is_written_through_and_stays_a_link() {
        let dir = temp_dir("link");
        std::fs::create_dir(dir.join("real")).unwrap();
        std::fs::write(dir.join("real/target.bin"), b"old").unwrap();
        std::os::unix::fs::symlink("real/target.bin", dir.join("link.bin")).unwrap();
        write_atomic(&dir.join("link.bin"), b"new").unwrap();
        assert!(std::fs::symlink_metadata(dir.join("link.bin"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(dir.join("real/target.bin")).unwrap(), b"new");
        // A dangling link makes its target.
        std::os::unix::fs::symlink("real/new.bin", dir.join("dangling.bin")).unwrap();
        write_atomic(&dir.join("dangling.bin"), b"made").unwrap();
        assert_eq!(std::fs::read(dir.join("real/new.bin")).unwrap(), b"made");
        assert_eq!(names(&dir.join("real")), ["new.bin", "target.bin"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn directories_and_duplicates_are_refused() {
        let dir = temp_dir("dup");
        let e = format!("{:#}", check(&dir).unwrap_err());
        assert!(e.contains("is a directory"), "{e}");
        let a = dir.join("a.png");
        let same = dir.join(".").join("a.png");
        let e = format!(
            "{:#}",
            check_all(&[("--out", &a), ("--save-trajectory", &same)]).unwrap_err()
        );
        assert!(
            e.contains("--out") && e.contains("--save-trajectory") && e.contains("same file"),
            "{e}"
        );
        check_all(&[("--out", &a), ("--save-tensor", &dir.join("b.st"))]).unwrap();
        assert!(names(&dir).is_empty(), "checking wrote {:?}", names(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A FIFO takes the same path as a device (written straight); the device nodes themselves
    /// are tested through the binary in a private mount namespace (tests/cli_abuse.rs), never
    /// on the real /dev.
    #[cfg(unix)]
    #[test]
    fn a_fifo_is_written_straight_and_stays_a_fifo() {
        let dir = temp_dir("fifo");
        let fifo = dir.join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("mkfifo unavailable: test skipped");
            return;
        }
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        check(&fifo).unwrap();
        write_atomic_with(&fifo, |f| {
            f.write_all(b"0123")?;
            f.seek(std::io::SeekFrom::Start(1))?;
            f.write_all(b"ab")?;
            Ok(())
        })
        .unwrap();
        assert_eq!(reader.join().unwrap(), b"0ab3");
        assert!(matches!(kind_of(&fifo), PathKind::Fifo));
        assert_eq!(names(&dir), ["pipe"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

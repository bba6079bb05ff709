//! What a path names, as opening it would see it (symbolic links followed): so that messages can
//! say "is a directory" or "is a symlink loop" instead of "not found", and so that outputs can be
//! written the way their kind needs ([`crate::output`]).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// How many symbolic links are followed before a chain counts as a loop (Linux's limit).
const MAX_LINKS: usize = 40;

/// The kind of file a path names.
#[derive(Debug)]
pub enum PathKind {
    /// Nothing there (and no symbolic link pointing nowhere).
    Missing,
    File,
    Dir,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
    /// A symbolic link whose target does not exist (the target, resolved).
    DanglingLink(PathBuf),
    /// Symbolic links that lead back to themselves.
    SymlinkLoop,
    /// The path cannot be examined (a component is not a directory, no permission, …).
    Unreachable(io::Error),
}

impl PathKind {
    /// True for a device or a FIFO: something written to (or read from) as a stream, with no
    /// file to rename onto.
    pub fn is_stream(&self) -> bool {
        matches!(self, Self::Fifo | Self::CharDevice | Self::BlockDevice)
    }
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("does not exist"),
            Self::File => f.write_str("is a regular file"),
            Self::Dir => f.write_str("is a directory"),
            Self::Fifo => f.write_str("is a FIFO (named pipe)"),
            Self::CharDevice => f.write_str("is a character device"),
            Self::BlockDevice => f.write_str("is a block device"),
            Self::Socket => f.write_str("is a socket"),
            Self::DanglingLink(to) => write!(
                f,
                "is a symbolic link to {}, which does not exist",
                to.display()
            ),
            Self::SymlinkLoop => f.write_str("is a symbolic link loop"),
            Self::Unreachable(e) => write!(f, "cannot be examined ({e})"),
        }
    }
}

/// The kind of `path`, symbolic links followed.
pub fn kind_of(path: &Path) -> PathKind {
    match std::fs::metadata(path) {
        Ok(m) => kind_of_type(m.file_type()),
        Err(e) if is_loop(&e) => PathKind::SymlinkLoop,
        Err(e) if e.kind() == io::ErrorKind::NotFound => match follow_links(path) {
            Ok(target) if target != path => PathKind::DanglingLink(target),
            Ok(_) => PathKind::Missing,
            Err(_) => PathKind::SymlinkLoop,
        },
        Err(e) => PathKind::Unreachable(e),
    }
}

fn kind_of_type(t: std::fs::FileType) -> PathKind {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return PathKind::Fifo;
        }
        if t.is_char_device() {
            return PathKind::CharDevice;
        }
        if t.is_block_device() {
            return PathKind::BlockDevice;
        }
        if t.is_socket() {
            return PathKind::Socket;
        }
    }
    if t.is_dir() {
        PathKind::Dir
    } else {
        PathKind::File
    }
}

/// The path `path` leads to once every symbolic link of its last component is followed (the
/// links' own text, joined to the directory that holds them); `path` itself when it is no link.
/// Fails on a loop (more than 40 links).
pub fn follow_links(path: &Path) -> io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(&p)?;
                p = match p.parent() {
                    Some(dir) if to.is_relative() => dir.join(to),
                    _ => to,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(io::Error::other(format!(
        "{}: more than {MAX_LINKS} symbolic links (a loop)",
        path.display()
    )))
}

/// ELOOP: too many levels of symbolic links.
pub fn is_loop(e: &io::Error) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const ELOOP: i32 = 40;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const ELOOP: i32 = 62;
    cfg!(unix) && e.raw_os_error() == Some(ELOOP)
}

/// ENAMETOOLONG: a file name (or the whole path) longer than the file system takes.
pub fn is_name_too_long(e: &io::Error) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const ENAMETOOLONG: i32 = 36;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const ENAMETOOLONG: i32 = 63;
    cfg!(unix) && e.raw_os_error() == Some(ENAMETOOLONG)
}

/// Reads a whole regular file of at most `max_bytes`, refusing anything else with a line that
/// says what `path` is (a directory, a FIFO, a loop …) and what `what` it was meant to be.
pub fn read_bounded(path: &Path, what: &str, max_bytes: u64) -> anyhow::Result<Vec<u8>> {
    use anyhow::{bail, Context};
    use std::io::Read;
    require_file(path, what)?;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open {what} {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot read {what} {}", path.display()))?
        .len();
    if len > max_bytes {
        bail!(
            "{what} {} is {len} bytes; at most {max_bytes} are read (is it the right file?)",
            path.display()
        );
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take` also bounds a file that grows while it is read.
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if bytes.len() as u64 > max_bytes {
        bail!(
            "{what} {} grew past {max_bytes} bytes while being read",
            path.display()
        );
    }
    Ok(bytes)
}

/// Fails unless `path` is a regular file (after links), saying what it is instead; `what`
/// names the file's role ("model config", "weights file" …).
pub fn require_file(path: &Path, what: &str) -> anyhow::Result<()> {
    match kind_of(path) {
        PathKind::File => Ok(()),
        PathKind::Missing => anyhow::bail!("{what} {} does not exist", path.display()),
        other => anyhow::bail!("{what} {} {other}; expected a file", path.display()),
    }
}

/// [`read_bounded`] for UTF-8 text (configs, reports).
pub fn read_text_bounded(path: &Path, what: &str, max_bytes: u64) -> anyhow::Result<String> {
    let bytes = read_bounded(path, what, max_bytes)?;
    String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{what} {} is not UTF-8 text ({e})", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ddim-kind-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[cfg(unix)]
    #[test]
    fn kinds_are_named() {
        let dir = temp_dir("kinds");
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(kind_of(&file), PathKind::File));
        assert!(matches!(kind_of(&dir), PathKind::Dir));
        assert!(matches!(kind_of(&dir.join("nope")), PathKind::Missing));
        std::os::unix::fs::symlink("loop-b", dir.join("loop-a")).unwrap();
        std::os::unix::fs::symlink("loop-a", dir.join("loop-b")).unwrap();
        assert!(matches!(
            kind_of(&dir.join("loop-a")),
            PathKind::SymlinkLoop
        ));
        std::os::unix::fs::symlink("gone", dir.join("dangling")).unwrap();
        match kind_of(&dir.join("dangling")) {
            PathKind::DanglingLink(to) => assert_eq!(to, dir.join("gone")),
            other => panic!("dangling link seen as {other}"),
        }
        assert!(matches!(kind_of(&file.join("x")), PathKind::Unreachable(_)));
        assert!(kind_of(Path::new("/dev/null")).is_stream());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bounded_reads_refuse_big_files_and_wrong_kinds() {
        let dir = temp_dir("bounded");
        let file = dir.join("c.json");
        std::fs::write(&file, b"0123456789").unwrap();
        assert_eq!(read_bounded(&file, "config", 10).unwrap().len(), 10);
        let e = read_bounded(&file, "config", 9).unwrap_err().to_string();
        assert!(e.contains("10 bytes") && e.contains("at most 9"), "{e}");
        let e = read_bounded(&dir, "config", 9).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = read_bounded(&dir.join("nope"), "config", 9)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

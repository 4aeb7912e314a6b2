//! No-follow file system access relative to open directory descriptors.
//!
//! Every component is opened with `openat(..., O_NOFOLLOW)` from its parent's
//! descriptor, so a symlink swapped in anywhere (even while we walk) is never
//! followed: the walk stays inside the tree it started in.

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What a directory entry is, from `lstat`-like metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Unknown,
}

impl Kind {
    pub(crate) fn of(st: &FileStat) -> Self {
        let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        match fmt {
            SFlag::S_IFREG => Self::File,
            SFlag::S_IFDIR => Self::Dir,
            SFlag::S_IFLNK => Self::Symlink,
            SFlag::S_IFIFO => Self::Fifo,
            SFlag::S_IFSOCK => Self::Socket,
            SFlag::S_IFCHR => Self::CharDevice,
            SFlag::S_IFBLK => Self::BlockDevice,
            _ => Self::Unknown,
        }
    }

    /// How errors name it.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::File => "regular file",
            Self::Dir => "directory",
            Self::Symlink => "symbolic link",
            Self::Fifo => "FIFO",
            Self::Socket => "socket",
            Self::CharDevice => "character device",
            Self::BlockDevice => "block device",
            Self::Unknown => "file of unknown type",
        }
    }
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Opens `path` as a directory; its last component must not be a symlink.
pub(crate) fn open_dir_path(path: &Path) -> io::Result<Dir> {
    Dir::open(path, DIR_FLAGS, Mode::empty()).map_err(io_err)
}

/// Opens the directory `name` inside `parent` without following a symlink.
pub(crate) fn open_dir_at(parent: &impl AsFd, name: &OsStr) -> io::Result<Dir> {
    Dir::openat(parent.as_fd(), name, DIR_FLAGS, Mode::empty()).map_err(io_err)
}

/// `lstat` of `name` inside `dir`.
pub(crate) fn stat_at(dir: &impl AsFd, name: &OsStr) -> io::Result<FileStat> {
    fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(io_err)
}

/// Opens `name` inside `dir` for reading without following a symlink and
/// without blocking on a FIFO; returns the file and its `fstat` (the caller
/// checks it is a regular file: that check is race-free, unlike a prior stat).
pub(crate) fn open_file_at(dir: &impl AsFd, name: &OsStr) -> io::Result<(File, FileStat)> {
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd = openat(dir.as_fd(), name, flags, Mode::empty()).map_err(io_err)?;
    let st = fstat(&fd).map_err(io_err)?;
    Ok((File::from(fd), st))
}

/// The entries of `dir` (without `.` and `..`), sorted by their bytes; at
/// most `max` of them, else `Ok(Err(()))`.
pub(crate) fn list(dir: &mut Dir, max: usize) -> io::Result<Result<Vec<OsString>, ()>> {
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(io_err)?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        if names.len() == max {
            return Ok(Err(()));
        }
        names.push(name.to_os_string());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(Ok(names))
}

/// Whether an `open(O_NOFOLLOW)` error means the entry is a symlink.
pub(crate) fn is_symlink_error(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

//! The Pod sandbox: a network namespace holding only loopback, a UTS namespace
//! named after the Pod and a private mount namespace whose root is a tmpfs that
//! mirrors the host root with bind mounts. Volumes are bind-mounted at their
//! `mountPath` in a per-container mount namespace derived from it; missing mount
//! points are created on tmpfs "shadows" so the host filesystem is never touched.
//!
//! The namespaces are created by a dedicated thread (namespaces are per thread)
//! that stays in the Pod's network namespace to create sockets for it: a socket
//! belongs to the namespace of the thread that created it, so listeners and
//! connections made there live on the Pod's own loopback. Open namespace fds
//! keep the namespaces alive; when the sandbox and the Pod's processes are gone
//! the kernel frees them together with every mount inside.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// A thread living in the Pod's namespaces that runs jobs there.
#[derive(Debug)]
struct NsThread {
    tx: mpsc::Sender<Job>,
}

impl NsThread {
    fn start<T: Send + 'static>(
        name: String,
        setup: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<(Self, T)> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<T>>(1);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let setup_result = setup();
                let ok = setup_result.is_ok();
                let _ = ready_tx.send(setup_result);
                if ok {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                }
            })
            .map_err(|e| Error::io("starting sandbox thread", e))?;
        let value = ready_rx
            .recv()
            .map_err(|_| Error::Other("sandbox thread died during setup".into()))??;
        Ok((Self { tx }, value))
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| Error::Other("sandbox thread is gone".into()))?;
        rx.await
            .map_err(|_| Error::Other("sandbox thread dropped a job".into()))
    }
}

/// A volume to bind into a container's filesystem view.
#[derive(Debug, Clone)]
pub struct MountSpec {
    /// Host path (volume directory, possibly with subPath).
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub target: PathBuf,
    pub read_only: bool,
}

/// The namespaces of one Pod.
#[derive(Debug)]
pub struct Sandbox {
    thread: NsThread,
    net: OwnedFd,
    mnt: OwnedFd,
    uts: OwnedFd,
}

struct NsFds {
    net: OwnedFd,
    mnt: OwnedFd,
    uts: OwnedFd,
}

impl Sandbox {
    /// Creates the namespaces. `pod_dir` must be absolute; its `rootfs`
    /// subdirectory becomes the Pod's root, `hosts_file` is bound over
    /// `/etc/hosts`, `memory_dirs` get a tmpfs (emptyDir medium Memory).
    pub fn create(
        pod_dir: &Path,
        hostname: &str,
        hosts_file: &Path,
        memory_dirs: Vec<(PathBuf, Option<u64>)>,
    ) -> Result<Self> {
        let rootfs = pod_dir.join("rootfs");
        fs::create_dir_all(&rootfs)
            .map_err(|e| Error::io(format!("creating {}", rootfs.display()), e))?;
        let hostname = hostname.to_string();
        let hosts_file = hosts_file.to_path_buf();
        let thread_name = format!("sandbox-{}", &hostname[..hostname.len().min(8)]);
        let (thread, fds) = NsThread::start(thread_name, move || {
            setup_namespaces(&rootfs, &hostname, &hosts_file, &memory_dirs)
        })?;
        Ok(Self {
            thread,
            net: fds.net,
            mnt: fds.mnt,
            uts: fds.uts,
        })
    }

    pub fn net_fd(&self) -> BorrowedFd<'_> {
        self.net.as_fd()
    }

    pub fn uts_fd(&self) -> BorrowedFd<'_> {
        self.uts.as_fd()
    }

    /// Inode numbers of the network and mount namespaces (to verify teardown).
    pub fn namespace_inodes(&self) -> (u64, u64) {
        let ino = |fd: &OwnedFd| {
            nix::sys::stat::fstat(fd.as_fd())
                .map(|s| s.st_ino)
                .unwrap_or(0)
        };
        (ino(&self.net), ino(&self.mnt))
    }

    /// A mount namespace for one container: the Pod's, plus `mounts`. With
    /// `read_only_root` everything but the volumes (and /dev, /proc, /sys) is
    /// read-only, as `securityContext.readOnlyRootFilesystem` asks.
    pub async fn container_mount_ns(
        &self,
        mounts: Vec<MountSpec>,
        read_only_root: bool,
    ) -> Result<OwnedFd> {
        let base = self
            .mnt
            .try_clone()
            .map_err(|e| Error::io("duplicating mount namespace fd", e))?;
        self.thread
            .run(move || {
                let result = unshare(CloneFlags::CLONE_NEWNS)
                    .map_err(|e| Error::sys("unshare(CLONE_NEWNS) for a container", e))
                    .and_then(|()| {
                        let mut owned = Owned::new();
                        let mut targets = Vec::new();
                        for m in &mounts {
                            targets.push((bind_volume(&mut owned, m)?, m.read_only));
                        }
                        if read_only_root {
                            set_read_only(Path::new("/"), true, true)?;
                            for special in ["/dev", "/proc", "/sys"] {
                                set_read_only(Path::new(special), false, true)?;
                            }
                            // In mount order, so a nested volume gets its own mode.
                            for (target, ro) in &targets {
                                set_read_only(target, *ro, false)?;
                            }
                        }
                        open_ns("mnt")
                    });
                // Always return to the Pod's mount namespace, even after an error.
                setns(base.as_fd(), CloneFlags::CLONE_NEWNS)
                    .map_err(|e| Error::sys("returning to the pod mount namespace", e))?;
                result
            })
            .await?
    }

    /// Connects to `addr` from inside the Pod (its loopback is the Pod's own).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<tokio::net::TcpStream> {
        let std_stream = self
            .thread
            .run(move || {
                let s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
                s.set_nonblocking(true)?;
                Ok::<_, io::Error>(s)
            })
            .await
            .map_err(io::Error::other)??;
        tokio::net::TcpStream::from_std(std_stream)
    }

    /// Listens on `addr` inside the Pod.
    pub async fn listen(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
        let std_listener = self
            .thread
            .run(move || {
                let l = std::net::TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Ok::<_, io::Error>(l)
            })
            .await
            .map_err(io::Error::other)??;
        tokio::net::TcpListener::from_std(std_listener)
    }
}

fn open_ns(kind: &str) -> Result<OwnedFd> {
    let path = format!("/proc/thread-self/ns/{kind}");
    fs::File::open(&path)
        .map(OwnedFd::from)
        .map_err(|e| Error::io(format!("opening {path}"), e))
}

fn setup_namespaces(
    rootfs: &Path,
    hostname: &str,
    hosts_file: &Path,
    memory_dirs: &[(PathBuf, Option<u64>)],
) -> Result<NsFds> {
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
        .map_err(|e| Error::sys("unshare(net, mount, uts) for a pod", e))?;
    // Nothing mounted from here on may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| Error::sys("making / private in the pod mount namespace", e))?;
    nix::unistd::sethostname(hostname).map_err(|e| Error::sys("sethostname", e))?;
    loopback_up()?;

    mount_tmpfs(rootfs, 0o755, 0, 0, None)?;
    // Mirror the host root. Bind the entry holding the rootfs first, while the
    // rootfs is still empty, so the recursive bind does not copy its contents.
    let holder = rootfs
        .components()
        .nth(1)
        .map(|c| c.as_os_str().to_os_string());
    let mut entries: Vec<_> = fs::read_dir("/")
        .map_err(|e| Error::io("reading /", e))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    entries.sort_by_key(|name| (Some(name) != holder.as_ref(), name.clone()));
    for name in entries {
        mirror_entry(&Path::new("/").join(&name), &rootfs.join(&name))?;
    }

    let old = rootfs.join(".oldroot");
    fs::create_dir(&old).map_err(|e| Error::io("creating .oldroot", e))?;
    nix::unistd::pivot_root(rootfs, &old).map_err(|e| Error::sys("pivot_root", e))?;
    nix::unistd::chdir("/").map_err(|e| Error::sys("chdir /", e))?;
    umount2("/.oldroot", MntFlags::MNT_DETACH).map_err(|e| Error::sys("detaching old root", e))?;
    fs::remove_dir("/.oldroot").map_err(|e| Error::io("removing /.oldroot", e))?;

    bind(hosts_file, Path::new("/etc/hosts"), false)?;
    for (dir, size) in memory_dirs {
        mount_tmpfs(dir, 0o777, 0, 0, *size)?;
    }
    Ok(NsFds {
        net: open_ns("net")?,
        mnt: open_ns("mnt")?,
        uts: open_ns("uts")?,
    })
}

/// Brings `lo` up: a new network namespace has only a loopback device, down.
fn loopback_up() -> Result<()> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(Error::io("socket for ioctl", io::Error::last_os_error()));
        }
        let fd = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(Error::io("SIOCGIFFLAGS lo", io::Error::last_os_error()));
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(Error::io("SIOCSIFFLAGS lo up", io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn mount_tmpfs(target: &Path, mode: u32, uid: u32, gid: u32, size: Option<u64>) -> Result<()> {
    let mut opts = format!("mode={mode:o},uid={uid},gid={gid}");
    if let Some(size) = size {
        opts.push_str(&format!(",size={size}"));
    }
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| Error::sys(format!("mounting tmpfs on {}", target.display()), e))
}

fn bind(source: &Path, target: &Path, read_only: bool) -> Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        Error::sys(
            format!("bind-mounting {} on {}", source.display(), target.display()),
            e,
        )
    })?;
    if read_only {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| Error::sys(format!("remounting {} read-only", target.display()), e))?;
    }
    Ok(())
}

/// Recreates `src` at `dst` (on a tmpfs): directories and files as bind mounts,
/// symlinks as symlinks.
fn mirror_entry(src: &Path, dst: &Path) -> Result<()> {
    let md =
        fs::symlink_metadata(src).map_err(|e| Error::io(format!("stat {}", src.display()), e))?;
    let ft = md.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(src).map_err(|e| Error::io("readlink", e))?;
        symlink(target, dst).map_err(|e| Error::io(format!("symlink {}", dst.display()), e))
    } else if ft.is_dir() {
        fs::create_dir(dst).map_err(|e| Error::io(format!("mkdir {}", dst.display()), e))?;
        bind(src, dst, false)
    } else {
        fs::File::create(dst).map_err(|e| Error::io(format!("create {}", dst.display()), e))?;
        bind(src, dst, false)
    }
}

/// Directories of this mount namespace that live on our own tmpfs, where new
/// mount points may be created without touching the host.
struct Owned {
    dirs: HashSet<PathBuf>,
    shadows: usize,
}

impl Owned {
    fn new() -> Self {
        Self {
            dirs: HashSet::from([PathBuf::from("/")]),
            shadows: 0,
        }
    }

    /// Makes `dir` writable by covering it with a tmpfs that mirrors its entries.
    fn make_writable(&mut self, dir: &Path) -> Result<()> {
        if self.dirs.contains(dir) {
            return Ok(());
        }
        let md = fs::metadata(dir).map_err(|e| Error::io(format!("stat {}", dir.display()), e))?;
        // The original view is kept aside (on the pod's root tmpfs) while the
        // tmpfs goes on top, then mirrored into it.
        self.shadows += 1;
        let aside = PathBuf::from(format!("/.shadow-{}", self.shadows));
        fs::create_dir(&aside).map_err(|e| Error::io(format!("mkdir {}", aside.display()), e))?;
        bind(dir, &aside, false)?;
        mount_tmpfs(dir, md.mode() & 0o7777, md.uid(), md.gid(), None)?;
        let entries: Vec<_> = fs::read_dir(&aside)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        for name in entries {
            mirror_entry(&aside.join(&name), &dir.join(&name))?;
        }
        umount2(&aside, MntFlags::MNT_DETACH).map_err(|e| Error::sys("detaching shadow", e))?;
        let _ = fs::remove_dir(&aside);
        self.dirs.insert(dir.to_path_buf());
        Ok(())
    }
}

/// Binds one volume, creating its mount point (and parents) if needed.
fn bind_volume(owned: &mut Owned, m: &MountSpec) -> Result<PathBuf> {
    let source_is_dir = fs::metadata(&m.source)
        .map_err(|e| Error::io(format!("volume source {}", m.source.display()), e))?
        .is_dir();
    let target = ensure_mount_point(owned, &m.target, source_is_dir)?;
    bind(&m.source, &target, m.read_only)?;
    Ok(target)
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// Sets or clears the read-only flag of the mount at `path` (and, with
/// `recursive`, of every mount below it).
fn set_read_only(path: &Path, read_only: bool, recursive: bool) -> Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::invalid("mount path", path.display().to_string(), "contains NUL"))?;
    let attr = MountAttr {
        attr_set: if read_only { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: if read_only { 0 } else { MOUNT_ATTR_RDONLY },
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: valid NUL-terminated path and a correctly sized mount_attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            flags as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(Error::io(
            format!("mount_setattr({}, read_only={read_only})", path.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Resolves `target` inside the namespace (following symlinks like /var/run)
/// and creates what is missing, on tmpfs only. Returns the resolved path.
fn ensure_mount_point(owned: &mut Owned, target: &Path, is_dir: bool) -> Result<PathBuf> {
    let mut comps: Vec<&OsStr> = Vec::new();
    for c in target.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) => comps.push(s),
            _ => {
                return Err(Error::invalid(
                    "volumeMounts.mountPath",
                    target.display().to_string(),
                    "must be absolute without '.' or '..' components",
                ));
            }
        }
    }
    let mut cur = PathBuf::from("/");
    let last = comps.len();
    for (i, comp) in comps.into_iter().enumerate() {
        let next = cur.join(comp);
        let is_last = i + 1 == last;
        match fs::symlink_metadata(&next) {
            Ok(md) if md.file_type().is_symlink() => {
                cur = fs::canonicalize(&next)
                    .map_err(|e| Error::io(format!("resolving {}", next.display()), e))?;
            }
            Ok(_) => cur = next,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                owned.make_writable(&cur)?;
                if is_last && !is_dir {
                    fs::File::create(&next)
                        .map_err(|e| Error::io(format!("creating {}", next.display()), e))?;
                } else {
                    fs::create_dir(&next)
                        .map_err(|e| Error::io(format!("creating {}", next.display()), e))?;
                    owned.dirs.insert(next.clone());
                }
                cur = next;
            }
            Err(e) => return Err(Error::io(format!("stat {}", next.display()), e)),
        }
    }
    Ok(cur)
}

//! A short scheduler slice for the server's own threads.
//!
//! Why: `posix_spawn` returns once the child has exec'd, and the kernel then
//! wakes the server where the child runs. On a kernel that keeps a woken task
//! on its waker's CPU (the bench VM's `sched_vcpu_pack`), the server then
//! waited behind the whole start-up of the process it had just spawned (~1.5
//! ms for `bash -c true`) before it could send `started`, so runtimed's
//! answer to the client and the Run's exit were handled back to back at the
//! end. A slice of 0.1 ms (EEVDF's custom slice, Linux 6.12 and later; no
//! privilege needed) gives the woken server an earlier deadline, so it runs
//! first, for the fraction of a millisecond it needs. Measured: bash Run
//! 1.38-1.47x vs 1.47-1.51x spawn+wait, interleaved (docs/benchmarks.md).
//!
//! Only the server's threads: `SCHED_FLAG_RESET_ON_FORK` gives every process
//! it spawns the default slice back, so Runs are scheduled as before. The
//! policy and nice value stay what they were (an operator's `nice` holds); on
//! older kernels the slice is ignored and nothing else changes.

/// The shortest slice the kernel accepts.
const SLICE_NS: u64 = 100_000;

/// Applies the short slice to the calling thread. Failure only costs the
/// latency gain, so it is logged at debug level and otherwise ignored.
pub fn request_short_slice() {
    if let Err(e) = set_short_slice() {
        tracing::debug!(error = %e, "scheduler slice left at the default");
    }
}

/// The calling thread's scheduling attributes.
fn current_attr() -> std::io::Result<libc::sched_attr> {
    let size = std::mem::size_of::<libc::sched_attr>();
    // SAFETY: sched_attr is plain data; all-zero is a valid value.
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most `size` bytes into `attr`.
    let r = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr, size, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr)
}

fn set_short_slice() -> std::io::Result<()> {
    let mut attr = current_attr()?;
    if !matches!(
        attr.sched_policy as i32,
        libc::SCHED_OTHER | libc::SCHED_BATCH
    ) {
        return Ok(()); // real-time or idle: the operator chose; leave it.
    }
    attr.size = std::mem::size_of::<libc::sched_attr>() as u32;
    attr.sched_runtime = SLICE_NS;
    // Only this flag: others reported back (utilisation clamps) would need
    // fields beyond this first version of the struct.
    attr.sched_flags = libc::SCHED_FLAG_RESET_ON_FORK as u64;
    // SAFETY: `attr` is initialised and `attr.size` bytes long.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr_of_this_thread() -> libc::sched_attr {
        current_attr().expect("sched_getattr")
    }

    fn slice_of(sched: &str) -> Option<u64> {
        sched
            .lines()
            .find_map(|l| l.strip_prefix("se.slice"))
            .and_then(|v| v.trim_start_matches([' ', ':']).trim().parse().ok())
    }

    /// The thread gets the short slice (where the kernel has custom slices)
    /// and keeps its policy; a process it spawns, as a Run is, and a thread
    /// it creates start from the default again.
    #[test]
    fn slice_is_set_and_not_inherited() {
        std::thread::spawn(|| {
            let before = attr_of_this_thread();
            set_short_slice().unwrap();
            let after = attr_of_this_thread();
            assert_eq!(after.sched_policy, before.sched_policy);
            assert_eq!(after.sched_nice, before.sched_nice);
            assert_ne!(after.sched_flags & libc::SCHED_FLAG_RESET_ON_FORK as u64, 0);
            // Kernels before 6.12 report no slice for fair tasks.
            if before.sched_runtime != 0 {
                assert_eq!(after.sched_runtime, SLICE_NS);
                let out = std::process::Command::new("cat")
                    .arg("/proc/self/sched")
                    .output()
                    .unwrap();
                let child = slice_of(&String::from_utf8_lossy(&out.stdout));
                assert_eq!(
                    child,
                    Some(before.sched_runtime),
                    "a spawned process keeps the default"
                );
            }
            let thread = std::thread::spawn(attr_of_this_thread).join().unwrap();
            assert_eq!(
                thread.sched_flags & libc::SCHED_FLAG_RESET_ON_FORK as u64,
                0
            );
            assert_ne!(thread.sched_runtime, SLICE_NS);
        })
        .join()
        .unwrap();
    }
}

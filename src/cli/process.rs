//! Settings of the `segments` process, made before any thread starts, and
//! the memory it gives back while serving.

/// Process settings made before any thread starts.
///
/// - A closed pipe (`segments ... | head`) ends the process quietly, as it
///   does other Unix tools, instead of failing a write. Sockets are written
///   with `MSG_NOSIGNAL`, so `serve` is not affected.
/// - Freed memory stays in the process instead of going back to the kernel
///   at every free: batches of 64K rows are allocated and freed over and
///   over, and glibc's defaults (trim above 128 KiB, map blocks above 128
///   KiB) made a fresh process fault its pages in again batch after batch
///   (a preview in a new process took 1.2 to 1.7 times as long as in a warm
///   one).
/// - One malloc arena per core. glibc's default, eight per core, gives
///   each of DataFusion's many threads an arena of its own, and memory
///   freed in one arena serves no other: the 1M-contact nightly peaked at
///   490–540 MiB against 415–435 MiB with one arena per core, in the same
///   time. One arena in all saved 35 MiB more but cost 7% of CPU time.
#[allow(unsafe_code)]
pub(super) fn setup() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let arenas = std::thread::available_parallelism().map_or(2, |n| n.get());
    // SAFETY: both calls only change process settings, before any other
    // thread exists.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        libc::mallopt(libc::M_ARENA_MAX, arenas as libc::c_int);
    }
}

/// Give the memory freed since the last call back to the system. The
/// settings above keep freed memory in the process, which a command that
/// ends soon wants; a server that ran a large query would keep its peak
/// for good, so `serve` calls this every few seconds.
#[allow(unsafe_code)]
pub(super) fn return_freed_memory() {
    // SAFETY: malloc_trim only walks glibc's own free lists.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

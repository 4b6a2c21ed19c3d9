//! The C heap libvirt allocates from. libvirt and the libraries it loads
//! (glib, libtirpc, gnutls) use glibc's malloc, as does the agent. Left at
//! its defaults, glibc gives every thread that allocates its own arena (up to
//! eight per core) and raises its mmap threshold after each large free, so
//! the megabyte buffers of a bulk stats reply end up inside arenas that keep
//! their peak for good. Measured on 120 tenant-shaped domains with every
//! group (docs/benchmarks.md): 34 MiB of anonymous memory with the defaults,
//! 14 MiB with one arena and fixed thresholds; jemalloc and mimalloc as the
//! agent's allocator did worse (38 and 64 MiB: libvirt's part stays in glibc).

/// The tuning applied at start-up unless the environment sets glibc's own
/// variables (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`, ...).
#[derive(Debug, Clone, Copy)]
pub struct HeapTuning {
    /// One arena: the agent's threads allocate little and rarely at once.
    pub arenas: i32,
    /// Blocks from this size on are mmapped and returned to the kernel when
    /// freed (a fixed value also stops glibc from raising it).
    pub mmap_threshold: i32,
    /// Free memory at the top of the heap beyond this goes back at once.
    pub trim_threshold: i32,
}

pub const DEFAULT_TUNING: HeapTuning = HeapTuning { arenas: 1, mmap_threshold: 128 * 1024, trim_threshold: 512 * 1024 };

/// Whether the environment already tunes glibc's malloc.
pub fn tuned_by_environment(vars: impl IntoIterator<Item = String>) -> bool {
    vars.into_iter().any(|k| k.starts_with("MALLOC_") || k == "GLIBC_TUNABLES")
}

/// Applies the tuning; call before any other thread starts. Returns false
/// when glibc refused a value (its default then stays in effect).
pub fn tune(t: HeapTuning) -> bool {
    // SAFETY: mallopt only changes tunables of the allocator; it is called
    // at start-up, before other threads exist.
    unsafe {
        let a = libc::mallopt(libc::M_ARENA_MAX, t.arenas);
        let m = libc::mallopt(libc::M_MMAP_THRESHOLD, t.mmap_threshold);
        let r = libc::mallopt(libc::M_TRIM_THRESHOLD, t.trim_threshold);
        a == 1 && m == 1 && r == 1
    }
}

/// Gives free heap pages back to the kernel, those between live blocks too
/// (glibc only returns the top of the heap by itself). Called after a new
/// snapshot replaced the old one: about a millisecond for a heap of tens
/// of MiB, against RSS that would otherwise keep the fragments of every
/// earlier snapshot.
pub fn trim() {
    // SAFETY: malloc_trim takes no pointers; it is safe from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_wins() {
        assert!(tuned_by_environment(["PATH".to_string(), "MALLOC_ARENA_MAX".to_string()]));
        assert!(tuned_by_environment(["GLIBC_TUNABLES".to_string()]));
        assert!(!tuned_by_environment(["PATH".to_string(), "VIRTPULSE_X".to_string()]));
    }

    #[test]
    fn glibc_accepts_the_tuning() {
        assert!(tune(DEFAULT_TUNING));
    }
}

//! Memory as the benchmarks report it: the process's resident set (`VmRSS`) and, when the
//! binary installs [`CountingAlloc`] as its global allocator, the exact number of live heap
//! bytes (what the allocator handed out and got not back), which does not depend on how the
//! allocator keeps freed pages.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes. Install it with
/// `#[global_allocator] static A: CountingAlloc = CountingAlloc;` (one relaxed atomic add per
/// allocation and per free).
#[derive(Debug)]
pub struct CountingAlloc;

// SAFETY: every call is forwarded to `System` with the same arguments; the counter is only
// bookkeeping.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `GlobalAlloc::alloc`, passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `new_size` is the caller's, unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

/// Live heap bytes, if [`CountingAlloc`] is the global allocator (`None` otherwise: then
/// nothing was ever counted).
pub fn heap_bytes() -> Option<usize> {
    match LIVE.load(Ordering::Relaxed) {
        0 => None,
        n => Some(n),
    }
}

/// The resident set size from `/proc/self/status` (`None` where there is none).
pub fn rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Both measures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Live heap bytes ([`heap_bytes`]).
    pub heap: Option<usize>,
    /// Resident set ([`rss_bytes`]).
    pub rss: Option<usize>,
}

impl Usage {
    /// Now.
    pub fn now() -> Usage {
        Usage {
            heap: heap_bytes(),
            rss: rss_bytes(),
        }
    }
}

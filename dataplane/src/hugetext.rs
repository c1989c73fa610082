//! The agent's machine code moved onto transparent huge pages at start-up.
//!
//! Why: a proxy that sleeps between requests (a mesh at ordinary load) runs its request path
//! cold after every wake-up: the vCPU halted, and the TLB lost the ~100 4 KiB code pages one
//! request walks through. Each miss is a page walk, two-dimensional under a hypervisor
//! (benches/RESULTS.md: the open loop's user code runs ~3.5x slower than the same code hot).
//! On 2 MiB pages the whole request path fits in a handful of TLB entries.
//!
//! How (as Chromium's `hugepage_text` and HHVM do): the 2 MiB-aligned part of the executable
//! segment is copied into an anonymous mapping advised `MADV_HUGEPAGE`, made executable, and
//! `mremap`ped over the original. `mremap` swaps the pages in one system call, and the bytes
//! are the same on both sides of it, so code running at the time (this function's caller
//! included) goes on unaware. Done first thing in `main`, before any thread is started.
//!
//! The agent is linked so that its code starts on a 2 MiB boundary (`dataplane/build.rs`):
//! otherwise the segment starts anywhere in a 2 MiB page, and its first part, which is where
//! the profile-guided build puts the hottest functions, stays on 4 KiB pages (in the PGO build
//! of 2026-12-07, 87 % of the samples in the agent's own code fell in the first 0.5 MB).
//!
//! Page cache huge pages would avoid the copy, but `CONFIG_READ_ONLY_THP_FOR_FS` (the only way
//! an executable's own file pages become huge) is off in common kernels, this one included.
//! The `page-primer` crate does the same remap; it is a two-release crate from 2024 with a
//! handful of users, and the 100 lines here are easier to keep right than a dependency.
//!
//! The cost: the code is no longer shared with the page cache, so the agent's resident memory
//! grows by the remapped size, and tools that symbolize through the file mapping (perf without
//! a `perf-<pid>.map`) see anonymous memory there. `MYELIN_HUGE_TEXT=0` turns it off.

use std::{fs, io, ptr};

const HUGE: usize = 2 << 20;

/// What [`remap`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remapped {
    /// The start of the remapped range (2 MiB-aligned).
    pub start: usize,
    /// Bytes of code remapped (a multiple of 2 MiB).
    pub len: usize,
    /// Of them, bytes the kernel put on huge pages (from `/proc/self/smaps`).
    pub huge: usize,
}

/// Whether the environment turns the remap off (`MYELIN_HUGE_TEXT=0`, `off` or `false`).
pub fn disabled_by_env() -> bool {
    std::env::var("MYELIN_HUGE_TEXT")
        .map(|v| matches!(v.as_str(), "0" | "off" | "false"))
        .unwrap_or(false)
}

/// Moves the 2 MiB-aligned part of the executable segment holding this code onto anonymous
/// memory advised for huge pages. `Ok(None)`: nothing to do (transparent huge pages are
/// `never`, or the segment holds no whole aligned 2 MiB). On an error before the swap nothing
/// has changed; the swap itself either happens whole or not at all.
///
/// Call it before any other thread exists: another thread in the middle of a page fault on the
/// old text is safe (the bytes are the same), but there is no reason to find out.
pub fn remap() -> io::Result<Option<Remapped>> {
    let thp = fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !thp.contains("[always]") && !thp.contains("[madvise]") {
        return Ok(None);
    }
    let here = remap as fn() -> io::Result<Option<Remapped>> as usize;
    let maps = fs::read_to_string("/proc/self/maps")?;
    let Some((seg_start, seg_end)) = maps.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (range, perms) = (f.next()?, f.next()?);
        let (a, b) = range.split_once('-')?;
        let (a, b) = (
            usize::from_str_radix(a, 16).ok()?,
            usize::from_str_radix(b, 16).ok()?,
        );
        (perms.starts_with("r-x") && (a..b).contains(&here)).then_some((a, b))
    }) else {
        return Err(io::Error::other(
            "no executable mapping holds the agent's code",
        ));
    };
    let start = seg_start.next_multiple_of(HUGE);
    let end = seg_end / HUGE * HUGE;
    if end <= start {
        return Ok(None);
    }
    let len = end - start;

    // SAFETY: a fresh private anonymous mapping (with room to align it), written only here;
    // the code range [start, end) lies inside a readable mapping found above. The final
    // mremap replaces [start, end) with a copy of itself.
    unsafe {
        let raw = libc::mmap(
            ptr::null_mut(),
            len + HUGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let raw = raw as usize;
        let copy = raw.next_multiple_of(HUGE);
        // The slack before and after the aligned window goes back at once.
        if copy > raw {
            libc::munmap(raw as *mut libc::c_void, copy - raw);
        }
        // What is left past the window: the HUGE of room less what went before it (never 0).
        libc::munmap((copy + len) as *mut libc::c_void, raw + HUGE - copy);
        let fail = |e: io::Error| {
            libc::munmap(copy as *mut libc::c_void, len);
            Err(e)
        };
        // Advice before the first touch: each fault in the window then takes a whole huge
        // page (with `defrag` at its default `madvise`, compacting memory for it if needed).
        if libc::madvise(copy as *mut libc::c_void, len, libc::MADV_HUGEPAGE) != 0 {
            return fail(io::Error::last_os_error());
        }
        ptr::copy_nonoverlapping(start as *const u8, copy as *mut u8, len);
        if libc::mprotect(
            copy as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_EXEC,
        ) != 0
        {
            return fail(io::Error::last_os_error());
        }
        let moved = libc::mremap(
            copy as *mut libc::c_void,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            start as *mut libc::c_void,
        );
        if moved == libc::MAP_FAILED {
            return fail(io::Error::last_os_error());
        }
    }
    Ok(Some(Remapped {
        start,
        len,
        huge: huge_bytes_at(start).unwrap_or(0),
    }))
}

/// `AnonHugePages` of the mapping that starts at `start`, in bytes.
fn huge_bytes_at(start: usize) -> Option<usize> {
    anon_huge_pages(&fs::read_to_string("/proc/self/smaps").ok()?, start)
}

/// `AnonHugePages` in bytes of the mapping at `start` in an smaps text: its header line is
/// `start-end perms ...`, its fields follow as `Name: value` up to the next header.
fn anon_huge_pages(smaps: &str, start: usize) -> Option<usize> {
    let head = format!("{start:x}-");
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
    lines.next()?;
    lines
        .take_while(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|t| t.ends_with(':'))
        })
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_huge_pages_are_read_from_the_mappings_own_fields() {
        let smaps = "\
5600000000-5600200000 r-xp 00000000 fd:00 1234 /usr/bin/myelin
Size:               2048 kB
AnonHugePages:         0 kB
5600200000-5600800000 r-xp 00000000 00:00 0 
Size:               6144 kB
Rss:                6144 kB
AnonHugePages:      4096 kB
5600800000-5600900000 r--p 00000000 00:00 0 
AnonHugePages:      2048 kB
";
        assert_eq!(anon_huge_pages(smaps, 0x5600200000), Some(4 << 20));
        assert_eq!(anon_huge_pages(smaps, 0x5600000000), Some(0));
        assert_eq!(anon_huge_pages(smaps, 0x5600100000), None);
        // A mapping without the field does not borrow the next mapping's.
        let bare = "1000-2000 r-xp 00000000 00:00 0\nSize: 4 kB\n3000-4000 r--p 0 00:00 0\nAnonHugePages: 4 kB\n";
        assert_eq!(anon_huge_pages(bare, 0x1000), None);
    }
}

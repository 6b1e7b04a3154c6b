//! Huge pages for the large tables, asked for by the tables themselves.
//!
//! A table of millions of entries read at random misses the TLB on most accesses with 4 KiB
//! pages; with 2 MiB pages it mostly does not. The kernel's transparent huge pages are often
//! `madvise`-only, so the tables (slabs, free lists, hash lines, expiry nodes) mark their
//! fresh allocation `MADV_HUGEPAGE` right before they write it for the first time: the huge
//! pages are faulted in then (at start-up or a reservation), never lazily on the packet path.
//! Nothing else should be advised: a huge-page fault can stall for milliseconds while the
//! kernel compacts memory (`flowshift bench stall` saw 10 ms when a migration's scratch map
//! was huge-page backed and filled on the packet thread).
//!
//! A hint only: if the kernel refuses, the memory is used with normal pages.

use core::mem::MaybeUninit;

/// Regions smaller than this are not advised (no huge page fits them).
const HUGE_PAGE: usize = 2 << 20;

/// Asks for huge pages for `spare`, memory about to be written for the first time. The
/// 2 MiB-aligned part of it is what the kernel can back with huge pages (the `flowshift`
/// binary's allocator aligns large allocations so that is all of it).
pub(crate) fn advise_huge<T>(spare: &mut [MaybeUninit<T>]) {
    let len = core::mem::size_of_val(spare);
    if len < HUGE_PAGE {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let start = spare.as_mut_ptr() as usize;
        let page = 4096;
        let aligned = start.next_multiple_of(page);
        let end = start + len;
        if aligned < end {
            // SAFETY: `aligned..end` lies inside `spare`, memory this process owns and has
            // not handed out; madvise only sets a paging hint on it (no access, no unmapping).
            unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    end - aligned,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
}

//! The binary's global allocator: the system allocator, with large allocations aligned to
//! 2 MiB, so that the NAT's tables, which ask for transparent huge pages for themselves right
//! before they first write them (`flowshift_nat`'s `memory` module), are backed by whole huge
//! pages (fewer TLB misses on random lookups). Nothing is advised here: other large blocks (a
//! migration's scratch maps, filled on the packet thread) would fault huge pages in lazily,
//! and such a fault can stall for milliseconds while the kernel compacts memory.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are 2 MiB aligned.
const HUGE_THRESHOLD: usize = 4 << 20;
const HUGE_ALIGN: usize = 2 << 20;

/// See the module documentation.
pub struct HugePageAlloc;

fn huge_layout(layout: Layout) -> Option<Layout> {
    if layout.size() < HUGE_THRESHOLD {
        return None;
    }
    Layout::from_size_align(
        layout.size().next_multiple_of(HUGE_ALIGN),
        layout.align().max(HUGE_ALIGN),
    )
    .ok()
}

// SAFETY: every call is forwarded to `System` with a layout at least as large and as aligned
// as requested, and `dealloc`/`realloc` recompute the same layout from the caller's.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match huge_layout(layout) {
            Some(h) => {
                // SAFETY: `h` has non-zero size.
                unsafe { System.alloc(h) }
            }
            // SAFETY: forwarded unchanged.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match huge_layout(layout) {
            Some(h) => {
                // SAFETY: `h` has non-zero size.
                unsafe { System.alloc_zeroed(h) }
            }
            // SAFETY: forwarded unchanged.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the pointer came from `alloc` with the same mapping of layouts.
        unsafe { System.dealloc(ptr, huge_layout(layout).unwrap_or(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `new_layout` is valid and non-zero-sized (callers never pass 0).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live and at least min(old, new) bytes long; distinct.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_are_huge_aligned_and_usable() {
        let v = vec![7u8; HUGE_THRESHOLD + 1];
        assert_eq!(v.as_ptr() as usize % HUGE_ALIGN, 0);
        assert!(v.iter().all(|&b| b == 7));
        let mut w: Vec<u64> = Vec::with_capacity(16);
        w.extend(0..(HUGE_THRESHOLD as u64)); // grows through realloc across the threshold
        assert_eq!(w[12345], 12345);
    }
}

//! [`MiMalloc`]: mimalloc as a global allocator, taking mimalloc's plain entry points where the
//! alignment allows.
//!
//! The `mimalloc` crate's allocator calls `mi_malloc_aligned` for every allocation, whatever its
//! alignment; for the byte and word alignments of strings, vectors and boxes, mimalloc's plain
//! `mi_malloc` gives the same memory on a shorter path (every mimalloc block is aligned to at
//! least 8 bytes). When decoding a payment line still allocated three strings, this took decoding
//! JSON lines from 1,791 to 1,728 instructions per line, CSV from 1,290 to 1,221 (callgrind,
//! `benches/decode.rs`).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as ffi;

/// Every block mimalloc hands out is aligned to at least this.
const PLAIN_ALIGN: usize = 8;

/// mimalloc (v2), with plain calls for alignments up to 8 bytes.
pub struct MiMalloc;

// SAFETY: every path hands the request to mimalloc, which returns null or a block of at least
// `layout.size()` bytes aligned to `layout.align()`: the aligned entry points for alignments above
// 8, the plain ones (whose blocks are always 8-aligned) otherwise. Blocks from either kind are
// freed and resized by mimalloc's `mi_free`/`mi_realloc*`, which accept both.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                ffi::mi_malloc(layout.size()) as *mut u8
            } else {
                ffi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                ffi::mi_zalloc(layout.size()) as *mut u8
            } else {
                ffi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { ffi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                ffi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
            } else {
                ffi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_alignment_asked_for() {
        let a = MiMalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1usize, 3, 8, 13, 24, 100, 1000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xab, size);
                    let q = a.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc, size {size} align {align}");
                    assert_eq!(*q.add(size - 1), 0xab);
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}

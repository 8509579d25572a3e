//! Tests that watch the heap through the global allocator, in a binary of their own (a
//! binary has one global allocator, and the integration tests in `tests/it` must not run
//! under this one's counters).
//!
//! One allocator serves both: [`Counting`] counts allocation calls made on a thread that
//! asked for it (`counting`: no allocation per inference) and forwards every call to
//! `perch::memory::Tracking`, the allocator `perch-host` installs (`window`: a measurement
//! window's peak, a thread's net bytes). The tests take turns ([`alone`]): the window test
//! sees every thread's heap.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

mod counting;
mod window;

/// Allocation calls (alloc, alloc_zeroed, realloc) made on counting threads.
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Only the measuring thread counts: the test harness allocates on its own threads.
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count() {
    // `try_with`: during thread teardown the slot may be gone, and that thread is not counting.
    if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
    }
}

struct Counting;

// SAFETY: forwards every call to `perch::memory::Tracking` (which forwards to the system
// allocator) with the caller's arguments; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { perch::memory::Tracking.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { perch::memory::Tracking.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { perch::memory::Tracking.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { perch::memory::Tracking.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The tests of this binary take turns: the window test measures every thread's heap, and
/// the counting test loads models of several MB.
fn alone() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

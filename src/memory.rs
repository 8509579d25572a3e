//! Heap accounting for measurements: a global allocator that forwards to the system's and
//! keeps the live and peak byte counts, so a command can report how much memory loading and
//! running a model took. A binary opts in with
//! `#[global_allocator] static A: perch::memory::Tracking = perch::memory::Tracking;`
//! (`perch-host` does); without it [`tracking`] is false and [`peak_since`] gives `None`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The tracking allocator.
pub struct Tracking;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static USED: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Const-initialized and without a destructor: reading it never allocates, so the
    // allocator may use it.
    static THREAD_NET: Cell<isize> = const { Cell::new(0) };
}

fn thread_add(bytes: isize) {
    // During thread teardown the slot may be gone; those bytes are not anyone's measurement.
    let _ = THREAD_NET.try_with(|n| n.set(n.get().wrapping_add(bytes)));
}

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
    USED.store(true, Ordering::Relaxed);
    thread_add(bytes.cast_signed());
}

fn shrank(bytes: usize) {
    LIVE.fetch_sub(bytes, Ordering::Relaxed);
    thread_add(bytes.cast_signed().wrapping_neg());
}

// SAFETY: every call forwards to the system allocator with the caller's arguments; the
// counters are only arithmetic on the sizes.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

/// Whether the running binary installed [`Tracking`].
pub fn tracking() -> bool {
    USED.load(Ordering::Relaxed)
}

/// Heap bytes live now (every thread's), or `None` when [`Tracking`] is not installed.
pub fn live_bytes() -> Option<usize> {
    tracking().then(|| LIVE.load(Ordering::Relaxed))
}

/// Bytes the calling thread has allocated minus those it freed, or `None` when [`Tracking`]
/// is not installed. Only differences mean something: the heap a piece of work on this
/// thread kept is the difference across it, whatever other threads do meanwhile.
pub fn thread_net_bytes() -> Option<isize> {
    tracking().then(|| THREAD_NET.with(Cell::get))
}

/// A measurement window: the live bytes when it opened.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    base: usize,
}

/// Opens a window: the peak restarts from the bytes live now.
pub fn open_window() -> Window {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    Window { base }
}

/// Most bytes live at once since `window` opened, beyond those live when it opened (every
/// thread's allocations count); `None` when [`Tracking`] is not installed.
pub fn peak_since(window: Window) -> Option<usize> {
    tracking().then(|| PEAK.load(Ordering::Relaxed).saturating_sub(window.base))
}

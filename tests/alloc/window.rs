//! The heap-tracking allocator `perch-host` installs measures a window's peak.

use crate::alone;

#[test]
fn a_window_sees_its_own_peak_and_not_what_was_live_before() {
    let _alone = alone();
    let before: Vec<u8> = vec![1; 4 << 20];
    let window = perch::memory::open_window();
    {
        let a: Vec<u8> = vec![2; 1 << 20];
        let b: Vec<u8> = vec![3; 1 << 20];
        std::hint::black_box((&a, &b));
    }
    let small: Vec<u8> = vec![4; 1 << 10];
    let peak = perch::memory::peak_since(window).expect("the allocator is installed");
    assert!(perch::memory::tracking());
    // Both megabytes were live at once (one alone would be 1 MiB); the 4 MiB from before do
    // not count. Other threads may allocate or free a little meanwhile: the test harness's
    // threads free what the test that ran before this one left (measured: 97 bytes less than
    // 2 MiB, once the counting test shared this binary).
    assert!(
        ((2 << 20) - (64 << 10)..(2 << 20) + (256 << 10)).contains(&peak),
        "peak {peak}"
    );
    std::hint::black_box((&before, &small));
}

#[test]
fn a_threads_net_bytes_ignore_other_threads() {
    let _alone = alone();
    let start = perch::memory::thread_net_bytes().expect("the allocator is installed");
    let noise = std::thread::spawn(|| {
        let mut kept = Vec::new();
        for _ in 0..200 {
            kept.push(vec![0u8; 64 << 10]);
        }
        std::hint::black_box(&kept);
        kept
    });
    let mine: Vec<u8> = vec![7; 300_000];
    let freed: Vec<u8> = vec![8; 500_000];
    drop(freed);
    let other = noise.join().unwrap();
    let net = perch::memory::thread_net_bytes().unwrap() - start;
    // The 300 kB this thread kept, not the 12.5 MiB the other thread holds; the join and
    // the thread handle may add a little.
    assert!((300_000..300_000 + 4096).contains(&net), "net {net}");
    std::hint::black_box((&mine, &other));
}

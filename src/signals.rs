//! Clean stops on SIGTERM and SIGINT for the two long-running commands, `perch agent` and
//! `perch-host serve`: the first signal triggers their [`Shutdown`] (the agent closes its
//! metrics window into the queue and ends its link; the host stops accepting and lets each
//! session finish the message in hand); a second one exits at once with status 130.

use crate::sync::server::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Set by the first SIGTERM or SIGINT.
static TERMINATING: AtomicBool = AtomicBool::new(false);

/// Triggers `shutdown` when the process gets SIGTERM or SIGINT; a second signal exits
/// immediately (status 130).
///
/// # Errors
/// The handlers or the watching thread cannot be set up.
pub fn stop_on_termination(shutdown: Shutdown) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for signal in [SIGTERM, SIGINT] {
        // Registered first, so it sees the flag as the previous signal left it.
        signal_hook::flag::register_conditional_shutdown(signal, 130, &TERMINATING)?;
        signal_hook::flag::register(signal, &TERMINATING)?;
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while !TERMINATING.load(Ordering::SeqCst) && !shutdown.is_triggered() {
                std::thread::sleep(Duration::from_millis(50));
            }
            if TERMINATING.load(Ordering::SeqCst) {
                log::info!("stopping (signal received; a second one exits at once)");
                shutdown.trigger();
            }
        })?;
    Ok(())
}

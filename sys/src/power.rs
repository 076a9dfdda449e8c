//! Stopping the machine from PID 1.

use std::time::Duration;

/// Logs, waits, syncs and reboots. PID 1 must not exit (that would panic the kernel), so a
/// fatal error ends here.
pub fn fatal_reboot(delay_secs: u64) -> ! {
    crate::kmsg::line(&format!("rebooting in {delay_secs}s"));
    std::thread::sleep(Duration::from_secs(delay_secs));
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // reboot(2) only returns on failure; there is nothing left to do but wait.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

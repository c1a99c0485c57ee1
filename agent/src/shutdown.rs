//! `Shutdown`: leave the disks clean, then end the VM.

use std::time::Duration;

use nix::sys::reboot::{self, RebootMode};
use nix::unistd;

use crate::reaper;
use crate::server::{Agent, Role};

/// Ends the agent: as PID 1 by rebooting the guest (with `reboot=k` the VMM sees the
/// keyboard-controller reset and stops), in test mode by exiting.
pub fn shut_down(agent: &Agent) -> ! {
    if agent.role == Role::TestMode {
        // Processes of the test may still run; roots they hold stay (and are logged).
        agent.containers.unmount_all();
        agent.roots.unmount_all();
        std::process::exit(0);
    }
    diag!("shutting down");
    unistd::sync();
    // Processes still running would keep their roots busy, and nothing in the guest
    // outlives the VM anyway. kill(-1) from PID 1 reaches every process but PID 1.
    // SAFETY: kill takes plain integers and has no memory effects.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    if !reaper::wait_for_no_children(Duration::from_secs(2)) {
        diag!("processes are left after SIGKILL; unmounting anyway");
    }
    agent.containers.unmount_all();
    agent.roots.unmount_all();
    unistd::sync();
    power_off()
}

/// Stops the VM without any cleanup (for fatal errors, where serving is impossible).
pub fn power_off() -> ! {
    let Err(e) = reboot::reboot(RebootMode::RB_AUTOBOOT);
    diag!("reboot: {e}");
    let Err(e) = reboot::reboot(RebootMode::RB_POWER_OFF);
    diag!("power off: {e}");
    // PID 1 must not exit (the kernel would panic); wait for the host to stop the VM.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

//! How a running VM ends: the first thread to see a reason records it and wakes the owner.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine: how a husk guest reboots or powers off.
    GuestReset,
    /// Every vCPU halted with interrupts off: what a guest `poweroff` or `halt` comes to
    /// on a machine without ACPI.
    GuestHalted,
    /// The host asked the VM to stop.
    Stopped,
    /// The VM cannot continue (triple fault, KVM error, device failure).
    Error(String),
}

/// Pause bookkeeping: whether the owner wants the vCPUs parked and how many are.
#[derive(Default)]
struct PauseState {
    requested: bool,
    parked: usize,
}

/// Shared between the owner, the vCPU threads and the device thread.
pub struct VmControl {
    stop: AtomicBool,
    exit: Mutex<Option<VmExit>>,
    exit_evt: EventFd,
    pause: Mutex<PauseState>,
    pause_cv: Condvar,
    /// Per vCPU: found halted with interrupts disabled at its last check.
    dead: Vec<AtomicBool>,
}

impl VmControl {
    /// A control block for `vcpus` vCPUs whose exit eventfd blocks on read until an exit
    /// is recorded.
    pub fn new(vcpus: usize) -> std::io::Result<Self> {
        Ok(Self {
            stop: AtomicBool::new(false),
            exit: Mutex::new(None),
            exit_evt: EventFd::new(0)?,
            pause: Mutex::new(PauseState::default()),
            pause_cv: Condvar::new(),
            dead: (0..vcpus).map(|_| AtomicBool::new(false)).collect(),
        })
    }

    /// A vCPU reports whether it is halted with interrupts disabled (it can never run
    /// again). Once all are, the guest has halted for good and the VM ends.
    pub fn report_dead_halt(&self, vcpu: usize, dead: bool) {
        if let Some(flag) = self.dead.get(vcpu) {
            flag.store(dead, Ordering::SeqCst);
        }
        if dead && self.dead.iter().all(|d| d.load(Ordering::SeqCst)) {
            self.finish(VmExit::GuestHalted);
        }
    }

    fn pause_state(&self) -> MutexGuard<'_, PauseState> {
        self.pause.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks vCPUs to park at their next exit. The caller still has to kick them out of
    /// KVM_RUN; [`VmControl::wait_parked`] says when all are parked.
    pub fn request_pause(&self) {
        self.pause_state().requested = true;
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        self.pause_state().requested = false;
        self.pause_cv.notify_all();
    }

    /// Whether a pause is requested (the VM is paused or pausing).
    pub fn pause_requested(&self) -> bool {
        self.pause_state().requested
    }

    /// Waits up to `timeout` for `count` vCPUs to be parked.
    pub fn wait_parked(&self, count: usize, timeout: Duration) -> bool {
        let g = self.pause_state();
        let (g, _) = self
            .pause_cv
            .wait_timeout_while(g, timeout, |p| p.parked < count && !self.should_stop())
            .unwrap_or_else(|p| p.into_inner());
        g.parked >= count
    }

    /// Called by a vCPU thread between runs: blocks while a pause is requested, until
    /// resumed or stopped.
    pub fn park_if_paused(&self) {
        let mut g = self.pause_state();
        if !g.requested {
            return;
        }
        g.parked += 1;
        self.pause_cv.notify_all();
        while g.requested && !self.should_stop() {
            g = self.pause_cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.parked -= 1;
    }

    /// Records `reason` unless one is already recorded, and tells everyone to stop.
    pub fn finish(&self, reason: VmExit) {
        {
            let mut exit = self.exit.lock().unwrap_or_else(|p| p.into_inner());
            if exit.is_none() {
                *exit = Some(reason);
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.exit_evt.write(1);
        // Parked vCPUs must wake up to see the stop.
        let _g = self.pause_state();
        self.pause_cv.notify_all();
    }

    /// Whether threads should stop.
    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The recorded reason.
    pub fn exit_reason(&self) -> Option<VmExit> {
        self.exit.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits up to `timeout` for an exit to be recorded.
    pub fn wait_exit(&self, timeout: Duration) -> Option<VmExit> {
        let g = self.pause_state();
        let _ = self
            .pause_cv
            .wait_timeout_while(g, timeout, |_| !self.should_stop())
            .unwrap_or_else(|p| p.into_inner());
        self.exit_reason()
    }

    /// Becomes readable once an exit is recorded.
    pub fn exit_evt(&self) -> &EventFd {
        &self.exit_evt
    }
}

impl VmControl {
    /// Runs `body` (a VM thread's work); if it panics, the VM ends with an error naming
    /// `what` instead of losing the thread silently (a vCPU that is gone would leave the
    /// guest hung, and the VM with it).
    pub fn run_guarded(&self, what: &str, body: impl FnOnce()) {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            let msg = panic_message(panic.as_ref());
            tracing::error!("{what} panicked: {msg}");
            self.finish(VmExit::Error(format!("{what} failed: {msg}")));
        }
    }
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn vcpus_park_while_paused_and_run_again_on_resume() {
        let c = Arc::new(VmControl::new(2).unwrap());
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (c, runs) = (c.clone(), runs.clone());
                std::thread::spawn(move || {
                    while !c.should_stop() {
                        c.park_if_paused();
                        runs.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        c.request_pause();
        assert!(c.wait_parked(2, Duration::from_secs(5)));
        let frozen = runs.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            runs.load(Ordering::SeqCst),
            frozen,
            "parked vCPUs do not run"
        );
        c.resume();
        std::thread::sleep(Duration::from_millis(50));
        assert!(runs.load(Ordering::SeqCst) > frozen, "resumed vCPUs run");
        c.request_pause();
        assert!(c.wait_parked(2, Duration::from_secs(5)));
        c.finish(VmExit::Stopped);
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_panicking_vm_thread_ends_the_vm_with_an_error() {
        let c = Arc::new(VmControl::new(1).unwrap());
        let c2 = c.clone();
        std::thread::spawn(move || {
            c2.run_guarded("vCPU 0", || panic!("bad exit {}", 7));
        })
        .join()
        .expect("the panic does not escape the thread");
        assert_eq!(
            c.wait_exit(Duration::from_secs(5)),
            Some(VmExit::Error("vCPU 0 failed: bad exit 7".into()))
        );
    }

    #[test]
    fn the_first_reason_wins() {
        let c = VmControl::new(1).unwrap();
        assert!(!c.should_stop());
        c.finish(VmExit::Error("triple fault".into()));
        c.finish(VmExit::GuestReset);
        assert!(c.should_stop());
        assert_eq!(c.exit_reason(), Some(VmExit::Error("triple fault".into())));
        assert_eq!(c.exit_evt().read().unwrap(), 2);
    }

    #[test]
    fn the_guest_has_halted_only_when_every_vcpu_is_dead() {
        let c = VmControl::new(2).unwrap();
        c.report_dead_halt(0, true);
        c.report_dead_halt(1, false);
        assert!(!c.should_stop());
        c.report_dead_halt(0, false);
        c.report_dead_halt(1, true);
        assert!(!c.should_stop(), "vCPU 0 ran again since");
        c.report_dead_halt(0, true);
        assert_eq!(c.exit_reason(), Some(VmExit::GuestHalted));
    }
}

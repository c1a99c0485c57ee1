//! How a running VM ends: the first thread to see a reason records it and wakes the owner.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine: how a husk guest reboots or powers off.
    GuestReset,
    /// The host asked the VM to stop.
    Stopped,
    /// The VM cannot continue (triple fault, KVM error, device failure).
    Error(String),
}

/// Shared between the owner, the vCPU threads and the device thread.
pub struct VmControl {
    stop: AtomicBool,
    exit: Mutex<Option<VmExit>>,
    exit_evt: EventFd,
}

impl VmControl {
    /// A control block whose exit eventfd blocks on read until an exit is recorded.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            stop: AtomicBool::new(false),
            exit: Mutex::new(None),
            exit_evt: EventFd::new(0)?,
        })
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
    }

    /// Whether threads should stop.
    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The recorded reason.
    pub fn exit_reason(&self) -> Option<VmExit> {
        self.exit.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Becomes readable once an exit is recorded.
    pub fn exit_evt(&self) -> &EventFd {
        &self.exit_evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_wins() {
        let c = VmControl::new().unwrap();
        assert!(!c.should_stop());
        c.finish(VmExit::Error("triple fault".into()));
        c.finish(VmExit::GuestReset);
        assert!(c.should_stop());
        assert_eq!(c.exit_reason(), Some(VmExit::Error("triple fault".into())));
        assert_eq!(c.exit_evt().read().unwrap(), 2);
    }
}

//! `process.capabilities`: the five sets, by number, and the calls that apply them.

use std::io;

use anyhow::{bail, Context};
use husk_protocol::CAPABILITIES;
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The number of capability `name` (`CAP_...`).
pub fn number(name: &str) -> Option<u32> {
    CAPABILITIES
        .iter()
        .position(|n| *n == name)
        .map(|i| i as u32)
}

/// The five sets as bit masks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub inheritable: u64,
    pub permitted: u64,
    pub ambient: u64,
}

impl CapSets {
    /// The sets `caps` names; an absent set is empty.
    pub fn from_spec(caps: &LinuxCapabilities) -> anyhow::Result<CapSets> {
        let mask = |set: &Option<Capabilities>, which: &str| -> anyhow::Result<u64> {
            let mut bits = 0u64;
            for cap in set.iter().flatten() {
                let name = serde_json::to_value(cap)?;
                let name = name.as_str().unwrap_or_default();
                let Some(n) = number(name) else {
                    bail!("capability {name} in the {which} set is unknown to this agent");
                };
                bits |= 1 << n;
            }
            Ok(bits)
        };
        Ok(CapSets {
            bounding: mask(caps.bounding(), "bounding")?,
            effective: mask(caps.effective(), "effective")?,
            inheritable: mask(caps.inheritable(), "inheritable")?,
            permitted: mask(caps.permitted(), "permitted")?,
            ambient: mask(caps.ambient(), "ambient")?,
        })
    }

    /// Drops every capability outside the bounding set (needs CAP_SETPCAP, so before
    /// the others go).
    pub fn limit_bounding_set(&self) -> anyhow::Result<()> {
        for cap in 0..64u32 {
            // SAFETY: prctl with integer arguments only.
            let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong) };
            if present < 0 {
                // EINVAL: past the kernel's last capability.
                break;
            }
            if present == 1 && self.bounding & (1 << cap) == 0 {
                // SAFETY: prctl with integer arguments only.
                if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) } < 0 {
                    return Err(io::Error::last_os_error())
                        .with_context(|| format!("drop {} from the bounding set", name(cap)));
                }
            }
        }
        Ok(())
    }

    /// Sets effective, permitted and inheritable, then the ambient set. An ambient
    /// capability the kernel refuses (not permitted and inheritable) is skipped, as runc
    /// does.
    pub fn apply(&self) -> anyhow::Result<Vec<String>> {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let mut header = Header {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [0, 32].map(|shift| Data {
            effective: (self.effective >> shift) as u32,
            permitted: (self.permitted >> shift) as u32,
            inheritable: (self.inheritable >> shift) as u32,
        });
        // SAFETY: version 3 takes a header and two data structs, all valid for the call.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
        if rc < 0 {
            return Err(io::Error::last_os_error()).context("capset");
        }
        // SAFETY: prctl with integer arguments only.
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        };
        let mut skipped = Vec::new();
        for cap in (0..64u32).filter(|c| self.ambient & (1 << c) != 0) {
            // SAFETY: prctl with integer arguments only.
            let rc = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    cap as libc::c_ulong,
                    0,
                    0,
                )
            };
            if rc < 0 {
                skipped.push(format!(
                    "ambient {}: {}",
                    name(cap),
                    io::Error::last_os_error()
                ));
            }
        }
        Ok(skipped)
    }
}

fn name(cap: u32) -> String {
    CAPABILITIES
        .get(cap as usize)
        .map_or_else(|| format!("capability {cap}"), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_kernel_numbers() {
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("CAP_NET_RAW"), Some(13));
        assert_eq!(number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_NOPE"), None);
    }

    #[test]
    fn sets_from_a_spec_become_masks_and_absent_sets_are_empty() {
        let caps: LinuxCapabilities = serde_json::from_value(serde_json::json!({
            "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "effective": ["CAP_KILL"],
            "permitted": ["CAP_KILL", "CAP_CHOWN"]
        }))
        .unwrap();
        let sets = CapSets::from_spec(&caps).unwrap();
        assert_eq!(sets.bounding, 1 | 1 << 5 | 1 << 10);
        assert_eq!(sets.effective, 1 << 5);
        assert_eq!(sets.permitted, 1 | 1 << 5);
        assert_eq!(sets.inheritable, 0);
        assert_eq!(sets.ambient, 0);
    }
}

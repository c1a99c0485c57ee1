//! A loop device over the root image, for the process backend: the agent runs on the
//! host and mounts a block device just as it mounts /dev/vda in a guest.
//!
//! The device is configured with autoclear: the kernel detaches it by itself once its
//! last user is gone (this process's fd and the agent's mount), so even a sandbox killed
//! with SIGKILL leaves no loop device behind.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` from linux/loop.h.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from linux/loop.h.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An attached loop device; detached by the kernel when the last user closes it.
#[derive(Debug)]
pub struct LoopDevice {
    path: String,
    _device: File,
}

impl LoopDevice {
    /// Attaches `image` to a free loop device.
    pub fn attach(image: &Path, readonly: bool) -> Result<Self> {
        let backing = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(image)
            .with_context(|| format!("opening {}", image.display()))?;
        let control = File::open("/dev/loop-control").context("opening /dev/loop-control")?;
        for _ in 0..64 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
            let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if n < 0 {
                return Err(std::io::Error::last_os_error()).context("finding a free loop device");
            }
            let path = format!("/dev/loop{n}");
            let device = OpenOptions::new()
                .read(true)
                .write(!readonly)
                .open(&path)
                .with_context(|| format!("opening {path}"))?;
            let mut flags = LO_FLAGS_AUTOCLEAR;
            if readonly {
                flags |= LO_FLAGS_READ_ONLY;
            }
            let config = LoopConfig {
                fd: backing.as_raw_fd() as u32,
                block_size: 0,
                info: LoopInfo64 {
                    lo_device: 0,
                    lo_inode: 0,
                    lo_rdevice: 0,
                    lo_offset: 0,
                    lo_sizelimit: 0,
                    lo_number: 0,
                    lo_encrypt_type: 0,
                    lo_encrypt_key_size: 0,
                    lo_flags: flags,
                    lo_file_name: [0; 64],
                    lo_crypt_name: [0; 64],
                    lo_encrypt_key: [0; 32],
                    lo_init: [0; 2],
                },
                reserved: [0; 8],
            };
            // SAFETY: LOOP_CONFIGURE reads one `loop_config`, laid out as linux/loop.h
            // defines it, from the valid struct we pass; the backing fd stays open for
            // the call (the kernel takes its own reference).
            let r = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) };
            if r == 0 {
                return Ok(Self {
                    path,
                    _device: device,
                });
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EBUSY) {
                return Err(err)
                    .with_context(|| format!("attaching {} to {path}", image.display()));
            }
            // Another process took this device between GET_FREE and CONFIGURE: next one.
        }
        bail!("no free loop device for {}", image.display())
    }

    /// The device path.
    pub fn path(&self) -> &str {
        &self.path
    }
}

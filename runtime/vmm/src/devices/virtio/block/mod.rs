//! virtio-blk backed by a host file.
//!
//! Requests are served synchronously on the device thread with positioned reads and
//! writes. Every request is checked before the file is touched: the header must be
//! readable, the status byte writable, the data a whole number of sectors and inside the
//! disk. A request that fails a check gets `IOERR` or `UNSUPP`, never a panic.

mod request;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{
    device_type, read_config_bytes, ActivateContext, ActivateError, Interrupt, VirtioDevice,
};
pub use request::{RequestType, SECTOR_SIZE};

use std::sync::Arc;

/// Feature bit: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature bit: the device understands FLUSH.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Feature bit: the `seg_max` field is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;

const QUEUE_SIZE: u16 = 256;
/// Descriptors per request beyond header and status the driver may use.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// Errors opening the backing file.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The file could not be opened.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a usable disk.
    #[error("disk image {path} is unusable: {reason}")]
    Unusable {
        /// The image.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<Interrupt>,
}

/// A virtio-blk device.
pub struct Block {
    file: File,
    path: PathBuf,
    read_only: bool,
    capacity_sectors: u64,
    id: [u8; 20],
    acked_features: u64,
    active: Option<Active>,
}

impl Block {
    /// Opens `path` as a disk; with `read_only` the file is opened read-only and the guest
    /// is told so (and writes are refused by the device as well).
    pub fn new(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_owned(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| BlockError::Open {
            path: path.to_owned(),
            source,
        })?;
        if !meta.is_file() {
            return Err(BlockError::Unusable {
                path: path.to_owned(),
                reason: "not a regular file".into(),
            });
        }
        let capacity_sectors = meta.len() / SECTOR_SIZE;
        if capacity_sectors == 0 {
            return Err(BlockError::Unusable {
                path: path.to_owned(),
                reason: format!("smaller than one {SECTOR_SIZE}-byte sector"),
            });
        }
        let mut idb = [0u8; 20];
        let n = id.len().min(idb.len());
        idb[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            path: path.to_owned(),
            read_only,
            capacity_sectors,
            id: idb,
            acked_features: 0,
            active: None,
        })
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// The backing file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn config_space(&self) -> [u8; 16] {
        let mut cfg = [0u8; 16];
        cfg[..8].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        // size_max (8..12) stays 0: no limit on one segment's size.
        cfg[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        cfg
    }

    fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let disk = request::Disk {
            file: &self.file,
            capacity_sectors: self.capacity_sectors,
            read_only: self.read_only,
            id: &self.id,
        };
        let mut used_any = false;
        loop {
            // Stop kicks while we drain, then re-check: a buffer added in between would
            // otherwise wait for the next kick.
            if let Err(e) = active.queue.disable_notification(&active.mem) {
                crate::guest_warn!("virtio-blk: queue unusable: {e}");
                return;
            }
            let mut popped = false;
            while let Some(chain) = active.queue.pop_descriptor_chain(&active.mem) {
                let head = chain.head_index();
                let written = request::execute(&disk, &active.mem, chain);
                if let Err(e) = active.queue.add_used(&active.mem, head, written) {
                    crate::guest_warn!("virtio-blk: cannot return descriptor {head}: {e}");
                    return;
                }
                popped = true;
                used_any = true;
            }
            // Look again only after a pass that made progress: a guest that moves the
            // avail index absurdly far makes enable_notification report work that pop
            // refuses, and retrying that would spin the device thread forever.
            match active.queue.enable_notification(&active.mem) {
                Ok(true) if popped => continue,
                Ok(_) => break,
                Err(e) => {
                    crate::guest_warn!("virtio-blk: queue unusable: {e}");
                    return;
                }
            }
        }
        if used_any && active.queue.needs_notification(&active.mem).unwrap_or(true) {
            if let Err(e) = active.interrupt.signal_used_queue() {
                crate::guest_warn!("virtio-blk: cannot signal the guest: {e}");
            }
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        let mut f = VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_SEG_MAX
            | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX);
        if self.read_only {
            f |= VIRTIO_BLK_F_RO;
        }
        f
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let queue = ctx
            .queues
            .into_iter()
            .next()
            .filter(|q| q.ready())
            .ok_or(ActivateError::QueueNotReady(0))?;
        self.active = Some(Active {
            mem: ctx.mem,
            queue,
            interrupt: ctx.interrupt,
        });
        // Requests may already be waiting (a kick before activation is dropped).
        self.process_queue();
        Ok(())
    }

    fn queue_notify(&mut self, queue: usize) {
        if queue == 0 {
            self.process_queue();
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests;

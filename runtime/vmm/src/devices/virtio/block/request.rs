//! Parsing and executing one virtio-blk request.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use tracing::debug;
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;

/// Bytes in a virtio-blk sector (fixed by the specification).
pub const SECTOR_SIZE: u64 = 512;
const HEADER_LEN: usize = 16;
/// Bytes copied per file access; bounds the device thread's buffer.
const CHUNK: usize = 128 * 1024;

const STATUS_OK: u8 = 0;
const STATUS_IOERR: u8 = 1;
const STATUS_UNSUPP: u8 = 2;

/// Request types the device knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors.
    In,
    /// Write sectors.
    Out,
    /// Make written data durable.
    Flush,
    /// Return the device id string.
    GetId,
    /// Anything else.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(v: u32) -> Self {
        match v {
            0 => RequestType::In,
            1 => RequestType::Out,
            4 => RequestType::Flush,
            8 => RequestType::GetId,
            other => RequestType::Unsupported(other),
        }
    }
}

/// What a request executes against.
pub(super) struct Disk<'a> {
    pub file: &'a File,
    pub capacity_sectors: u64,
    pub read_only: bool,
    pub id: &'a [u8; 20],
}

/// Runs the request in `chain` and returns how many bytes the device wrote into guest
/// memory (data plus the status byte), the value for the used ring.
pub(super) fn execute(
    disk: &Disk<'_>,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> u32 {
    let (mut reader, mut writer) = match (Reader::new(mem, chain.clone()), Writer::new(mem, chain))
    {
        (Ok(r), Ok(w)) => (r, w),
        (Err(e), _) | (_, Err(e)) => {
            debug!("virtio-blk: malformed descriptor chain: {e}");
            return 0;
        }
    };
    // The status byte is the last device-writable byte of the chain.
    let Some(data_len) = writer.available_bytes().checked_sub(1) else {
        debug!("virtio-blk: request without room for a status byte");
        return 0;
    };
    let Ok(mut status_writer) = writer.split_at(data_len) else {
        return 0;
    };
    let status = match read_header(&mut reader) {
        Some((kind, sector)) => run(disk, kind, sector, &mut reader, &mut writer),
        None => STATUS_IOERR,
    };
    if status_writer.write_all(&[status]).is_err() {
        return 0;
    }
    // Both counts are bounded by the chain's u32 lengths; saturate rather than trust that.
    u32::try_from(writer.bytes_written() + 1).unwrap_or(u32::MAX)
}

fn read_header(reader: &mut Reader<'_>) -> Option<(RequestType, u64)> {
    let mut hdr = [0u8; HEADER_LEN];
    reader.read_exact(&mut hdr).ok()?;
    let kind = u32::from_le_bytes(hdr[0..4].try_into().ok()?);
    let sector = u64::from_le_bytes(hdr[8..16].try_into().ok()?);
    Some((RequestType::from(kind), sector))
}

/// The byte range of a data transfer, if it is whole sectors inside the disk.
fn checked_range(disk: &Disk<'_>, sector: u64, len: usize) -> Option<u64> {
    let len = u64::try_from(len).ok()?;
    if len % SECTOR_SIZE != 0 {
        return None;
    }
    let start = sector.checked_mul(SECTOR_SIZE)?;
    let end = start.checked_add(len)?;
    (end <= disk.capacity_sectors.checked_mul(SECTOR_SIZE)?).then_some(start)
}

fn run(
    disk: &Disk<'_>,
    kind: RequestType,
    sector: u64,
    reader: &mut Reader<'_>,
    writer: &mut Writer<'_>,
) -> u8 {
    let result = match kind {
        RequestType::In => {
            let Some(start) = checked_range(disk, sector, writer.available_bytes()) else {
                return STATUS_IOERR;
            };
            read_to_guest(disk.file, start, writer)
        }
        RequestType::Out => {
            if disk.read_only {
                return STATUS_IOERR;
            }
            let Some(start) = checked_range(disk, sector, reader.available_bytes()) else {
                return STATUS_IOERR;
            };
            write_from_guest(disk.file, start, reader)
        }
        RequestType::Flush => {
            if disk.read_only {
                Ok(())
            } else {
                disk.file.sync_data()
            }
        }
        RequestType::GetId => {
            let n = writer.available_bytes().min(disk.id.len());
            writer.write_all(&disk.id[..n])
        }
        RequestType::Unsupported(t) => {
            debug!("virtio-blk: unsupported request type {t}");
            return STATUS_UNSUPP;
        }
    };
    match result {
        Ok(()) => STATUS_OK,
        Err(e) => {
            debug!("virtio-blk: {kind:?} at sector {sector} failed: {e}");
            STATUS_IOERR
        }
    }
}

fn read_to_guest(file: &File, mut offset: u64, writer: &mut Writer<'_>) -> std::io::Result<()> {
    let mut buf = vec![0u8; writer.available_bytes().min(CHUNK)];
    while writer.available_bytes() > 0 {
        let n = writer.available_bytes().min(buf.len());
        file.read_exact_at(&mut buf[..n], offset)?;
        writer.write_all(&buf[..n])?;
        offset += n as u64;
    }
    Ok(())
}

fn write_from_guest(file: &File, mut offset: u64, reader: &mut Reader<'_>) -> std::io::Result<()> {
    let mut buf = vec![0u8; reader.available_bytes().min(CHUNK)];
    while reader.available_bytes() > 0 {
        let n = reader.available_bytes().min(buf.len());
        reader.read_exact(&mut buf[..n])?;
        file.write_all_at(&buf[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}

//! A guest-side test fixture (built static, placed on the VM-tier test disk): listens on a
//! vsock port, reads everything one host connection sends until EOF, answers with the
//! SHA-256 of it as a hex line, then echoes the bytes back. Lets the VM tier check that a
//! host-initiated vsock connection carries large transfers intact in both directions.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;

use anyhow::{bail, Context, Result};
use nix::sys::socket::{
    accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};
use sha2::{Digest, Sha256};

/// Refuse more than this; the fixture keeps everything in memory.
const MAX_BYTES: usize = 256 << 20;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let port: u32 = match args.as_slice() {
        [_, mode, port] if mode == "listen" => port.parse().context("port")?,
        _ => bail!("usage: husk-vsock-peer listen PORT"),
    };
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .context("vsock socket")?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &VsockAddr::new(libc::VMADDR_CID_ANY, port),
    )
    .context("bind")?;
    listen(&fd, Backlog::new(1).context("backlog")?).context("listen")?;
    eprintln!("husk-vsock-peer: listening on port {port}");
    let conn = accept(std::os::fd::AsRawFd::as_raw_fd(&fd)).context("accept")?;
    // SAFETY: `accept` returned a new, open socket fd that nothing else owns.
    let mut stream = unsafe { std::fs::File::from_raw_fd(conn) };
    let mut data = Vec::new();
    (&mut stream)
        .take(MAX_BYTES as u64 + 1)
        .read_to_end(&mut data)
        .context("reading")?;
    if data.len() > MAX_BYTES {
        bail!("more than {MAX_BYTES} bytes");
    }
    let digest = Sha256::digest(&data);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    stream.write_all(format!("{hex}\n").as_bytes())?;
    stream.write_all(&data)?;
    stream.flush()?;
    eprintln!("husk-vsock-peer: echoed {} bytes", data.len());
    Ok(())
}

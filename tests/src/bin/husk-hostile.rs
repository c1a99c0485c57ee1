//! A hostile guest for the VM tier's hostile-guest tests (built static, placed on the test
//! disk like husk-vsock-peer). Each mode attacks the host side from inside the guest:
//!
//! - `vsock-flood SECONDS`: opens vsock connections to the host (CID 2) without end, on
//!   the ports the host listens on (the container's stdio port, exec ports) and others,
//!   keeps them open until it runs out of descriptors, and on every one that connects
//!   sends what an agent would send, but oversized and garbage: huge length prefixes,
//!   broken JSON, stream headers naming other execs;
//! - `mmio SECONDS`: maps the virtio-mmio windows through /dev/mem and hammers the
//!   registers with accesses the transport refuses (wrong widths, queue registers after
//!   setup, kicks of queues that do not exist), each of which makes the VMM warn;
//! - `flood-stdout SECONDS`: writes to stdout as fast as it can;
//! - `ignore-term`: ignores SIGTERM (and every other catchable signal) and sleeps;
//! - `all SECONDS`: all of the above at once, in child processes, then keeps ignoring
//!   SIGTERM. SIGKILL cannot be ignored by a guest process; the tier checks that the host
//!   ends the VM itself when the guest does not comply.
//!
//! It prints one line per mode to stderr when it starts, so the tier knows it runs.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};

const HOST_CID: u32 = 2;
/// Start of the virtio-mmio windows (runtime/vmm layout) and how many to hammer.
const VIRTIO_MMIO_START: u64 = 0xd000_0000;
const WINDOWS: usize = 4;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let secs = |i: usize| -> Result<Duration> {
        Ok(Duration::from_secs(
            args.get(i).context("seconds")?.parse().context("seconds")?,
        ))
    };
    match args.get(1).map(String::as_str) {
        Some("vsock-flood") => vsock_flood(secs(2)?),
        Some("mmio") => mmio(secs(2)?),
        Some("flood-stdout") => flood_stdout(secs(2)?),
        Some("ignore-term") => ignore_term(),
        Some("all") => all(&args[0], secs(2)?),
        _ => bail!(
            "usage: husk-hostile vsock-flood|mmio|flood-stdout SECONDS | ignore-term | all SECONDS"
        ),
    }
}

fn announce(mode: &str) {
    eprintln!("husk-hostile: {mode} running");
}

fn ignore_signals() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || sig == libc::SIGCHLD {
            continue;
        }
        // SAFETY: setting a disposition to SIG_IGN touches no memory of ours.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}

fn ignore_term() -> Result<()> {
    ignore_signals();
    announce("ignore-term");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn all(me: &str, d: Duration) -> Result<()> {
    ignore_signals();
    let s = d.as_secs().to_string();
    let mut children = Vec::new();
    for mode in ["vsock-flood", "mmio", "flood-stdout"] {
        children.push(
            std::process::Command::new(me)
                .args([mode, &s])
                .spawn()
                .with_context(|| format!("starting {mode}"))?,
        );
    }
    announce("all");
    for mut c in children {
        let _ = c.wait();
    }
    eprintln!("husk-hostile: attacks over; ignoring SIGTERM from now on");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Frames an agent would send, made hostile.
fn garbage_frames(round: u64) -> Vec<Vec<u8>> {
    let hello = br#"{"exec_id":"someone-else","stream":"stdout"}"#;
    let mut framed = (hello.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(hello);
    vec![
        // A length far over the limit, then nothing.
        u32::MAX.to_be_bytes().to_vec(),
        (1u32 << 20).wrapping_add(1).to_be_bytes().to_vec(),
        // A plausible length with a body of garbage.
        {
            let mut v = 4096u32.to_be_bytes().to_vec();
            v.extend((0..4096).map(|i| (i as u64 ^ round) as u8));
            v
        },
        b"\x00\x00\x00\x05{{{{{".to_vec(),
        // A well-formed header for an exec that does not exist.
        framed,
        b"OK 99999999999999999999999\n".to_vec(),
    ]
}

fn vsock_flood(d: Duration) -> Result<()> {
    announce("vsock-flood");
    let deadline = Instant::now() + d;
    let mut open: std::collections::VecDeque<OwnedFd> = Default::default();
    let (mut attempts, mut connected) = (0u64, 0u64);
    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        // The container's stdio port, the exec range, the agent's own port, and others.
        let port = match round % 4 {
            0 => 2000,
            1 => 3000 + (round as u32 % 20_000),
            2 => 1024,
            _ => round as u32,
        };
        attempts += 1;
        let fd = match socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        ) {
            Ok(fd) => fd,
            Err(_) => {
                // Out of descriptors: let some go and carry on.
                for _ in 0..64 {
                    open.pop_front();
                }
                continue;
            }
        };
        if connect(fd.as_raw_fd(), &VsockAddr::new(HOST_CID, port)).is_ok() {
            connected += 1;
            let frames = garbage_frames(round);
            let frame = &frames[(round as usize) % frames.len()];
            let mut f = std::fs::File::from(fd.try_clone()?);
            let _ = f.write_all(frame);
            open.push_back(fd);
        }
        if open.len() > 4000 {
            open.pop_front();
        }
    }
    eprintln!("husk-hostile: vsock-flood made {attempts} attempts, {connected} connected");
    Ok(())
}

fn mmio(d: Duration) -> Result<()> {
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mem")
        .context("/dev/mem")?;
    let len = WINDOWS * 0x1000;
    // SAFETY: maps the virtio-mmio windows of this guest's own physical address space;
    // accesses below are volatile and stay inside the mapping.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            mem.as_raw_fd(),
            VIRTIO_MMIO_START as libc::off_t,
        )
    };
    if base == libc::MAP_FAILED {
        bail!("mmap of /dev/mem: {}", std::io::Error::last_os_error());
    }
    let base = base.cast::<u8>();
    announce("mmio");
    let deadline = Instant::now() + d;
    let mut n = 0u64;
    while Instant::now() < deadline {
        for w in 0..WINDOWS {
            // SAFETY: every offset below is inside window `w` of the mapping.
            unsafe {
                let win = base.add(w * 0x1000);
                // Wrong-width reads and writes.
                std::ptr::read_volatile(win.add(0x000));
                std::ptr::read_volatile(win.add(0x070).cast::<u16>());
                std::ptr::write_volatile(win.add(0x070).cast::<u16>(), 0xffff);
                std::ptr::write_volatile(win.add(0x030), 0xff);
                // Queue registers after DRIVER_OK.
                std::ptr::write_volatile(win.add(0x038).cast::<u32>(), 0x1234);
                std::ptr::write_volatile(win.add(0x080).cast::<u32>(), 0xdead_beef);
                // A kick of a queue that does not exist; an unknown register.
                std::ptr::write_volatile(win.add(0x050).cast::<u32>(), 99);
                std::ptr::write_volatile(win.add(0x0f0).cast::<u32>(), 7);
            }
            n += 1;
        }
    }
    eprintln!("husk-hostile: mmio hammered {n} rounds");
    Ok(())
}

fn flood_stdout(d: Duration) -> Result<()> {
    announce("flood-stdout");
    let deadline = Instant::now() + d;
    let buf = vec![b'x'; 64 << 10];
    let mut out = std::io::stdout().lock();
    let mut total = 0u64;
    while Instant::now() < deadline {
        match out.write(&buf) {
            Ok(n) => total += n as u64,
            Err(_) => break,
        }
    }
    eprintln!("husk-hostile: flood-stdout wrote {total} bytes");
    Ok(())
}

//! Frames (u32 length + JSON, as on the control socket) that carry file descriptors:
//! how taps reach the sandbox process, which may not make them itself.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use anyhow::{bail, Context, Result};
use husk_protocol::MAX_FRAME_SIZE;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Most descriptors one frame carries.
pub const MAX_FDS: usize = 32;

/// Writes `msg` as one frame, with `fds` attached to its first byte.
pub fn send_frame<T: Serialize>(stream: &UnixStream, msg: &T, fds: &[RawFd]) -> Result<()> {
    if fds.len() > MAX_FDS {
        bail!(
            "{} descriptors in one message; at most {MAX_FDS}",
            fds.len()
        );
    }
    let body = serde_json::to_vec(msg)?;
    let mut buf = (body.len() as u32).to_be_bytes().to_vec();
    buf.extend_from_slice(&body);
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let sent = loop {
        match sendmsg::<UnixAddr>(
            stream.as_raw_fd(),
            &[IoSlice::new(&buf)],
            cmsgs,
            MsgFlags::empty(),
            None,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r.context("sending a message with descriptors")?,
        }
    };
    (&*stream)
        .write_all(&buf[sent..])
        .context("sending a message with descriptors")?;
    Ok(())
}

/// Reads one frame and the descriptors that came with it.
pub fn recv_frame<T: DeserializeOwned>(stream: &UnixStream) -> Result<(T, Vec<OwnedFd>)> {
    let mut len = [0u8; 4];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut fds = Vec::new();
    let got = {
        let mut iov = [IoSliceMut::new(&mut len)];
        let msg = loop {
            match recvmsg::<UnixAddr>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r.context("receiving a message")?,
            }
        };
        for c in msg.cmsgs().context("receiving descriptors")? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors in this process
                // for us; nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        msg.bytes
    };
    if got == 0 {
        bail!("the other side closed the connection");
    }
    (&*stream)
        .read_exact(&mut len[got..])
        .context("receiving a message")?;
    let n = u32::from_be_bytes(len);
    if n > MAX_FRAME_SIZE {
        bail!("message of {n} bytes is too large");
    }
    let mut body = vec![0u8; n as usize];
    (&*stream)
        .read_exact(&mut body)
        .context("receiving a message")?;
    Ok((
        serde_json::from_slice(&body).context("decoding a message")?,
        fds,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_travel_with_their_frame() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        (&file).write_all(b"hello").unwrap();
        send_frame(&a, &vec!["x".to_string()], &[file.as_raw_fd()]).unwrap();
        send_frame(&a, &vec!["y".to_string()], &[]).unwrap();
        let (m, fds): (Vec<String>, _) = recv_frame(&b).unwrap();
        assert_eq!(m, vec!["x"]);
        assert_eq!(fds.len(), 1);
        let mut back = std::fs::File::from(fds.into_iter().next().unwrap());
        use std::io::Seek;
        back.rewind().unwrap();
        let mut s = String::new();
        back.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        let (m, fds): (Vec<String>, _) = recv_frame(&b).unwrap();
        assert_eq!((m, fds.len()), (vec!["y".to_string()], 0));
        drop(a);
        assert!(recv_frame::<Vec<String>>(&b).is_err());
    }
}

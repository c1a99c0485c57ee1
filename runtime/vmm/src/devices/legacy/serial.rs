//! The 8250 UART on COM1, writing what the guest prints to a log file. Only present when
//! asked for: a console costs a VM exit per character.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use tracing::debug;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// The serial interrupt, an irqfd on the UART's IRQ line.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Most bytes of guest console output kept: the guest decides how much it prints.
pub const MAX_LOG_BYTES: u64 = 16 << 20;

/// Line-buffered log writer: flushed at each newline so the log is readable while the
/// guest runs, and after a crash. Past `limit` bytes it notes the cut once and drops the
/// rest.
struct LogWriter {
    out: BufWriter<File>,
    written: u64,
    limit: u64,
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written >= self.limit {
            return Ok(buf.len());
        }
        let room = usize::try_from(self.limit - self.written).unwrap_or(usize::MAX);
        let n = self.out.write(&buf[..buf.len().min(room)])?;
        self.written += n as u64;
        if self.written >= self.limit {
            self.out
                .write_all(b"\n[husk: console log limit reached; further output dropped]\n")?;
            self.out.flush()?;
        } else if buf[..n].contains(&b'\n') {
            self.out.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The UART and its log.
pub struct SerialConsole {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
    irq: Option<EventFd>,
}

impl SerialConsole {
    /// A console logging to `path` (created or truncated). Its interrupt is not wired
    /// until [`SerialConsole::take_irq`] is registered with KVM; output works without it.
    pub fn new(path: &Path) -> io::Result<Self> {
        let file = File::create(path)?;
        let irq = EventFd::new(libc::EFD_NONBLOCK)?;
        let trigger = IrqTrigger(irq.try_clone()?);
        let out: Box<dyn Write + Send> = Box::new(LogWriter {
            out: BufWriter::new(file),
            written: 0,
            limit: MAX_LOG_BYTES,
        });
        Ok(Self {
            uart: Serial::new(trigger, out),
            irq: Some(irq),
        })
    }

    /// The eventfd to register as the UART's irqfd.
    pub fn take_irq(&mut self) -> Option<EventFd> {
        self.irq.take()
    }

    /// A register read.
    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    /// A register write.
    pub fn write(&mut self, offset: u8, value: u8) {
        if let Err(e) = self.uart.write(offset, value) {
            debug!("serial: {e:?}");
        }
    }
}

impl Drop for SerialConsole {
    fn drop(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_output_past_the_limit_is_dropped_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut w = LogWriter {
            out: BufWriter::new(File::create(&path).unwrap()),
            written: 0,
            limit: 100,
        };
        for _ in 0..1000 {
            w.write_all(b"0123456789\n").unwrap();
        }
        w.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() < 200, "{} bytes kept", text.len());
        assert_eq!(text.matches("limit reached").count(), 1);
    }
}

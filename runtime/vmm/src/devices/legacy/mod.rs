//! Legacy port-I/O devices: the 8250 serial console (only when debugging) and the
//! keyboard controller's reset line, through which the guest ends the VM.

pub mod i8042;
pub mod serial;

use std::sync::Mutex;

use crate::arch::x86_64::layout::COM1_PORT;

/// What a port write asks the VMM to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortAction {
    /// Nothing beyond the write itself.
    None,
    /// The guest asked for a CPU reset: it is rebooting or powering off.
    Reset,
}

/// The port-I/O devices of one VM, shared by its vCPUs.
pub struct PortIoBus {
    serial: Option<Mutex<serial::SerialConsole>>,
    i8042: i8042::ResetLine,
}

const SERIAL_PORTS: std::ops::Range<u16> = COM1_PORT..COM1_PORT + 8;

impl PortIoBus {
    /// A bus with the reset line and, if given, a serial console.
    pub fn new(serial: Option<serial::SerialConsole>) -> Self {
        Self {
            serial: serial.map(Mutex::new),
            i8042: i8042::ResetLine,
        }
    }

    /// A guest `in` instruction. Ports without a device read as all ones, as on real
    /// hardware with nothing on the bus.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        if let (Some(serial), true) = (&self.serial, SERIAL_PORTS.contains(&port)) {
            if let (Ok(mut s), Some(first)) = (serial.lock(), data.first_mut()) {
                *first = s.read((port - COM1_PORT) as u8);
            }
        } else if i8042::ResetLine::owns(port) {
            self.i8042.read(port, data);
        }
    }

    /// A guest `out` instruction.
    pub fn write(&self, port: u16, data: &[u8]) -> PortAction {
        if let (Some(serial), true) = (&self.serial, SERIAL_PORTS.contains(&port)) {
            if let (Ok(mut s), Some(&v)) = (serial.lock(), data.first()) {
                s.write((port - COM1_PORT) as u8, v);
            }
            PortAction::None
        } else if i8042::ResetLine::owns(port) {
            self.i8042.write(port, data)
        } else {
            PortAction::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_ports_read_as_all_ones_and_ignore_writes() {
        let bus = PortIoBus::new(None);
        let mut b = [0u8; 2];
        bus.read(0x80, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        assert_eq!(bus.write(0x80, &[1]), PortAction::None);
        // Without a console the serial ports are empty too.
        bus.read(COM1_PORT + 5, &mut b[..1]);
        assert_eq!(b[0], 0xff);
    }

    #[test]
    fn keyboard_controller_reset_command_resets() {
        let bus = PortIoBus::new(None);
        assert_eq!(bus.write(0x64, &[0xfe]), PortAction::Reset);
        assert_eq!(bus.write(0x64, &[0xd1]), PortAction::None);
        assert_eq!(bus.write(0x64, &[]), PortAction::None);
        let mut status = [0xffu8];
        bus.read(0x64, &mut status);
        assert_eq!(status[0] & 0x2, 0, "input buffer never busy");
    }

    #[test]
    fn serial_output_reaches_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let console = serial::SerialConsole::new(&log).unwrap();
        let bus = PortIoBus::new(Some(console));
        for b in b"hi\n" {
            bus.write(COM1_PORT, &[*b]);
        }
        drop(bus);
        assert_eq!(std::fs::read(&log).unwrap(), b"hi\n");
    }
}

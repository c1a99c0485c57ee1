//! Just enough of the i8042 keyboard controller for `reboot=k`: Linux resets the machine
//! by writing 0xfe (pulse the reset line) to the command port after waiting for the input
//! buffer to drain. The guest has no keyboard, so nothing else is modelled.

use super::PortAction;

const DATA_PORT: u16 = 0x60;
const COMMAND_PORT: u16 = 0x64;
const CMD_RESET_CPU: u8 = 0xfe;

/// The reset line.
#[derive(Debug, Default)]
pub struct ResetLine;

impl ResetLine {
    /// Whether `port` belongs to the controller.
    pub fn owns(port: u16) -> bool {
        port == DATA_PORT || port == COMMAND_PORT
    }

    /// Status and data read as 0: buffers empty, so the kernel's wait loop ends at once.
    pub fn read(&self, _port: u16, data: &mut [u8]) {
        data.fill(0);
    }

    /// A write; only the reset command does anything.
    pub fn write(&self, port: u16, data: &[u8]) -> PortAction {
        match (port, data.first()) {
            (COMMAND_PORT, Some(&CMD_RESET_CPU)) => PortAction::Reset,
            _ => PortAction::None,
        }
    }
}

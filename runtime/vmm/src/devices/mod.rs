//! Device models: legacy port devices and virtio devices.

pub mod legacy;
pub mod virtio;

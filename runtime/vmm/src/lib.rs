//! husk's virtual machine monitor.
//!
//! The layers, from the bottom: [`arch`] (x86_64 boot layout, page tables, MP table, CPUID),
//! [`vstate`] (the KVM VM and vCPUs), [`devices`] (legacy ports and virtio-mmio devices),
//! and [`builder`], which turns a [`VmConfig`] into a running VM.
#![warn(missing_docs)]

pub mod devices;

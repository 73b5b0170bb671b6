//! vm-tests: boots a Debian kernel under QEMU and runs rcrun's end-to-end scenarios
//! inside, as an unprivileged user, on that kernel.
//!
//! The host side (`vm-tests`) fetches the kernel, builds static guest binaries and an
//! initramfs, boots QEMU and reports; the guest side (`vm-agent`) is PID 1 in the guest
//! and reports each scenario as one [`report::Event`] JSON line on the second serial port.

pub mod cpio;
pub mod elf;
pub mod initramfs;
pub mod kernel;
pub mod modules;
pub mod outcome;
pub mod qemu;
pub mod registry;
pub mod report;
pub mod scenarios;

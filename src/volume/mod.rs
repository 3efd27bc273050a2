//! Encrypted block volumes: random reads and writes under a KMS-wrapped volume key.
//!
//! The on-disk format is described byte by byte in `docs/VOLUME-FORMAT.md`.

mod device;
#[allow(dead_code)] // used by the volume code that lands next
mod disk;
pub mod nbd;

pub use device::BlockDevice;

//! What a block-device server serves: a fixed-size device read and written at byte offsets.

use std::io;

/// A fixed-size block device: positional reads and writes from many threads at once.
///
/// The NBD server ([`crate::volume::nbd`]) serves any implementation; [`crate::volume::Volume`]
/// is the encrypted one. Errors are `io::Error`s so that a server can map them to the
/// protocol's error numbers: [`io::ErrorKind::InvalidData`] for a block that failed to
/// authenticate (EIO), [`io::ErrorKind::InvalidInput`] for a request outside the device
/// (EINVAL), [`io::ErrorKind::StorageFull`] for a write past the end (ENOSPC); anything else is
/// EIO too.
pub trait BlockDevice: Send + Sync {
    /// The device's size in bytes.
    fn size(&self) -> u64;

    /// The block size the device prefers (requests aligned to it avoid read-modify-write).
    fn block_size(&self) -> u32;

    /// Fills `buf` with the bytes at `offset`; the whole range must lie inside the device.
    ///
    /// # Errors
    /// Any block in the range that cannot be read and authenticated fails the whole read.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes `data` at `offset`. Durable only after [`BlockDevice::flush`].
    ///
    /// # Errors
    /// When the range leaves the device or the write fails.
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()>;

    /// Makes `len` bytes at `offset` read as zeros (NBD WRITE_ZEROES and TRIM).
    ///
    /// # Errors
    /// When the range leaves the device or the write fails.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Makes every write answered before this call durable.
    ///
    /// # Errors
    /// When the device cannot be synced: the caller must report the flush as failed.
    fn flush(&self) -> io::Result<()>;
}

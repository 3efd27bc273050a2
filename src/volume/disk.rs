//! The storage under a volume: positional reads and writes, and a durability barrier.
//!
//! The volume code reaches its image only through [`Disk`], so that a test can put a simulated
//! disk under it that loses, reorders and tears unsynced writes the way a power cut does.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Positional storage with a durability barrier.
pub(crate) trait Disk: Send + Sync {
    /// Fills `buf` from `offset`; bytes past the end of the storage read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `data` at `offset`, growing the storage if needed.
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every write issued before this call durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
    /// The storage's length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Sets the storage's length (new bytes read as zeros; a file stays sparse).
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// A volume image in a file, locked against a second opener for as long as it is open.
#[derive(Debug)]
pub(crate) struct FileDisk {
    file: File,
}

/// Why a [`FileDisk`] could not be opened.
#[derive(Debug)]
pub(crate) enum OpenDiskError {
    /// Another process (or another open in this one) holds the image's lock.
    Locked,
    /// Opening or locking failed.
    Io(io::Error),
}

impl FileDisk {
    /// Opens `path` for reading and writing and takes an exclusive `flock` on it without
    /// waiting. With `create`, the file must not exist yet (`O_EXCL`): an existing image, or a
    /// device or link put at the path, is never overwritten.
    pub(crate) fn open(path: &Path, create: bool) -> Result<FileDisk, OpenDiskError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true);
        if create {
            options.create_new(true).mode(0o600);
        }
        // Never follow a link at the image path, and never open a FIFO or device for writing.
        options.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
        let file = options.open(path).map_err(OpenDiskError::Io)?;
        let meta = file.metadata().map_err(OpenDiskError::Io)?;
        if !meta.file_type().is_file() {
            return Err(OpenDiskError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            )));
        }
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(FileDisk { file }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(OpenDiskError::Locked),
            Err(e) => Err(OpenDiskError::Io(e.into())),
        }
    }
}

impl Disk for FileDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    return Ok(());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        let first = FileDisk::open(&path, true).unwrap();
        assert!(matches!(
            FileDisk::open(&path, false),
            Err(OpenDiskError::Locked)
        ));
        assert!(matches!(
            FileDisk::open(&path, true),
            Err(OpenDiskError::Io(_))
        ));
        drop(first);
        FileDisk::open(&path, false).unwrap();
    }

    #[test]
    fn reads_past_the_end_are_zeros_and_writes_grow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let disk = FileDisk::open(&dir.path().join("vol"), true).unwrap();
        disk.write_at(b"abc", 10).unwrap();
        assert_eq!(disk.len().unwrap(), 13);
        let mut buf = [0xffu8; 8];
        disk.read_at(&mut buf, 9).unwrap();
        assert_eq!(&buf, b"\0abc\0\0\0\0");
        disk.sync().unwrap();
    }

    #[test]
    fn a_link_at_the_image_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(FileDisk::open(&link, false).is_err());
        assert!(FileDisk::open(&link, true).is_err());
    }
}

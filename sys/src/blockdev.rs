//! Block devices: a disk's size, and telling the kernel to read a new partition table.

#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd as _;

// From <linux/fs.h>: BLKRRPART is _IO(0x12, 95); BLKGETSIZE64 is _IOR(0x12, 114, size_t).
nix::ioctl_none!(blkrrpart, 0x12, 95);
nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);

/// Asks the kernel to re-read `disk`'s partition table, so its partitions appear (and old
/// ones go). Fails with EBUSY while a partition of the disk is in use.
pub fn reread_partitions(disk: &File) -> std::io::Result<()> {
    // SAFETY: BLKRRPART takes no argument; the fd is a valid open file for the call.
    unsafe { blkrrpart(disk.as_raw_fd()) }
        .map(|_| ())
        .map_err(std::io::Error::from)
}

/// The size in bytes of a block device, or of a regular file (test disks are files).
pub fn size(disk: &File) -> std::io::Result<u64> {
    let md = disk.metadata()?;
    if md.is_file() {
        return Ok(md.len());
    }
    let mut bytes: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `bytes`, live
    // for the call; the fd is valid.
    unsafe { blkgetsize64(disk.as_raw_fd(), &mut bytes) }.map_err(std::io::Error::from)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_regular_file_has_its_length() {
        let f = tempfile_with(12345);
        assert_eq!(super::size(&f).unwrap(), 12345);
        assert!(super::reread_partitions(&f).is_err());
    }

    fn tempfile_with(len: u64) -> std::fs::File {
        let d = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(d.path().join("x")).unwrap();
        f.set_len(len).unwrap();
        f
    }
}

//! Attaching a file to a loop device: the two ioctls nix has no safe wrapper for.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

// From <linux/loop.h>.
const LOOP_SET_FD: u16 = 0x4C00;
const LOOP_CTL_GET_FREE: u16 = 0x4C82;

nix::ioctl_none_bad!(loop_ctl_get_free, LOOP_CTL_GET_FREE);
nix::ioctl_write_int_bad!(loop_set_fd, LOOP_SET_FD);

/// Attaches `backing` (opened read-only, so the loop device is read-only) to a free loop
/// device and returns the device's path. The attachment outlives the returned handles.
pub fn attach_read_only(backing: &Path) -> std::io::Result<PathBuf> {
    let file = File::open(backing)?;
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number; the fd is a
    // valid open /dev/loop-control for the duration of the call.
    let n = unsafe { loop_ctl_get_free(ctl.as_raw_fd()) }.map_err(std::io::Error::from)?;
    let dev = PathBuf::from(format!("/dev/loop{n}"));
    let loop_file = OpenOptions::new().read(true).open(&dev)?;
    // SAFETY: LOOP_SET_FD takes the backing file descriptor by value; both fds are valid and
    // open for the duration of the call, and the kernel takes its own reference to the file.
    unsafe { loop_set_fd(loop_file.as_raw_fd(), file.as_raw_fd()) }
        .map_err(std::io::Error::from)?;
    Ok(dev)
}

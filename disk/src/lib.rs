//! The installed disk: its GPT layout ([`layout`]), GRUB's boot code, config and environment
//! ([`grub`]), the FAT filesystems of the boot partitions ([`fat`]), and the install and slot
//! writes ([`install`]) that PID 1's install and upgrade sequences run. Also the `newc` cpio
//! writer ([`cpio`]) the image build and the slots share.
//!
//! What must not be here: the machine config, the API or an async runtime — callers hand in
//! paths and get typed errors back.

pub mod bundle;
pub mod cpio;
pub mod fat;
pub mod gpt;
pub mod grub;
pub mod install;
pub mod layout;

//! The installed disk's partitions: what each holds, its size, and why.
//!
//! | # | name | size | holds |
//! |---|---|---|---|
//! | 1 | BIOS | 1 MiB | GRUB's core image for BIOS machines (the MBR's boot code jumps to it) |
//! | 2 | EFI | 32 MiB, FAT | `EFI/BOOT/BOOTX64.EFI` (GRUB for UEFI) and `grub/grub.cfg`, which both firmwares' GRUB run |
//! | 3 | BOOT-A | 512 MiB, FAT | slot A: `vmlinuz`, `initramfs.img`, `rootfs.img` (the dm-verity-checked root), `boot.cfg` |
//! | 4 | BOOT-B | 512 MiB, FAT | slot B, the same |
//! | 5 | META | 1 MiB, FAT | `grubenv`: which slot boots, a slot on trial and whether its one try is spent |
//! | 6 | STATE | 100 MiB, ext4 `BASALT-STATE` | the machine config and the node's identity |
//! | 7 | EPHEMERAL | the rest (at least 1 GiB), ext4 `BASALT-EPHEMERAL` | `/var`: containerd's images, etcd's data, logs |
//!
//! Partitions start on MiB boundaries from 1 MiB. The sizes are fixed so GRUB's script can
//! name the partitions by number on the disk it booted from.

use crate::gpt::{self, Guid, Partition, Table, types};

pub const MIB: u64 = 1 << 20;

/// A partition of the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Its GPT name, and its number (1-based).
    pub name: &'static str,
    pub number: u32,
    type_guid: Guid,
    /// MiB; `None` for the rest of the disk.
    mib: Option<u64>,
}

pub const BIOS: Part = Part {
    name: "BIOS",
    number: 1,
    type_guid: types::BIOS_BOOT,
    mib: Some(1),
};
pub const EFI: Part = Part {
    name: "EFI",
    number: 2,
    type_guid: types::EFI_SYSTEM,
    mib: Some(EFI_MIB),
};
/// The EFI partition's size: its FAT image is made with the image at this size.
pub const EFI_MIB: u64 = 32;
pub const BOOT_A: Part = Part {
    name: "BOOT-A",
    number: 3,
    type_guid: types::LINUX_DATA,
    mib: Some(512),
};
pub const BOOT_B: Part = Part {
    name: "BOOT-B",
    number: 4,
    type_guid: types::LINUX_DATA,
    mib: Some(512),
};
pub const META: Part = Part {
    name: "META",
    number: 5,
    type_guid: types::LINUX_DATA,
    mib: Some(1),
};
pub const STATE: Part = Part {
    name: "STATE",
    number: 6,
    type_guid: types::LINUX_DATA,
    mib: Some(100),
};
pub const EPHEMERAL: Part = Part {
    name: "EPHEMERAL",
    number: 7,
    type_guid: types::LINUX_DATA,
    mib: None,
};

/// Every partition, in order.
pub const PARTS: [Part; 7] = [BIOS, EFI, BOOT_A, BOOT_B, META, STATE, EPHEMERAL];

/// Filesystem labels.
pub const STATE_LABEL: &str = "BASALT-STATE";
pub const EPHEMERAL_LABEL: &str = "BASALT-EPHEMERAL";
/// EPHEMERAL's least size.
pub const MIN_EPHEMERAL: u64 = 1024 * MIB;

/// The smallest disk the layout fits: the fixed partitions, 1 GiB of EPHEMERAL, the 1 MiB
/// gap at the start and room for the backup table at the end.
pub fn min_disk() -> u64 {
    let fixed: u64 = PARTS.iter().filter_map(|p| p.mib).sum::<u64>() * MIB;
    MIB + fixed + MIN_EPHEMERAL + MIB
}

/// A boot slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn part(self) -> Part {
        match self {
            Slot::A => BOOT_A,
            Slot::B => BOOT_B,
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "A" => Some(Slot::A),
            "B" => Some(Slot::B),
            _ => None,
        }
    }

    /// The FAT volume label of its partition.
    pub fn label(self) -> [u8; 11] {
        match self {
            Slot::A => *b"BASALT-A   ",
            Slot::B => *b"BASALT-B   ",
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the disk has {size} bytes ({} MiB); the layout needs at least {} MiB ({} MiB of it for EPHEMERAL)",
    size / MIB,
    min_disk() / MIB,
    MIN_EPHEMERAL / MIB
)]
pub struct TooSmall {
    pub size: u64,
}

/// The table for a disk of `size` bytes, with fresh GUIDs.
pub fn table(size: u64) -> Result<Table, TooSmall> {
    if size < min_disk() {
        return Err(TooSmall { size });
    }
    let sectors_per_mib = MIB / gpt::SECTOR;
    let mut next = sectors_per_mib;
    let mut partitions = Vec::new();
    for p in PARTS {
        let last = match p.mib {
            Some(m) => next + m * sectors_per_mib - 1,
            // The rest, ending on a MiB boundary before the backup table.
            None => (gpt::last_usable(size) + 1) / sectors_per_mib * sectors_per_mib - 1,
        };
        partitions.push(Partition {
            type_guid: p.type_guid,
            guid: Guid::random(),
            first_lba: next,
            last_lba: last,
            name: p.name.to_string(),
        });
        next = last + 1;
    }
    Ok(Table {
        disk_guid: Guid::random(),
        partitions,
    })
}

/// Whether `t` is this layout (names, types and fixed sizes; any disk size).
pub fn is_basalt(t: &Table) -> bool {
    t.partitions.len() == PARTS.len()
        && t.partitions.iter().zip(PARTS).all(|(have, want)| {
            have.name == want.name
                && have.type_guid == want.type_guid
                && want.mib.is_none_or(|m| have.len_bytes() == m * MIB)
        })
}

/// The partition `p` of `t`.
pub fn find(t: &Table, p: Part) -> Option<&Partition> {
    t.partitions
        .get(p.number as usize - 1)
        .filter(|have| have.name == p.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_fills_a_disk_on_mib_boundaries() {
        let size = 3 * 1024 * MIB;
        let t = table(size).unwrap();
        assert!(is_basalt(&t));
        assert_eq!(t.partitions[0].first_lba, 2048);
        for (p, want) in t.partitions.iter().zip(PARTS) {
            assert_eq!(p.first_lba % 2048, 0, "{}", p.name);
            assert_eq!((p.last_lba + 1) % 2048, 0, "{}", p.name);
            assert_eq!(find(&t, want), Some(p));
        }
        let eph = &t.partitions[6];
        assert!(eph.last_lba <= gpt::last_usable(size));
        assert_eq!(
            eph.len_bytes(),
            size - MIB - (1 + 32 + 512 + 512 + 1 + 100) * MIB - MIB
        );
        // The table writes on a (sparse) disk of that size.
        let mut disk = tempfile::tempfile().unwrap();
        disk.set_len(size).unwrap();
        gpt::write(&mut disk, size, &t, &[0; 440]).unwrap();
        assert_eq!(gpt::read(&mut disk).unwrap(), t);
    }

    #[test]
    fn a_small_disk_is_refused_with_the_sizes() {
        let e = table(2000 * MIB).unwrap_err().to_string();
        assert!(
            e.contains("2000 MiB") && e.contains("at least 2184 MiB"),
            "{e}"
        );
        assert_eq!(min_disk(), 2184 * MIB);
        assert!(table(min_disk()).is_ok());
    }
}

//! GUID partition tables (UEFI 2.10, chapter 5): a protective MBR, the primary header and
//! entry array at the start of the disk, their backup at its end, each checked by CRC32.
//!
//! Written whole (an install lays out the disk once) and read back to find an installed
//! layout's partitions. 512-byte logical sectors only, as on every disk a node boots from
//! through BIOS or UEFI here (a 4Kn disk is refused with its sector size named).

use std::io::{Read, Seek, SeekFrom, Write};

/// The logical sector size this table is laid out for.
pub const SECTOR: u64 = SECTOR_BYTES as u64;
const SECTOR_BYTES: usize = 512;
/// Entries in the array (the minimum the specification allows a writer to use).
const ENTRIES: u32 = 128;
const ENTRY_SIZE: u32 = 128;
/// Sectors the entry array takes: 128 × 128 bytes.
const ARRAY_SECTORS: u64 = (ENTRIES as u64 * ENTRY_SIZE as u64) / SECTOR;
const SIGNATURE: &[u8; 8] = b"EFI PART";
const HEADER_SIZE: u32 = 92;

/// A GUID in its textual form's byte order; stored mixed-endian (the first three fields
/// little-endian) as GPT does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`; panics on a malformed constant (only
    /// the constants below are parsed).
    pub const fn from_str_const(s: &str) -> Guid {
        let b = s.as_bytes();
        let mut out = [0u8; 16];
        let mut i = 0;
        let mut n = 0;
        while i < b.len() {
            if b[i] == b'-' {
                i += 1;
                continue;
            }
            let hi = hex(b[i]);
            let lo = hex(b[i + 1]);
            out[n] = hi << 4 | lo;
            n += 1;
            i += 2;
        }
        assert!(n == 16, "a GUID has 16 bytes");
        Guid(out)
    }

    /// A random (version 4) GUID.
    pub fn random() -> Guid {
        let mut b: [u8; 16] = rand::random();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }

    /// The 16 bytes as GPT stores them.
    fn to_disk(self) -> [u8; 16] {
        let g = self.0;
        [
            g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13],
            g[14], g[15],
        ]
    }

    fn from_disk(d: &[u8]) -> Guid {
        Guid([
            d[3], d[2], d[1], d[0], d[5], d[4], d[7], d[6], d[8], d[9], d[10], d[11], d[12], d[13],
            d[14], d[15],
        ])
    }

    fn is_zero(self) -> bool {
        self.0 == [0; 16]
    }
}

const fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("not a hex digit"),
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            g[0],
            g[1],
            g[2],
            g[3],
            g[4],
            g[5],
            g[6],
            g[7],
            g[8],
            g[9],
            g[10],
            g[11],
            g[12],
            g[13],
            g[14],
            g[15]
        )
    }
}

/// Partition type GUIDs the layout uses.
pub mod types {
    use super::Guid;
    /// GRUB's BIOS boot partition: its core image, read by the MBR's boot code.
    pub const BIOS_BOOT: Guid = Guid::from_str_const("21686148-6449-6E6F-744E-656564454649");
    /// The EFI system partition.
    pub const EFI_SYSTEM: Guid = Guid::from_str_const("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    /// Linux filesystem data.
    pub const LINUX_DATA: Guid = Guid::from_str_const("0FC63DAF-8483-4772-8E79-3D69D8477DE4");
}

/// One partition: a name (at most 36 UTF-16 units) and its sectors, both ends inclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub type_guid: Guid,
    pub guid: Guid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

impl Partition {
    pub fn start_bytes(&self) -> u64 {
        self.first_lba * SECTOR
    }

    pub fn len_bytes(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

/// A whole table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub disk_guid: Guid,
    /// In entry order: partition `n` (1-based, as Linux numbers them) is `partitions[n - 1]`.
    pub partitions: Vec<Partition>,
}

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("no GUID partition table (no \"EFI PART\" signature at sector 1)")]
    Missing,
    #[error("the GPT header's CRC32 does not match")]
    HeaderCrc,
    #[error("the GPT entry array's CRC32 does not match")]
    ArrayCrc,
    #[error("unsupported GPT: {0}")]
    Unsupported(String),
    #[error("the partitions do not fit a disk of {size} bytes: {why}")]
    DoesNotFit { size: u64, why: String },
    #[error("cannot read or write the partition table")]
    Io(#[from] std::io::Error),
}

/// The first sector partitions may use (after the protective MBR, header and array).
pub const FIRST_USABLE: u64 = 2 + ARRAY_SECTORS;

/// The last sector partitions may use on a disk of `size` bytes (before the backup array).
pub fn last_usable(size: u64) -> u64 {
    (size / SECTOR).saturating_sub(2 + ARRAY_SECTORS)
}

/// Writes `table` to a disk of `size` bytes: the protective MBR (with `boot_code`, the
/// first 440 bytes of sector 0, e.g. GRUB's `boot.img`), the primary header and array, and
/// the backup array and header at the end.
pub fn write(
    disk: &mut (impl Write + Seek),
    size: u64,
    table: &Table,
    boot_code: &[u8; 440],
) -> Result<(), GptError> {
    let sectors = size / SECTOR;
    let last = sectors.saturating_sub(1);
    if sectors < 2 * (2 + ARRAY_SECTORS) + 1 {
        return Err(GptError::DoesNotFit {
            size,
            why: "too small for the table itself".into(),
        });
    }
    if table.partitions.len() > ENTRIES as usize {
        return Err(GptError::DoesNotFit {
            size,
            why: format!("more than {ENTRIES} partitions"),
        });
    }
    let mut prev_end = FIRST_USABLE - 1;
    for p in &table.partitions {
        if p.first_lba <= prev_end || p.last_lba < p.first_lba || p.last_lba > last_usable(size) {
            return Err(GptError::DoesNotFit {
                size,
                why: format!(
                    "partition {} (sectors {}..={}) overlaps another or the table",
                    p.name, p.first_lba, p.last_lba
                ),
            });
        }
        if p.name.encode_utf16().count() > 36 {
            return Err(GptError::DoesNotFit {
                size,
                why: format!("partition name {:?} is longer than 36", p.name),
            });
        }
        prev_end = p.last_lba;
    }

    let mut array = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, p) in table.partitions.iter().enumerate() {
        let e = &mut array[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&p.type_guid.to_disk());
        e[16..32].copy_from_slice(&p.guid.to_disk());
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        for (j, u) in p.name.encode_utf16().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
    }
    let array_crc = crc32fast::hash(&array);
    let header = |my: u64, alternate: u64, array_lba: u64| -> Vec<u8> {
        let mut h = vec![0u8; SECTOR_BYTES];
        h[0..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alternate.to_le_bytes());
        h[40..48].copy_from_slice(&FIRST_USABLE.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable(size).to_le_bytes());
        h[56..72].copy_from_slice(&table.disk_guid.to_disk());
        h[72..80].copy_from_slice(&array_lba.to_le_bytes());
        h[80..84].copy_from_slice(&ENTRIES.to_le_bytes());
        h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..HEADER_SIZE as usize]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };

    let mut mbr = [0u8; SECTOR_BYTES];
    mbr[..440].copy_from_slice(boot_code);
    // One partition of type 0xEE covering the disk (or as much as 32 bits can say).
    let p = &mut mbr[446..462];
    p[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    p[4] = 0xee;
    p[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    p[8..12].copy_from_slice(&1u32.to_le_bytes());
    p[12..16].copy_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;

    let backup_array = last - ARRAY_SECTORS;
    // Backup first, primary last: a table half written is never a valid primary.
    disk.seek(SeekFrom::Start(backup_array * SECTOR))?;
    disk.write_all(&array)?;
    disk.write_all(&header(last, 1, backup_array))?;
    disk.seek(SeekFrom::Start(SECTOR))?;
    disk.write_all(&header(1, last, 2))?;
    disk.write_all(&array)?;
    disk.seek(SeekFrom::Start(0))?;
    disk.write_all(&mbr)?;
    disk.flush()?;
    Ok(())
}

/// Reads the primary table, checking both CRCs.
pub fn read(disk: &mut (impl Read + Seek)) -> Result<Table, GptError> {
    let mut h = [0u8; SECTOR_BYTES];
    disk.seek(SeekFrom::Start(SECTOR))?;
    disk.read_exact(&mut h)?;
    if &h[0..8] != SIGNATURE {
        return Err(GptError::Missing);
    }
    let le32 = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let le64 = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let size = le32(12);
    if !(HEADER_SIZE..=512).contains(&size) {
        return Err(GptError::Unsupported(format!("header size {size}")));
    }
    let mut check = h;
    check[16..20].fill(0);
    if crc32fast::hash(&check[..size as usize]) != le32(16) {
        return Err(GptError::HeaderCrc);
    }
    let (array_lba, count, entry_size) = (le64(72), le32(80), le32(84));
    if !(128..=4096).contains(&entry_size) || count > 1024 {
        return Err(GptError::Unsupported(format!(
            "{count} entries of {entry_size} bytes"
        )));
    }
    let mut array = vec![0u8; count as usize * entry_size as usize];
    disk.seek(SeekFrom::Start(array_lba * SECTOR))?;
    disk.read_exact(&mut array)?;
    if crc32fast::hash(&array) != le32(88) {
        return Err(GptError::ArrayCrc);
    }
    let mut partitions = Vec::new();
    for e in array.chunks(entry_size as usize) {
        let type_guid = Guid::from_disk(&e[0..16]);
        if type_guid.is_zero() {
            continue;
        }
        let num = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&e[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let units: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        partitions.push(Partition {
            type_guid,
            guid: Guid::from_disk(&e[16..32]),
            first_lba: num(32),
            last_lba: num(40),
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(Table {
        disk_guid: Guid::from_disk(&h[56..72]),
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_print_as_they_parse() {
        let g = types::EFI_SYSTEM;
        assert_eq!(g.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(
            g.to_disk()[..4],
            [0x28, 0x73, 0x2a, 0xc1],
            "the first field is stored little-endian"
        );
        assert_eq!(Guid::from_disk(&g.to_disk()), g);
        let r = Guid::random();
        assert_eq!(r.0[6] >> 4, 4);
    }

    fn table() -> Table {
        Table {
            disk_guid: Guid::random(),
            partitions: vec![
                Partition {
                    type_guid: types::BIOS_BOOT,
                    guid: Guid::random(),
                    first_lba: 2048,
                    last_lba: 4095,
                    name: "BIOS".into(),
                },
                Partition {
                    type_guid: types::LINUX_DATA,
                    guid: Guid::random(),
                    first_lba: 4096,
                    last_lba: 8191,
                    name: "STATE".into(),
                },
            ],
        }
    }

    #[test]
    fn a_written_table_reads_back_and_a_flipped_bit_is_caught() {
        let size = 8 << 20;
        let mut disk = std::io::Cursor::new(vec![0u8; size]);
        let t = table();
        write(&mut disk, size as u64, &t, &[0x90; 440]).unwrap();
        assert_eq!(read(&mut disk).unwrap(), t);
        let raw = disk.get_ref();
        assert_eq!(&raw[510..512], &[0x55, 0xaa]);
        assert_eq!(raw[450], 0xee);
        // The backup header is the last sector.
        assert_eq!(&raw[size - 512..size - 504], SIGNATURE);
        disk.get_mut()[1024 + 2 * 128 + 40] ^= 1;
        assert!(matches!(read(&mut disk), Err(GptError::ArrayCrc)));
        disk.get_mut()[512 + 24] ^= 1;
        assert!(matches!(read(&mut disk), Err(GptError::HeaderCrc)));
    }

    #[test]
    fn overlapping_or_oversized_partitions_are_refused() {
        let size = 8u64 << 20;
        let mut t = table();
        t.partitions[1].first_lba = 4000;
        let mut disk = std::io::Cursor::new(vec![0u8; 8 << 20]);
        let e = write(&mut disk, size, &t, &[0; 440]).unwrap_err();
        assert!(e.to_string().contains("STATE"), "{e}");
        let mut t = table();
        t.partitions[1].last_lba = size / SECTOR;
        assert!(write(&mut disk, size, &t, &[0; 440]).is_err());
    }

    /// util-linux's sfdisk, an independent reader, sees the same table.
    #[test]
    fn sfdisk_reads_our_table() {
        // By path: the unprivileged rerun of the tests has only /usr/bin and /bin on its PATH.
        let sfdisk = "/usr/sbin/sfdisk";
        assert!(
            std::path::Path::new(sfdisk).exists(),
            "sfdisk (Debian's fdisk package) is needed: hack/test installs it"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let size = 8u64 << 20;
        let mut f = std::fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        let t = table();
        write(&mut f, size, &t, &[0; 440]).unwrap();
        drop(f);
        let out = std::process::Command::new(sfdisk)
            .arg("--dump")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("label: gpt"), "{text}");
        assert!(
            text.contains(
                &format!("label-id: {}", t.disk_guid)
                    .to_uppercase()
                    .replace("LABEL-ID", "label-id")
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "start=        2048, size=        2048, type=21686148-6449-6E6F-744E-656564454649"
            ),
            "{text}"
        );
        assert!(text.contains("name=\"STATE\""), "{text}");
        assert!(text.contains("last-lba: 16350"), "{text}");
    }
}

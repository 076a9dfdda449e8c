//! GRUB on the installed disk: the BIOS boot code and core image placed as `grub-bios-setup`
//! places them (GRUB 2.06, `util/setup.c`), the one `grub.cfg` both firmwares run, and the
//! environment block (`grubenv`) that is the META area.
//!
//! The boot flow `grub.cfg` implements: META names the slot that boots (`slot`), and
//! optionally a slot on trial (`next`). A trial slot gets one boot: GRUB marks the try spent
//! (`next_tried=1`) *before* booting it, so a kernel that panics, an init that exits or a
//! boot that never confirms itself comes back here and boots `slot` again. The node confirms a
//! trial boot once it is healthy by making it `slot` and clearing `next` (see [`Env`]); a
//! trial GRUB gave up on is left in `failed` for the node to report.

use std::collections::BTreeMap;

use crate::layout::{BOOT_A, BOOT_B, EFI, META};

/// GRUB's environment block: 1024 bytes of `key=value` lines after a header, padded with `#`.
pub const ENV_SIZE: usize = 1024;
const ENV_HEADER: &str = "# GRUB Environment Block\n";

/// The variables of `grubenv` that say which slot boots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    pub vars: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum GrubError {
    #[error("{what} is not GRUB's ({why})")]
    Image { what: &'static str, why: String },
    #[error("the environment block is not GRUB's: {0}")]
    Env(String),
    #[error("the kernel command line holds {0:?}, which grub.cfg cannot quote")]
    Cmdline(char),
}

impl Env {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.vars
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn set(&mut self, k: &str, v: &str) {
        self.vars.insert(k.into(), v.into());
    }

    /// Parses a block GRUB or [`Env::to_block`] wrote.
    pub fn parse(block: &[u8]) -> Result<Env, GrubError> {
        let text = std::str::from_utf8(block).map_err(|_| GrubError::Env("not UTF-8".into()))?;
        let body = text
            .strip_prefix(ENV_HEADER)
            .ok_or_else(|| GrubError::Env("no header line".into()))?;
        let mut vars = BTreeMap::new();
        for line in body.split('\n') {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| GrubError::Env(format!("line {line:?} is not key=value")))?;
            vars.insert(k.to_string(), v.to_string());
        }
        Ok(Env { vars })
    }

    /// The 1024-byte block. What matters fits the first sector (checked): a write torn between
    /// the block's two sectors leaves the first sector whole, old or new.
    pub fn to_block(&self) -> Result<[u8; ENV_SIZE], GrubError> {
        let mut s = String::from(ENV_HEADER);
        for (k, v) in &self.vars {
            if k.contains(['=', '\n']) || v.contains('\n') || k.is_empty() {
                return Err(GrubError::Env(format!("{k:?}={v:?} cannot be stored")));
            }
            s.push_str(&format!("{k}={v}\n"));
        }
        if s.len() > 512 {
            return Err(GrubError::Env(format!(
                "{} bytes of variables do not fit one sector",
                s.len()
            )));
        }
        let mut block = [b'#'; ENV_SIZE];
        block[..s.len()].copy_from_slice(s.as_bytes());
        Ok(block)
    }
}

// From GRUB's include/grub/i386/pc/boot.h and offsets.h.
const KERNEL_SECTOR: usize = 0x5c;
const BOOT_DRIVE: usize = 0x64;
const DRIVE_CHECK: usize = 0x66;
const NO_REED_SOLOMON_LENGTH: usize = 512 + 0x14;
/// Where the core image's rest is loaded (GRUB_BOOT_I386_PC_KERNEL_SEG + 512 / 16).
const CORE_SEGMENT: u16 = 0x800 + (512 >> 4);
/// One blocklist entry: start (u64), length (u16), segment (u16).
const LIST_SIZE: usize = 12;

/// The MBR's first 440 bytes: GRUB's `boot.img` told that the core image starts at sector
/// `core_lba`, with the drive check turned off for hard disks (as `grub-bios-setup` does: some
/// BIOSes pass a wrong boot drive).
pub fn bios_boot_code(boot_img: &[u8], core_lba: u64) -> Result<[u8; 440], GrubError> {
    if boot_img.len() != 512 || boot_img[510..] != [0x55, 0xaa] {
        return Err(GrubError::Image {
            what: "boot.img",
            why: format!("{} bytes, not a 512-byte boot sector", boot_img.len()),
        });
    }
    let mut b = [0u8; 440];
    b.copy_from_slice(&boot_img[..440]);
    b[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    b[BOOT_DRIVE] = 0xff;
    b[DRIVE_CHECK] = 0x90;
    b[DRIVE_CHECK + 1] = 0x90;
    Ok(b)
}

/// GRUB's `core.img` (i386-pc) ready to sit at sector `core_lba` and after: its first sector
/// (diskboot) lists the sectors holding the rest — one contiguous run, no Reed-Solomon codes.
pub fn bios_core(core_img: &[u8], core_lba: u64, room: u64) -> Result<Vec<u8>, GrubError> {
    let bad = |why: String| GrubError::Image {
        what: "core.img",
        why,
    };
    if core_img.len() < 1024 {
        return Err(bad(format!("{} bytes", core_img.len())));
    }
    let no_rs = u16::from_le_bytes([
        core_img[NO_REED_SOLOMON_LENGTH],
        core_img[NO_REED_SOLOMON_LENGTH + 1],
    ]);
    if no_rs == 0xffff {
        return Err(bad("a core.img of another GRUB version".into()));
    }
    let sectors = core_img.len().div_ceil(512);
    if sectors as u64 > room || sectors > usize::from(u16::MAX) {
        return Err(bad(format!(
            "{sectors} sectors do not fit the {room} of the BIOS boot partition"
        )));
    }
    let mut c = core_img.to_vec();
    c.resize(sectors * 512, 0);
    // Clear the list (it grows downwards from the end of the first sector), then one entry
    // for the rest of the image and a terminator.
    let mut at = 512 - LIST_SIZE;
    while at > 0 && c[at + 8..at + 10] != [0, 0] {
        c[at..at + LIST_SIZE].fill(0);
        at -= LIST_SIZE;
    }
    let first = 512 - LIST_SIZE;
    c[first..first + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    let rest = u16::try_from(sectors - 1).map_err(|_| bad("too large".into()))?;
    c[first + 8..first + 10].copy_from_slice(&rest.to_le_bytes());
    c[first + 10..first + 12].copy_from_slice(&CORE_SEGMENT.to_le_bytes());
    c[first - LIST_SIZE..first].fill(0);
    Ok(c)
}

/// GRUB's prefix for both core images: `grub/` on the EFI partition of the disk GRUB was
/// loaded from (GRUB fills in the drive when the device starts with a comma).
pub fn prefix() -> String {
    format!("(,gpt{})/grub", EFI.number)
}

/// `grub.cfg` on the EFI partition. Both slots' `boot.cfg` set `basalt_cmdline`.
pub fn config() -> String {
    let (meta, a, b) = (META.number, BOOT_A.number, BOOT_B.number);
    format!(
        r#"serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
regexp --set=1:basalt_disk '^([^,]+),' "$root"
set basalt_meta=($basalt_disk,gpt{meta})/grubenv
load_env -f $basalt_meta
set basalt_boot="$slot"
set basalt_trial=
if [ -n "$next" ]; then
  if [ "$next_tried" = "1" ]; then
    echo "basalt: slot $next did not confirm its boot; booting slot $slot again"
    set failed="$next"
    set next=
    set next_tried=
    save_env -f $basalt_meta failed next next_tried
  else
    set next_tried=1
    save_env -f $basalt_meta next_tried
    set basalt_boot="$next"
    set basalt_trial="basalt.trial=1"
  fi
fi
if [ "$basalt_boot" = "B" ]; then
  set basalt_part=($basalt_disk,gpt{b})
else
  set basalt_boot=A
  set basalt_part=($basalt_disk,gpt{a})
fi
echo "basalt: booting slot $basalt_boot"
source $basalt_part/boot.cfg
linux $basalt_part/vmlinuz $basalt_cmdline basalt.slot=$basalt_boot $basalt_trial
initrd $basalt_part/initramfs.img $basalt_part/rootfs.img
boot
"#
    )
}

/// A slot's `boot.cfg`: its kernel command line and version.
pub fn slot_config(cmdline: &str, version: &str) -> Result<String, GrubError> {
    for s in [cmdline, version] {
        if let Some(c) = s.chars().find(|c| matches!(c, '"' | '\\' | '$' | '\n')) {
            return Err(GrubError::Cmdline(c));
        }
    }
    Ok(format!(
        "set basalt_cmdline=\"{cmdline}\"\nset basalt_version=\"{version}\"\n"
    ))
}

/// The version a slot's `boot.cfg` names.
pub fn slot_version(boot_cfg: &str) -> Option<String> {
    slot_var(boot_cfg, "basalt_version")
}

/// The kernel command line a slot's `boot.cfg` sets.
pub fn slot_cmdline(boot_cfg: &str) -> Option<String> {
    slot_var(boot_cfg, "basalt_cmdline")
}

fn slot_var(boot_cfg: &str, name: &str) -> Option<String> {
    boot_cfg.lines().find_map(|l| {
        l.strip_prefix("set ")?
            .strip_prefix(name)?
            .strip_prefix("=\"")?
            .strip_suffix('"')
            .map(str::to_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_round_trips_and_keeps_to_one_sector() {
        let mut e = Env::default();
        e.set("slot", "A");
        e.set("next", "B");
        let block = e.to_block().unwrap();
        assert!(block.starts_with(b"# GRUB Environment Block\nnext=B\nslot=A\n#"));
        assert_eq!(Env::parse(&block).unwrap(), e);
        e.set("x", &"y".repeat(600));
        assert!(e.to_block().is_err());
        assert!(Env::parse(b"garbage").is_err());
    }

    #[test]
    fn boot_code_and_core_are_patched_as_grub_bios_setup_does() {
        let mut boot = vec![0u8; 512];
        boot[510] = 0x55;
        boot[511] = 0xaa;
        let code = bios_boot_code(&boot, 2048).unwrap();
        assert_eq!(&code[0x5c..0x64], &2048u64.to_le_bytes());
        assert_eq!(code[0x64], 0xff);
        assert_eq!(&code[0x66..0x68], &[0x90, 0x90]);
        assert!(bios_boot_code(&boot[..400], 2048).is_err());

        let mut core = vec![0xabu8; 3000];
        core[512 + 0x14..512 + 0x16].copy_from_slice(&[0, 0]);
        // A default list entry, as grub-mkimage leaves one.
        core[500..512].copy_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0x20, 0x08]);
        core[488..500].fill(0);
        let out = bios_core(&core, 2048, 2048).unwrap();
        assert_eq!(out.len(), 3072);
        assert_eq!(&out[500..508], &2049u64.to_le_bytes());
        assert_eq!(&out[508..510], &5u16.to_le_bytes());
        assert_eq!(&out[510..512], &0x820u16.to_le_bytes());
        assert_eq!(&out[488..500], &[0u8; 12]);
        assert!(bios_core(&core, 2048, 3).is_err());
    }

    #[test]
    fn slot_config_quotes_and_refuses_what_it_cannot() {
        let c = slot_config("console=ttyS0 ip=dhcp", "v1.2").unwrap();
        assert_eq!(slot_version(&c).as_deref(), Some("v1.2"));
        assert_eq!(slot_cmdline(&c).as_deref(), Some("console=ttyS0 ip=dhcp"));
        assert!(slot_config("a\"b", "v").is_err());
        assert!(config().contains("gpt5)/grubenv"));
    }

    /// The real boot.img and core.img of the build host's GRUB, as the image build makes it.
    #[test]
    fn the_hosts_grub_images_patch() {
        let boot = std::fs::read("/usr/lib/grub/i386-pc/boot.img")
            .expect("GRUB's BIOS images (grub-pc-bin): hack/test installs them");
        bios_boot_code(&boot, 2048).unwrap();
    }
}

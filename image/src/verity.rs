//! The dm-verity hash tree of `rootfs.sqsh`, appended to the file itself.
//!
//! Early init maps the root through the kernel's `verity` target, which checks every block
//! against this tree as it is read, instead of hashing the whole file before mounting it
//! (docs/boot.md, "The rootfs's integrity: dm-verity"). The layout is the kernel's format 1, the one
//! `veritysetup format --no-superblock` writes:
//!
//! - the data: the SquashFS image, padded with zeros to whole 4096-byte blocks;
//! - then the tree, starting at block `hash_start` (= the number of data blocks): its levels
//!   from the top (one block) down to the level that hashes the data blocks. Each entry is
//!   sha256(salt ‖ block), 128 to a 4096-byte block, the rest of the block zero;
//! - the root hash is sha256(salt ‖ the top block). It and the salt go into the initramfs
//!   (`/etc/basalt/rootfs.verity`), which is what makes the root trusted.
//!
//! The salt is derived from the data (sha256 of it), so two builds of the same rootfs give the
//! same bytes.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{ImageError, hex, io_err};

/// Bytes per data and per hash block.
/// The block size, as a length.
pub const BLOCK_SIZE: usize = 4096;
pub const BLOCK: u64 = BLOCK_SIZE as u64;
const DIGEST: usize = 32;

/// What early init needs to map a rootfs through dm-verity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verity {
    /// Data blocks (4096 bytes each); the tree starts right after them.
    pub data_blocks: u64,
    pub root_hash: [u8; DIGEST],
    pub salt: [u8; DIGEST],
}

impl Verity {
    /// The block where the tree starts (in 4096-byte blocks from the file's start).
    pub fn hash_start(&self) -> u64 {
        self.data_blocks
    }

    pub fn root_hex(&self) -> String {
        hex(&self.root_hash)
    }

    pub fn salt_hex(&self) -> String {
        hex(&self.salt)
    }

    /// The text of `/etc/basalt/rootfs.verity`, which init's `verity` module reads.
    pub fn to_file(&self) -> String {
        format!(
            "# dm-verity of /rootfs.sqsh: format 1, sha256, 4096-byte blocks, the tree after the data\n\
             data_blocks {}\nhash_start {}\nroot_hash {}\nsalt {}\n",
            self.data_blocks,
            self.hash_start(),
            self.root_hex(),
            self.salt_hex()
        )
    }
}

fn hash(salt: &[u8], block: &[u8]) -> [u8; DIGEST] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// The tree's levels, lowest first: level 0 hashes the data blocks; each next level hashes
/// the blocks of the one below, until a level is one block. Each level is whole blocks.
fn levels(salt: &[u8], data: &[u8]) -> Vec<Vec<u8>> {
    let level = |below: &[u8]| {
        let mut l: Vec<u8> = below
            .chunks(BLOCK_SIZE)
            .flat_map(|b| hash(salt, b))
            .collect();
        l.resize(l.len().div_ceil(BLOCK_SIZE) * BLOCK_SIZE, 0);
        l
    };
    let mut out = vec![level(data)];
    while let Some(last) = out.last().filter(|l| l.len() as u64 > BLOCK) {
        let next = level(last);
        out.push(next);
    }
    out
}

/// Computes the tree of `data` (whole blocks) and its root hash.
fn tree(data: &[u8], salt: [u8; DIGEST]) -> (Vec<u8>, Verity) {
    let levels = levels(&salt, data);
    let top = levels.last().map(Vec::as_slice).unwrap_or_default();
    let root_hash = hash(&salt, top);
    let mut bytes = Vec::new();
    for l in levels.iter().rev() {
        bytes.extend_from_slice(l);
    }
    let v = Verity {
        data_blocks: data.len() as u64 / BLOCK,
        root_hash,
        salt,
    };
    (bytes, v)
}

/// Pads `path` to whole blocks and appends its hash tree; returns what maps it.
pub fn append_tree(path: &Path) -> Result<Verity, ImageError> {
    let mut data = std::fs::read(path).map_err(io_err("read", path))?;
    if data.is_empty() {
        return Err(ImageError::Init(format!("{} is empty", path.display())));
    }
    let whole = data.len().div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
    data.resize(whole, 0);
    let salt: [u8; DIGEST] = Sha256::digest(&data).into();
    let (tree, v) = tree(&data, salt);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open", path))?;
    f.set_len(whole as u64).map_err(io_err("pad", path))?;
    f.seek(SeekFrom::End(0)).map_err(io_err("seek", path))?;
    f.write_all(&tree).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("sync", path))?;
    Ok(v)
}

/// Reads back what [`append_tree`] wrote to the rootfs at `path`: the data is the SquashFS
/// image (its superblock's `bytes_used`, in whole blocks), the tree is checked to be the one
/// that data gives. A rootfs without its tree, or a tree that does not match, is an error.
pub fn read(path: &Path) -> Result<Verity, ImageError> {
    let bad = |why: String| ImageError::Init(format!("{}: {why}", path.display()));
    let mut f = std::fs::File::open(path).map_err(io_err("open", path))?;
    let mut sb = [0u8; 48];
    f.read_exact(&mut sb).map_err(io_err("read", path))?;
    if &sb[..4] != b"hsqs" {
        return Err(bad("not a SquashFS image".into()));
    }
    let bytes_used = u64::from_le_bytes(sb[40..48].try_into().unwrap_or_default());
    let whole = bytes_used.div_ceil(BLOCK) * BLOCK;
    let mut all = Vec::new();
    f.seek(SeekFrom::Start(0)).map_err(io_err("seek", path))?;
    f.read_to_end(&mut all).map_err(io_err("read", path))?;
    if (all.len() as u64) <= whole {
        return Err(bad(
            "it has no dm-verity hash tree after the SquashFS data".into()
        ));
    }
    let (data, stored) = all.split_at(usize::try_from(whole).unwrap_or(usize::MAX));
    let salt: [u8; DIGEST] = Sha256::digest(data).into();
    let (tree, v) = tree(data, salt);
    if tree != stored {
        return Err(bad(
            "its dm-verity hash tree does not match its data (the file was changed after the build)"
                .into(),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(blocks: usize) -> Vec<u8> {
        // Distinct blocks, so a tree that mixes them up cannot pass.
        let mut d = Vec::with_capacity(blocks * BLOCK_SIZE);
        for i in 0..blocks {
            let mut b = vec![0u8; BLOCK_SIZE];
            b[..8].copy_from_slice(&(i as u64).to_le_bytes());
            b[100] = u8::try_from(i % 251).unwrap_or(0);
            d.extend_from_slice(&b);
        }
        d
    }

    #[test]
    fn level_sizes_follow_the_kernels_layout() {
        // One level holds 128 hashes per block: 300 data blocks → 3 blocks, then 1.
        let (tree, v) = tree(&data(300), [7; DIGEST]);
        assert_eq!(v.data_blocks, 300);
        assert_eq!(tree.len() as u64, 4 * BLOCK);
        // The top block (first in the file) holds the hashes of level 0's three blocks.
        let level0 = &tree[BLOCK_SIZE..];
        for i in 0..3 {
            let b = &level0[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE];
            assert_eq!(&tree[i * DIGEST..(i + 1) * DIGEST], &hash(&[7; DIGEST], b));
        }
        assert!(tree[3 * DIGEST..BLOCK_SIZE].iter().all(|&b| b == 0));
        // Up to 128 blocks, one level.
        let (tree, _) = super::tree(&data(128), [7; DIGEST]);
        assert_eq!(tree.len() as u64, BLOCK);
    }

    /// The tree must be the one the kernel checks against: cryptsetup's `veritysetup verify`
    /// (the same format, written independently) must accept it, and reject a changed byte.
    #[test]
    fn veritysetup_accepts_the_tree_and_rejects_a_changed_block() {
        // In /usr/sbin, which an unprivileged user's PATH often lacks.
        let tool = ["/usr/sbin/veritysetup", "/sbin/veritysetup", "/usr/bin/veritysetup"]
            .into_iter()
            .find(|t| Path::new(t).exists())
            .unwrap_or_else(|| {
                panic!(
                    "veritysetup is not installed (Debian package cryptsetup-bin; hack/test installs it)"
                )
            });
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rootfs.sqsh");
        // A SquashFS-like header (magic, bytes_used) and 16 500 blocks: three levels.
        let mut d = data(16_500);
        d.truncate(d.len() - 1000);
        d[..4].copy_from_slice(b"hsqs");
        let used = d.len() as u64;
        d[40..48].copy_from_slice(&used.to_le_bytes());
        std::fs::write(&p, &d).unwrap();
        let v = append_tree(&p).unwrap();
        assert_eq!(v.data_blocks, 16_500);
        assert_eq!(read(&p).unwrap(), v);
        let verify = |p: &Path| {
            std::process::Command::new(tool)
                .arg("verify")
                .arg(p)
                .arg(p)
                .arg(v.root_hex())
                .args(["--no-superblock", "--format=1", "--hash=sha256"])
                .args(["--data-block-size=4096", "--hash-block-size=4096"])
                .arg(format!("--data-blocks={}", v.data_blocks))
                .arg(format!("--hash-offset={}", v.hash_start() * BLOCK))
                .arg(format!("--salt={}", v.salt_hex()))
                .output()
                .unwrap()
        };
        let out = verify(&p);
        assert!(out.status.success(), "{out:?}");
        let mut bad = std::fs::read(&p).unwrap();
        bad[4096 * 9000 + 17] ^= 1;
        let q = dir.path().join("bad.sqsh");
        std::fs::write(&q, &bad).unwrap();
        assert!(!verify(&q).status.success());
        // Reading it back notices the change too.
        let e = read(&q).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
    }
}

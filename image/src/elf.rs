//! Just enough ELF to find what a dynamically linked program needs: its interpreter
//! (`PT_INTERP`) and the libraries in its `DT_NEEDED` entries. x86-64 little-endian only.

/// What an ELF file asks of the dynamic loader.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dynamic {
    pub interpreter: Option<String>,
    pub needed: Vec<String>,
}

/// Why a file could not be read as ELF.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a readable 64-bit little-endian ELF file: {0}")]
pub struct ElfError(pub &'static str);

fn u16_at(b: &[u8], o: usize) -> Result<u16, ElfError> {
    b.get(o..o + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(ElfError("truncated"))
}
fn u32_at(b: &[u8], o: usize) -> Result<u32, ElfError> {
    b.get(o..o + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(ElfError("truncated"))
}
fn u64_at(b: &[u8], o: usize) -> Result<u64, ElfError> {
    b.get(o..o + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(ElfError("truncated"))
}
fn cstr(b: &[u8], o: usize) -> Result<String, ElfError> {
    let rest = b.get(o..).ok_or(ElfError("string out of range"))?;
    let end = rest
        .iter()
        .position(|c| *c == 0)
        .ok_or(ElfError("unterminated string"))?;
    Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
}
fn idx(v: u64) -> Result<usize, ElfError> {
    usize::try_from(v).map_err(|_| ElfError("offset too large"))
}

struct Phdr {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// Reads the interpreter and `DT_NEEDED` names. A static binary gives an empty result.
pub fn dynamic(b: &[u8]) -> Result<Dynamic, ElfError> {
    if b.get(..4) != Some(b"\x7fELF") {
        return Err(ElfError("no ELF magic"));
    }
    if b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return Err(ElfError("not 64-bit little-endian"));
    }
    let phoff = idx(u64_at(b, 0x20)?)?;
    let phentsize = usize::from(u16_at(b, 0x36)?);
    let phnum = usize::from(u16_at(b, 0x38)?);
    let mut phdrs = Vec::with_capacity(phnum);
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        phdrs.push(Phdr {
            kind: u32_at(b, o)?,
            offset: u64_at(b, o + 8)?,
            vaddr: u64_at(b, o + 16)?,
            filesz: u64_at(b, o + 32)?,
        });
    }
    let mut out = Dynamic::default();
    if let Some(p) = phdrs.iter().find(|p| p.kind == 3) {
        out.interpreter = Some(cstr(b, idx(p.offset)?)?);
    }
    let Some(dynseg) = phdrs.iter().find(|p| p.kind == 2) else {
        return Ok(out);
    };
    let (mut strtab, mut needed) = (None, Vec::new());
    let mut o = idx(dynseg.offset)?;
    let end = o + idx(dynseg.filesz)?;
    while o + 16 <= end {
        let (tag, val) = (u64_at(b, o)?, u64_at(b, o + 8)?);
        match tag {
            0 => break,
            1 => needed.push(val),
            5 => strtab = Some(val),
            _ => {}
        }
        o += 16;
    }
    let strtab = strtab.ok_or(ElfError("dynamic section without DT_STRTAB"))?;
    // DT_STRTAB is an address; the PT_LOAD segment that holds it gives its file offset.
    let load = phdrs
        .iter()
        .find(|p| p.kind == 1 && p.vaddr <= strtab && strtab < p.vaddr + p.filesz)
        .ok_or(ElfError("DT_STRTAB outside every loaded segment"))?;
    let base = idx(strtab - load.vaddr + load.offset)?;
    for n in needed {
        out.needed.push(cstr(b, base + idx(n)?)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_dynamic_binary_and_rejects_junk() {
        // Every Debian machine has a dynamically linked /bin/ls.
        let d = dynamic(&std::fs::read("/bin/ls").unwrap()).unwrap();
        assert_eq!(
            d.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert!(d.needed.contains(&"libc.so.6".to_string()), "{d:?}");
        assert_eq!(
            dynamic(b"#!/bin/sh\n").unwrap_err(),
            ElfError("no ELF magic")
        );
        assert!(dynamic(b"\x7fELF\x02\x01").is_err());
    }
}

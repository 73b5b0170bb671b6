//! Just enough ELF64 reading for vm-tests: program headers, to tell a static executable
//! (no interpreter) and to find a kernel's PVH entry note.

pub const PT_INTERP: u32 = 3;
pub const PT_NOTE: u32 = 4;

/// One program header: its type and the bytes of the file it covers.
pub struct Segment<'a> {
    pub kind: u32,
    pub data: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<usize> {
    usize::try_from(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?)).ok()
}

/// The program headers of a little-endian ELF64 file; `None` if it is not one.
pub fn segments(elf: &[u8]) -> Option<Vec<Segment<'_>>> {
    if elf.get(0..6)? != [0x7f, b'E', b'L', b'F', 2, 1] {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(elf, 0x20)?, u16_at(elf, 0x36)?, u16_at(elf, 0x38)?);
    (0..phnum)
        .map(|i| {
            let ph = phoff + i * phentsize;
            let (offset, size) = (u64_at(elf, ph + 0x08)?, u64_at(elf, ph + 0x20)?);
            Some(Segment {
                kind: u32_at(elf, ph)?,
                data: elf.get(offset..offset + size)?,
            })
        })
        .collect()
}

/// The notes of a PT_NOTE segment: (name, type).
pub fn notes(segment: &[u8]) -> Vec<(&[u8], u32)> {
    let mut found = Vec::new();
    let mut at = 0;
    while let (Some(namesz), Some(descsz), Some(kind)) = (
        u32_at(segment, at),
        u32_at(segment, at + 4),
        u32_at(segment, at + 8),
    ) {
        let (namesz, descsz) = (namesz as usize, descsz as usize);
        let Some(name) = segment.get(at + 12..at + 12 + namesz) else {
            break;
        };
        found.push((name, kind));
        at += 12 + namesz.div_ceil(4) * 4 + descsz.div_ceil(4) * 4;
    }
    found
}

/// Whether an executable needs no dynamic loader (and so runs in a guest without libraries).
pub fn is_static(elf: &[u8]) -> bool {
    segments(elf).is_some_and(|s| !s.iter().any(|s| s.kind == PT_INTERP))
}

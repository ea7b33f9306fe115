//! The unified kernel image: one EFI executable made of a PE EFI stub
//! (Debian's `systemd-boot-efi` ships `linuxx64.efi.stub`) plus the
//! sections the stub reads at boot: `.osrel` (the image's os-release),
//! `.cmdline` (the kernel command line), `.initrd` (the initramfs) and
//! `.linux` (the kernel).
//!
//! The sections are appended by this module's own PE writer, which is pure
//! (bytes in, bytes out), so the same inputs always give the same bytes.
//! Layout, as systemd's ukify does it: each new section starts at the next
//! `SectionAlignment` boundary after the previous section's virtual end
//! (here rounded up to 4 KiB pages, which also satisfies every stub's
//! alignment), its raw data at the end of the file padded to
//! `FileAlignment`; the header gets one 40-byte section header per new
//! section (the stub must have room before its first section's data),
//! `SizeOfImage` and `SizeOfInitializedData` grow, and the PE checksum is
//! recomputed. A stub that carries an Authenticode signature is refused:
//! appending would invalidate it (Secure Boot is not supported yet).

use std::path::{Path, PathBuf};

use crate::build::{self, BuildError, BuildOptions, Compression, Content};
use crate::inventory::Inventory;

/// The stub Debian's `systemd-boot-efi` package installs.
pub const DEFAULT_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// Page size the new sections are aligned to in memory.
const PAGE: u32 = 4096;
const SECTION_HEADER: usize = 40;
/// IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ.
const DATA_READ_ONLY: u32 = 0x0000_0040 | 0x4000_0000;
const PE32_PLUS: u16 = 0x20b;
/// Index of the certificate table (Authenticode) in the data directories.
const SECURITY_DIRECTORY: usize = 4;

/// Errors of reading the stub or writing the image.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the EFI stub is not a PE32+ image: {0}")]
    NotPe(&'static str),
    #[error("the EFI stub is signed (Authenticode); give an unsigned stub")]
    Signed,
    #[error("the EFI stub already has a {0} section")]
    Duplicate(String),
    #[error(
        "the EFI stub's headers have room for {room} more section headers, {wanted} are needed"
    )]
    NoHeaderRoom { room: usize, wanted: usize },
    #[error("section name {0:?} must be 1 to 8 bytes")]
    BadName(String),
    #[error("the kernel {0} is not an EFI-stub kernel (no MZ header)")]
    NotEfiKernel(PathBuf),
    #[error("the unified kernel image would exceed 4 GiB")]
    TooLarge,
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One section of a PE image, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub virtual_address: u32,
    pub virtual_size: u32,
    pub raw_offset: u32,
    pub raw_size: u32,
    pub characteristics: u32,
}

/// The header fields of a PE32+ image this module reads or writes.
#[derive(Debug, Clone)]
pub struct PeHeaders {
    coff: usize,
    optional: usize,
    section_table: usize,
    pub section_alignment: u32,
    pub file_alignment: u32,
    pub size_of_image: u32,
    pub size_of_headers: u32,
    pub checksum: u32,
    pub sections: Vec<Section>,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, UkiError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(UkiError::NotPe("truncated header"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, UkiError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(UkiError::NotPe("truncated header"))
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to.max(1)) * to.max(1)
}

/// Parses the headers and section table of a PE32+ image.
pub fn read_headers(pe: &[u8]) -> Result<PeHeaders, UkiError> {
    if pe.get(..2) != Some(b"MZ") {
        return Err(UkiError::NotPe("no MZ header"));
    }
    let pe_at = u32_at(pe, 0x3c)? as usize;
    if pe.get(pe_at..pe_at + 4) != Some(b"PE\0\0") {
        return Err(UkiError::NotPe("no PE signature"));
    }
    let coff = pe_at + 4;
    let count = u16_at(pe, coff + 2)? as usize;
    let optional_size = u16_at(pe, coff + 16)? as usize;
    let optional = coff + 20;
    if u16_at(pe, optional)? != PE32_PLUS {
        return Err(UkiError::NotPe("not PE32+ (64-bit)"));
    }
    let directories = u32_at(pe, optional + 108)? as usize;
    if directories > SECURITY_DIRECTORY {
        let at = optional + 112 + SECURITY_DIRECTORY * 8;
        if u32_at(pe, at + 4)? != 0 {
            return Err(UkiError::Signed);
        }
    }
    let section_table = optional + optional_size;
    let mut sections = Vec::with_capacity(count);
    for i in 0..count {
        let at = section_table + i * SECTION_HEADER;
        let raw_name = pe
            .get(at..at + 8)
            .ok_or(UkiError::NotPe("truncated section table"))?;
        let end = raw_name.iter().position(|&c| c == 0).unwrap_or(8);
        sections.push(Section {
            name: String::from_utf8_lossy(&raw_name[..end]).into_owned(),
            virtual_size: u32_at(pe, at + 8)?,
            virtual_address: u32_at(pe, at + 12)?,
            raw_size: u32_at(pe, at + 16)?,
            raw_offset: u32_at(pe, at + 20)?,
            characteristics: u32_at(pe, at + 36)?,
        });
    }
    Ok(PeHeaders {
        coff,
        optional,
        section_table,
        section_alignment: u32_at(pe, optional + 32)?,
        file_alignment: u32_at(pe, optional + 36)?,
        size_of_image: u32_at(pe, optional + 56)?,
        size_of_headers: u32_at(pe, optional + 60)?,
        checksum: u32_at(pe, optional + 64)?,
        sections,
    })
}

/// The PE checksum: 16-bit one's-complement style sum of the file with the
/// checksum field counted as zero, plus the file length.
pub fn pe_checksum(pe: &[u8], checksum_at: usize) -> u32 {
    let mut sum: u64 = 0;
    let mut i = 0;
    while i < pe.len() {
        let word = if i == checksum_at || i == checksum_at + 2 {
            0
        } else {
            let lo = pe[i] as u64;
            let hi = pe.get(i + 1).copied().unwrap_or(0) as u64;
            lo | (hi << 8)
        };
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(pe.len() as u32)
}

/// Appends `sections` (name, content) to the PE image `stub`, in order.
pub fn append_sections(stub: &[u8], sections: &[(&str, &[u8])]) -> Result<Vec<u8>, UkiError> {
    let headers = read_headers(stub)?;
    for (name, _) in sections {
        if name.is_empty() || name.len() > 8 {
            return Err(UkiError::BadName((*name).to_owned()));
        }
        if headers.sections.iter().any(|s| s.name == *name) {
            return Err(UkiError::Duplicate((*name).to_owned()));
        }
    }
    let table_end = headers.section_table + headers.sections.len() * SECTION_HEADER;
    let first_raw = headers
        .sections
        .iter()
        .filter(|s| s.raw_size > 0)
        .map(|s| s.raw_offset as usize)
        .min()
        .unwrap_or(headers.size_of_headers as usize)
        .min(headers.size_of_headers as usize);
    let room = first_raw.saturating_sub(table_end) / SECTION_HEADER;
    if room < sections.len() {
        return Err(UkiError::NoHeaderRoom {
            room,
            wanted: sections.len(),
        });
    }
    let file_align = u64::from(headers.file_alignment.max(1));
    let section_align = u64::from(headers.section_alignment.max(1)).max(u64::from(PAGE));
    // Keep the stub's bytes up to the end of its last section's raw data
    // (anything after it, such as a symbol table, is not loaded).
    let raw_end = headers
        .sections
        .iter()
        .map(|s| u64::from(s.raw_offset) + u64::from(s.raw_size))
        .max()
        .unwrap_or(u64::from(headers.size_of_headers))
        .max(u64::from(headers.size_of_headers));
    let raw_end = usize::try_from(raw_end).map_err(|_| UkiError::TooLarge)?;
    let mut out = stub
        .get(..raw_end)
        .ok_or(UkiError::NotPe("section data beyond the end of the file"))?
        .to_vec();
    out.resize(round_up(out.len() as u64, file_align) as usize, 0);

    let mut virtual_end = headers
        .sections
        .iter()
        .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size.max(s.raw_size)))
        .max()
        .unwrap_or(u64::from(headers.size_of_image));
    let mut initialized = u64::from(u32_at(stub, headers.optional + 8)?);
    let too_large = |v: u64| u32::try_from(v).map_err(|_| UkiError::TooLarge);
    for (i, (name, data)) in sections.iter().enumerate() {
        let va = round_up(virtual_end, section_align);
        let raw_offset = out.len() as u64;
        let raw_size = round_up(data.len() as u64, file_align);
        let at = table_end + i * SECTION_HEADER;
        let mut header = [0u8; SECTION_HEADER];
        header[..name.len()].copy_from_slice(name.as_bytes());
        put_u32(&mut header, 8, too_large(data.len() as u64)?);
        put_u32(&mut header, 12, too_large(va)?);
        put_u32(&mut header, 16, too_large(raw_size)?);
        put_u32(&mut header, 20, too_large(raw_offset)?);
        put_u32(&mut header, 36, DATA_READ_ONLY);
        out[at..at + SECTION_HEADER].copy_from_slice(&header);
        out.extend_from_slice(data);
        out.resize((raw_offset + raw_size) as usize, 0);
        too_large(out.len() as u64)?;
        virtual_end = va + data.len() as u64;
        initialized += raw_size;
    }
    let count = headers.sections.len() + sections.len();
    put_u16(
        &mut out,
        headers.coff + 2,
        u16::try_from(count).map_err(|_| UkiError::TooLarge)?,
    );
    put_u32(&mut out, headers.optional + 8, too_large(initialized)?);
    put_u32(
        &mut out,
        headers.optional + 56,
        too_large(round_up(virtual_end, section_align))?,
    );
    let checksum_at = headers.optional + 64;
    let checksum = pe_checksum(&out, checksum_at);
    put_u32(&mut out, checksum_at, checksum);
    Ok(out)
}

/// The content of section `name` of a PE image (its virtual size of bytes).
pub fn section_data<'a>(pe: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let s = read_headers(pe)
        .ok()?
        .sections
        .into_iter()
        .find(|s| s.name == name)?;
    let start = s.raw_offset as usize;
    pe.get(start..start + s.virtual_size.min(s.raw_size) as usize)
}

/// What goes into a unified kernel image.
#[derive(Debug, Clone)]
pub struct UkiParts<'a> {
    pub stub: &'a [u8],
    pub os_release: &'a [u8],
    pub cmdline: &'a str,
    pub initrd: &'a [u8],
    pub kernel: &'a [u8],
}

/// The unified kernel image of `parts`. The command line section ends with
/// a NUL, as the stub expects a C string.
pub fn unified_kernel_image(parts: &UkiParts<'_>) -> Result<Vec<u8>, UkiError> {
    let mut cmdline = parts.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    append_sections(
        parts.stub,
        &[
            (".osrel", parts.os_release),
            (".cmdline", &cmdline),
            (".initrd", parts.initrd),
            (".linux", parts.kernel),
        ],
    )
}

/// Reads a file for the image, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, UkiError> {
    std::fs::read(path).map_err(|source| UkiError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads a kernel and checks it can be started by the stub (a bzImage with
/// the EFI stub starts with an MZ header).
pub fn read_kernel(path: &Path) -> Result<Vec<u8>, UkiError> {
    let kernel = read(path)?;
    if kernel.get(..2) != Some(b"MZ") {
        return Err(UkiError::NotEfiKernel(path.to_owned()));
    }
    Ok(kernel)
}

/// Where the os-release the `.osrel` section carries lives in the image.
pub const OS_RELEASE_PATH: &str = "/etc/os-release";

/// Builds the image as an initramfs and writes the unified kernel image of
/// `kernel` with it to `out`. Returns the inventory.
pub fn build_uki(
    opts: &BuildOptions,
    compression: Compression,
    stub: &Path,
    kernel: &Path,
    out: &Path,
) -> Result<Inventory, UkiError> {
    let stub = read(stub)?;
    let kernel = read_kernel(kernel)?;
    let plan = build::plan(opts)?;
    let os_release = plan
        .items
        .iter()
        .find(|i| i.entry.path == OS_RELEASE_PATH)
        .and_then(|i| match &i.content {
            Content::Bytes(b) => Some(b.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let mut initrd = Vec::new();
    build::write_cpio(&plan, &mut initrd, compression).map_err(|source| UkiError::Write {
        path: out.to_owned(),
        source,
    })?;
    let image = unified_kernel_image(&UkiParts {
        stub: &stub,
        os_release: &os_release,
        cmdline: &opts.cmdline,
        initrd: &initrd,
        kernel: &kernel,
    })?;
    std::fs::write(out, image).map_err(|source| UkiError::Write {
        path: out.to_owned(),
        source,
    })?;
    Ok(plan.inventory)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ image with one .text section, headers of 0x400
    /// bytes and 0x200 alignment (like systemd 252's stub).
    pub(crate) fn tiny_pe() -> Vec<u8> {
        let mut b = vec![0u8; 0x600];
        b[..2].copy_from_slice(b"MZ");
        put_u32(&mut b, 0x3c, 0x80);
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        put_u16(&mut b, coff, 0x8664);
        put_u16(&mut b, coff + 2, 1);
        put_u16(&mut b, coff + 16, 240);
        let opt = coff + 20;
        put_u16(&mut b, opt, PE32_PLUS);
        put_u32(&mut b, opt + 16, 0x1000); // entry point
        put_u32(&mut b, opt + 32, 0x200);
        put_u32(&mut b, opt + 36, 0x200);
        put_u32(&mut b, opt + 56, 0x1200);
        put_u32(&mut b, opt + 60, 0x400);
        put_u16(&mut b, opt + 68, 10); // EFI application
        put_u32(&mut b, opt + 108, 16);
        let sec = opt + 240;
        b[sec..sec + 5].copy_from_slice(b".text");
        put_u32(&mut b, sec + 8, 0x100);
        put_u32(&mut b, sec + 12, 0x1000);
        put_u32(&mut b, sec + 16, 0x200);
        put_u32(&mut b, sec + 20, 0x400);
        put_u32(&mut b, sec + 36, 0x6000_0020);
        b[0x400..0x500].fill(0xc3);
        b
    }

    fn parts<'a>(stub: &'a [u8], kernel: &'a [u8], initrd: &'a [u8]) -> UkiParts<'a> {
        UkiParts {
            stub,
            os_release: b"NAME=kiOS\nID=kios\n",
            cmdline: "console=ttyS0",
            initrd,
            kernel,
        }
    }

    #[test]
    fn sections_are_appended_aligned_in_order_without_overlap() {
        let stub = tiny_pe();
        let kernel = vec![0x4d; 10_000];
        let initrd = vec![0x07; 5_000];
        let image = unified_kernel_image(&parts(&stub, &kernel, &initrd)).unwrap();
        let h = read_headers(&image).unwrap();
        let names: Vec<_> = h.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [".text", ".osrel", ".cmdline", ".initrd", ".linux"]);
        for pair in h.sections.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(
                u64::from(a.virtual_address) + u64::from(a.virtual_size.max(a.raw_size))
                    <= u64::from(b.virtual_address),
                "{a:?} overlaps {b:?} in memory"
            );
            assert!(
                a.raw_offset + a.raw_size <= b.raw_offset,
                "{a:?} {b:?} in the file"
            );
        }
        for s in &h.sections[1..] {
            assert_eq!(s.virtual_address % PAGE, 0, "{s:?}");
            assert_eq!(s.raw_offset % h.file_alignment, 0, "{s:?}");
            assert_eq!(s.characteristics, DATA_READ_ONLY);
        }
        let linux = &h.sections[4];
        let at = linux.raw_offset as usize;
        assert_eq!(&image[at..at + kernel.len()], &kernel[..]);
        let cmdline = &h.sections[2];
        let at = cmdline.raw_offset as usize;
        assert_eq!(
            &image[at..at + cmdline.virtual_size as usize],
            b"console=ttyS0\0"
        );
        assert_eq!(
            h.size_of_image,
            (linux.virtual_address + linux.virtual_size).div_ceil(PAGE) * PAGE
        );
        assert_eq!(h.checksum, pe_checksum(&image, h.optional + 64));
        assert_eq!(image.len() as u32, linux.raw_offset + linux.raw_size);
    }

    #[test]
    fn the_same_inputs_give_the_same_bytes() {
        let stub = tiny_pe();
        let a = unified_kernel_image(&parts(&stub, b"MZkernel", b"initrd")).unwrap();
        let b = unified_kernel_image(&parts(&stub, b"MZkernel", b"initrd")).unwrap();
        assert_eq!(a, b);
        let c = unified_kernel_image(&parts(&stub, b"MZkernel", b"initrd2")).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn refuses_signed_full_or_foreign_stubs() {
        let mut signed = tiny_pe();
        let opt = 0x84 + 20;
        put_u32(&mut signed, opt + 112 + 4 * 8 + 4, 0x100);
        assert!(matches!(
            unified_kernel_image(&parts(&signed, b"MZ", b"")),
            Err(UkiError::Signed)
        ));
        let mut full = tiny_pe();
        // Headers end right after the section table: no room.
        let sec = opt + 240;
        put_u32(&mut full, sec + 20, (sec + SECTION_HEADER) as u32);
        assert!(matches!(
            unified_kernel_image(&parts(&full, b"MZ", b"")),
            Err(UkiError::NoHeaderRoom { room: 0, wanted: 4 })
        ));
        assert!(matches!(
            append_sections(&tiny_pe(), &[(".text", b"x")]),
            Err(UkiError::Duplicate(_))
        ));
        assert!(matches!(
            append_sections(&tiny_pe(), &[(".toolongname", b"x")]),
            Err(UkiError::BadName(_))
        ));
        assert!(matches!(read_headers(b"ELF"), Err(UkiError::NotPe(_))));
    }

    /// Debian's stub (scripts/deps installs systemd-boot-efi): the sections
    /// land after its own, and an independent PE reader agrees.
    #[test]
    fn debian_stub_takes_the_sections() {
        let stub = read(Path::new(DEFAULT_STUB)).expect("systemd-boot-efi (scripts/deps)");
        let kernel = [b"MZ".as_slice(), &[0u8; 3000]].concat();
        let image = unified_kernel_image(&parts(&stub, &kernel, b"cpio")).unwrap();
        let file = object::read::pe::PeFile64::parse(&*image).expect("object parses it");
        use object::{Object, ObjectSection};
        let names: Vec<String> = file
            .sections()
            .map(|s| s.name().unwrap_or("?").to_owned())
            .collect();
        let n = names.len();
        assert_eq!(&names[n - 4..], [".osrel", ".cmdline", ".initrd", ".linux"]);
        let osrel = file.section_by_name(".osrel").unwrap();
        assert_eq!(osrel.data().unwrap(), b"NAME=kiOS\nID=kios\n");
        let stub_end = read_headers(&stub)
            .unwrap()
            .sections
            .iter()
            .map(|s| u64::from(s.virtual_address + s.virtual_size))
            .max()
            .unwrap();
        assert!(osrel.address() >= stub_end);
    }
}

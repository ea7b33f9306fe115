//! A writer of the "newc" cpio format (the format of Linux initramfs
//! images): ASCII headers with 8-digit hex fields, names and data padded to
//! four bytes, closed by a `TRAILER!!!` record. The caller supplies inode
//! numbers and times, so archives are reproducible.

use std::io::{self, Write};

/// File type bits of `mode`.
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

/// Header fields of one record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    pub ino: u32,
    /// Type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
}

/// Writes records to `out`; call [`Writer::finish`] at the end.
pub struct Writer<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Writer<W> {
        Writer { out, written: 0 }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    /// Writes one record whose body has `size` bytes, taken from `data`.
    /// `name` is relative (no leading `/`), `.` for the root.
    pub fn entry(
        &mut self,
        name: &str,
        h: &Header,
        size: u64,
        data: &mut dyn io::Read,
    ) -> io::Result<()> {
        let size32 = u32::try_from(size).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: larger than 4 GiB"),
            )
        })?;
        let namesize = name.len() + 1;
        let fields = [
            h.ino,
            h.mode,
            h.uid,
            h.gid,
            h.nlink,
            h.mtime,
            size32,
            0, // dev major
            0, // dev minor
            h.rdev_major,
            h.rdev_minor,
            namesize as u32,
            0, // check (unused by newc)
        ];
        let mut header = Vec::with_capacity(110 + namesize);
        header.extend_from_slice(MAGIC);
        for f in fields {
            header.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        self.put(&header)?;
        self.pad()?;
        let copied = io::copy(
            &mut io::Read::take(&mut *data, size),
            &mut CountingWriter(self),
        )?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name}: expected {size} bytes, got {copied}"),
            ));
        }
        self.pad()
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let h = Header {
            nlink: 1,
            ..Header::default()
        };
        self.entry(TRAILER, &h, 0, &mut io::empty())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

struct CountingWriter<'a, W: Write>(&'a mut Writer<W>);

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.0.out.write(buf)?;
        self.0.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.out.flush()
    }
}

//! SHA-256 of files, read in large chunks so that hashing runs close to
//! `sha256sum`'s throughput (sha2 picks SHA-NI/AVX2 code at run time).

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// Bytes read per `read(2)`.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Hashes the file at `path`; returns the digest and the number of bytes read.
pub fn sha256_file(path: &Path) -> std::io::Result<([u8; 32], u64)> {
    let mut file = std::fs::File::open(path)?;
    sha256_reader(&mut file)
}

/// Hashes everything `reader` yields.
pub fn sha256_reader(reader: &mut dyn Read) -> std::io::Result<([u8; 32], u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finalize().into(), total))
}

pub fn sha256_bytes(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        assert_eq!(
            hex(&sha256_bytes(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut r: &[u8] = b"abc";
        let (d, n) = sha256_reader(&mut r).unwrap();
        assert_eq!(n, 3);
        assert_eq!(d, sha256_bytes(b"abc"));
    }
}

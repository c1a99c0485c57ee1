//! Writer for the "newc" cpio format (`070701`), the format the kernel unpacks as an
//! initramfs.
//!
//! Every entry is a 110-byte ASCII header of 8-digit hex fields, the NUL-terminated name
//! padded to a multiple of 4 bytes, then the data padded the same way; the archive ends
//! with an entry named `TRAILER!!!`.

use std::io::{self, Write};

/// Magic of a newc header without checksums.
pub const MAGIC: &[u8; 6] = b"070701";
/// Name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Length of a header before the name.
pub const HEADER_LEN: usize = 110;

/// File type bits of `mode`.
pub const S_IFMT: u32 = 0o170_000;
/// Directory.
pub const S_IFDIR: u32 = 0o040_000;
/// Regular file.
pub const S_IFREG: u32 = 0o100_000;
/// Character device.
pub const S_IFCHR: u32 = 0o020_000;

/// Errors of writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// Names are relative, non-empty, without NUL, `.` or `..` parts.
    #[error("invalid archive path {0:?}")]
    InvalidPath(String),
    /// Permission bits beyond 0o7777.
    #[error("invalid permissions {perm:#o} for {path:?}")]
    InvalidPermissions {
        /// The entry.
        path: String,
        /// The bits given.
        perm: u32,
    },
    /// newc sizes are 32-bit.
    #[error("{path:?} is {size} bytes, more than a newc archive entry can hold")]
    TooLarge {
        /// The entry.
        path: String,
        /// Its size.
        size: usize,
    },
    /// Writing failed.
    #[error("write the archive: {0}")]
    Io(#[from] io::Error),
}

/// Writes entries one after another; parents must come before their contents.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

struct Entry<'a> {
    path: &'a str,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    data: &'a [u8],
}

impl<W: Write> Writer<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        Writer {
            out,
            written: 0,
            // 0 would look like "no inode" to some readers.
            next_ino: 1,
        }
    }

    /// Adds a directory with permissions `perm` (e.g. 0o755).
    pub fn directory(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        self.entry(Entry {
            path,
            mode: S_IFDIR | check_perm(path, perm)?,
            nlink: 2,
            rdev: (0, 0),
            data: &[],
        })
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        self.entry(Entry {
            path,
            mode: S_IFREG | check_perm(path, perm)?,
            nlink: 1,
            rdev: (0, 0),
            data,
        })
    }

    /// Adds a character device node.
    pub fn char_device(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.entry(Entry {
            path,
            mode: S_IFCHR | check_perm(path, perm)?,
            nlink: 1,
            rdev: (major, minor),
            data: &[],
        })
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.write_entry(TRAILER, 0, 0, 1, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, e: Entry<'_>) -> Result<(), CpioError> {
        check_path(e.path)?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.write_entry(e.path, ino, e.mode, e.nlink, e.rdev, e.data)
    }

    fn write_entry(
        &mut self,
        path: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<(), CpioError> {
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge {
            path: path.to_owned(),
            size: data.len(),
        })?;
        let namesize =
            u32::try_from(path.len() + 1).map_err(|_| CpioError::InvalidPath(path.into()))?;
        // uid, gid and mtime are 0: root owns everything, and the archive is reproducible.
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        let mut header = Vec::with_capacity(HEADER_LEN + path.len() + 4);
        header.extend_from_slice(MAGIC);
        for f in fields {
            header.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        header.extend_from_slice(path.as_bytes());
        header.push(0);
        self.put(&header)?;
        self.pad()?;
        self.put(data)?;
        Ok(self.pad()?)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = padding(self.written);
        self.put(&[0u8; 3][..n])
    }
}

/// Bytes needed after `offset` to reach a multiple of 4.
fn padding(offset: u64) -> usize {
    ((4 - offset % 4) % 4) as usize
}

fn check_path(path: &str) -> Result<(), CpioError> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\0')
        && path != TRAILER
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(CpioError::InvalidPath(path.to_owned()))
    }
}

fn check_perm(path: &str, perm: u32) -> Result<u32, CpioError> {
    if perm & !0o7777 == 0 {
        Ok(perm)
    } else {
        Err(CpioError::InvalidPermissions {
            path: path.to_owned(),
            perm,
        })
    }
}

/// A strict reader, to check what the writer produced.
#[cfg(test)]
pub(crate) mod read {
    use super::*;

    /// One parsed entry.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Parsed {
        pub offset: usize,
        pub name: String,
        pub ino: u32,
        pub mode: u32,
        pub uid: u32,
        pub gid: u32,
        pub nlink: u32,
        pub rdev: (u32, u32),
        pub data: Vec<u8>,
    }

    /// Parses a whole archive up to and including the trailer; panics on any deviation.
    pub fn parse(archive: &[u8]) -> Vec<Parsed> {
        let mut entries = Vec::new();
        let mut pos = 0;
        loop {
            assert_eq!(pos % 4, 0, "entry at {pos} is not 4-byte aligned");
            let header = &archive[pos..pos + HEADER_LEN];
            assert_eq!(&header[..6], MAGIC, "magic at {pos}");
            let field = |i: usize| {
                let hex = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(hex, 16).unwrap()
            };
            let namesize = field(11) as usize;
            let name_start = pos + HEADER_LEN;
            let name = &archive[name_start..name_start + namesize];
            assert_eq!(name.last(), Some(&0), "name not NUL-terminated");
            let name = String::from_utf8(name[..namesize - 1].to_vec()).unwrap();
            let data_start = name_start + namesize + padding((name_start + namesize) as u64);
            let size = field(6) as usize;
            let end = data_start + size;
            assert!(
                archive[name_start + namesize..data_start]
                    .iter()
                    .all(|&b| b == 0),
                "name padding must be zeros"
            );
            entries.push(Parsed {
                offset: pos,
                name: name.clone(),
                ino: field(0),
                mode: field(1),
                uid: field(2),
                gid: field(3),
                nlink: field(4),
                rdev: (field(9), field(10)),
                data: archive[data_start..end].to_vec(),
            });
            assert_eq!(field(12), 0, "newc check field must be 0");
            pos = end + padding(end as u64);
            if name == TRAILER {
                assert_eq!(pos, archive.len(), "bytes after the trailer");
                return entries;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::read::parse;
    use super::*;

    fn archive(build: impl FnOnce(&mut Writer<Vec<u8>>)) -> Vec<u8> {
        let mut w = Writer::new(Vec::new());
        build(&mut w);
        w.finish().unwrap()
    }

    #[test]
    fn entries_round_trip_with_type_permissions_and_data() {
        let bytes = archive(|w| {
            w.directory("dev", 0o755).unwrap();
            w.char_device("dev/console", 0o600, 5, 1).unwrap();
            w.file("init", 0o755, b"#!/bin/sh\n").unwrap();
            w.directory("tmp", 0o1777).unwrap();
        });
        let e = parse(&bytes);
        let names: Vec<_> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "init", "tmp", TRAILER]);
        assert_eq!(e[0].mode, S_IFDIR | 0o755);
        assert_eq!((e[1].mode, e[1].rdev), (S_IFCHR | 0o600, (5, 1)));
        assert_eq!(
            (e[2].mode, e[2].data.as_slice()),
            (S_IFREG | 0o755, &b"#!/bin/sh\n"[..])
        );
        assert_eq!(e[3].mode & !S_IFMT, 0o1777);
        assert!(e.iter().all(|e| e.uid == 0 && e.gid == 0));
    }

    #[test]
    fn entries_get_distinct_nonzero_inodes() {
        let bytes = archive(|w| {
            w.directory("a", 0o755).unwrap();
            w.directory("b", 0o755).unwrap();
            w.file("a/c", 0o644, b"x").unwrap();
        });
        let mut inos: Vec<_> = parse(&bytes)[..3].iter().map(|e| e.ino).collect();
        inos.dedup();
        assert_eq!(inos.len(), 3);
        assert!(!inos.contains(&0));
    }

    #[test]
    fn every_header_and_data_start_is_four_byte_aligned_for_all_name_and_data_lengths() {
        for name_len in 1..=8 {
            for data_len in 0..=8 {
                let name = "n".repeat(name_len);
                let data = vec![0xa5; data_len];
                let bytes = archive(|w| {
                    w.file(&name, 0o644, &data).unwrap();
                    w.file("next", 0o644, b"z").unwrap();
                });
                assert_eq!(bytes.len() % 4, 0);
                // parse() asserts the alignment of every entry.
                let e = parse(&bytes);
                assert_eq!(e[0].data, data);
                assert_eq!(e[1].data, b"z");
            }
        }
    }

    #[test]
    fn archive_ends_with_the_trailer() {
        let bytes = archive(|_| {});
        let e = parse(&bytes);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].name, TRAILER);
        assert_eq!((e[0].mode, e[0].nlink, e[0].data.len()), (0, 1, 0));
    }

    #[test]
    fn absolute_empty_dotted_and_trailer_names_are_refused() {
        let mut w = Writer::new(Vec::new());
        for bad in ["", "/init", "a//b", "a/../b", "./a", "a/", TRAILER, "a\0b"] {
            assert!(
                matches!(w.file(bad, 0o644, b""), Err(CpioError::InvalidPath(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn permissions_with_file_type_bits_are_refused() {
        let mut w = Writer::new(Vec::new());
        assert!(matches!(
            w.file("a", S_IFREG | 0o644, b""),
            Err(CpioError::InvalidPermissions { .. })
        ));
    }
}

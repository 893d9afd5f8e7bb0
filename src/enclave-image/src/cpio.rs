//! Deterministic newc ("070701") cpio archives, gzip'd, as the Linux kernel
//! unpacks them into its initramfs.
//!
//! The bytes depend only on the paths, contents, symlink targets, the
//! executable bit of files and one fixed mtime: the root `.` comes first
//! (0755, so the kernel gives `/` that mode), then the entries sorted bytewise
//! by path, inode numbers count up from 1 in that order, every owner is 0:0,
//! directories are 0755, files 0755 when any execute bit was set and 0644
//! otherwise, symlinks 0777, and every mtime is the one given (0 or
//! `SOURCE_DATE_EPOCH`). Hard links (a regular file with more than one link)
//! and device nodes, FIFOs and sockets found on disk are refused; device
//! nodes the image needs (`/dev/console`) are declared explicitly with
//! [`Entry::CharDevice`], so building needs no root.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};

/// Most entries one archive may hold.
pub const MAX_ENTRIES: usize = 200_000;
/// Most bytes of file content one archive may hold (4 GiB: the newc size
/// field is 32 bits).
pub const MAX_TOTAL_BYTES: u64 = u32::MAX as u64;
/// Longest path accepted.
pub const MAX_PATH_BYTES: usize = 4096;

/// One archive entry. Paths are relative (`usr/bin/node`), `/`-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir {
        path: String,
    },
    /// Content is read from `source` when the archive is written.
    File {
        path: String,
        source: PathBuf,
        executable: bool,
    },
    Symlink {
        path: String,
        target: String,
    },
    CharDevice {
        path: String,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

impl Entry {
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path }
            | Entry::File { path, .. }
            | Entry::Symlink { path, .. }
            | Entry::CharDevice { path, .. } => path,
        }
    }
}

/// Why an archive cannot be built or read.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}: hard links are not supported (the file has several links); copy it instead")]
    HardLink(PathBuf),
    #[error("{0}: only directories, regular files and symlinks can be archived from disk; declare device nodes explicitly")]
    SpecialFile(PathBuf),
    #[error("{0:?}: path is not valid UTF-8, absolute, or has `.`/`..` components")]
    BadPath(String),
    #[error("{0:?} appears twice in the archive")]
    Duplicate(String),
    #[error("more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("more than {MAX_TOTAL_BYTES} bytes of content")]
    TooLarge,
    #[error("{0}: changed size while it was archived")]
    Changed(PathBuf),
    #[error("mtime {0} does not fit the 32-bit newc field")]
    BadMtime(u64),
    #[error("not a newc cpio archive: {0}")]
    Malformed(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CpioError + '_ {
    move |source| CpioError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Every directory, regular file and symlink below `root` (not `root` itself),
/// as entries with paths relative to it.
pub fn entries_from_dir(root: &Path) -> Result<Vec<Entry>, CpioError> {
    let mut out = Vec::new();
    let mut total = 0u64;
    walk(root, "", &mut out, &mut total)?;
    Ok(out)
}

fn walk(root: &Path, rel: &str, out: &mut Vec<Entry>, total: &mut u64) -> Result<(), CpioError> {
    let dir = root.join(rel);
    for dirent in fs::read_dir(&dir).map_err(io_err(&dir))? {
        let dirent = dirent.map_err(io_err(&dir))?;
        let name = dirent.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| CpioError::BadPath(name.to_string_lossy().into_owned()))?;
        let path = if rel.is_empty() {
            name.to_owned()
        } else {
            format!("{rel}/{name}")
        };
        let full = root.join(&path);
        let meta = fs::symlink_metadata(&full).map_err(io_err(&full))?;
        if out.len() >= MAX_ENTRIES {
            return Err(CpioError::TooManyEntries);
        }
        let file_type = meta.file_type();
        if file_type.is_dir() {
            out.push(Entry::Dir { path: path.clone() });
            walk(root, &path, out, total)?;
        } else if file_type.is_file() {
            if meta.nlink() > 1 {
                return Err(CpioError::HardLink(full));
            }
            *total = total.saturating_add(meta.len());
            if *total > MAX_TOTAL_BYTES {
                return Err(CpioError::TooLarge);
            }
            out.push(Entry::File {
                path,
                source: full,
                executable: meta.permissions().mode() & 0o111 != 0,
            });
        } else if file_type.is_symlink() {
            let target = fs::read_link(&full).map_err(io_err(&full))?;
            let target = target
                .to_str()
                .ok_or_else(|| CpioError::BadPath(target.to_string_lossy().into_owned()))?
                .to_owned();
            out.push(Entry::Symlink { path, target });
        } else {
            return Err(CpioError::SpecialFile(full));
        }
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), CpioError> {
    let ok = !path.is_empty()
        && path.len() <= MAX_PATH_BYTES
        && !path.starts_with('/')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(CpioError::BadPath(path.to_owned()))
    }
}

/// Writes `entries` as an uncompressed newc archive (see the module docs for
/// the normalization). Returns the number of bytes written.
pub fn write_newc<W: Write>(mut entries: Vec<Entry>, mtime: u64, out: W) -> Result<u64, CpioError> {
    let mtime = u32::try_from(mtime).map_err(|_| CpioError::BadMtime(mtime))?;
    if entries.len() > MAX_ENTRIES {
        return Err(CpioError::TooManyEntries);
    }
    entries.sort_by(|a, b| a.path().as_bytes().cmp(b.path().as_bytes()));
    for pair in entries.windows(2) {
        if pair[0].path() == pair[1].path() {
            return Err(CpioError::Duplicate(pair[0].path().to_owned()));
        }
    }
    let mut out = Counting {
        inner: out,
        written: 0,
    };
    let sink = PathBuf::from("<archive>");
    // The root itself first: the kernel applies its mode to `/`, which would
    // otherwise keep rootfs's default (1777 on tmpfs: writable by every task uid).
    Header {
        ino: 1,
        mode: 0o040_755,
        nlink: 2,
        mtime,
        size: 0,
        rdev: (0, 0),
        name: b".",
    }
    .write(&mut out)
    .map_err(io_err(&sink))?;
    let mut total = 0u64;
    for (index, entry) in entries.iter().enumerate() {
        check_path(entry.path())?;
        let ino = u32::try_from(index + 2).map_err(|_| CpioError::TooManyEntries)?;
        let header = |mode: u32, nlink: u32, size: u32, rdev: (u32, u32)| Header {
            ino,
            mode,
            nlink,
            mtime,
            size,
            rdev,
            name: entry.path().as_bytes(),
        };
        match entry {
            Entry::Dir { .. } => header(0o040_755, 2, 0, (0, 0))
                .write(&mut out)
                .map_err(io_err(&sink))?,
            Entry::Symlink { target, .. } => {
                let size = u32::try_from(target.len()).map_err(|_| CpioError::TooLarge)?;
                header(0o120_777, 1, size, (0, 0))
                    .write(&mut out)
                    .map_err(io_err(&sink))?;
                write_padded(&mut out, target.as_bytes()).map_err(io_err(&sink))?;
            }
            Entry::CharDevice {
                mode, major, minor, ..
            } => {
                header(0o020_000 | (mode & 0o777), 1, 0, (*major, *minor))
                    .write(&mut out)
                    .map_err(io_err(&sink))?;
            }
            Entry::File {
                source, executable, ..
            } => {
                let mut file = fs::File::open(source).map_err(io_err(source))?;
                let meta = file.metadata().map_err(io_err(source))?;
                if !meta.is_file() {
                    return Err(CpioError::SpecialFile(source.clone()));
                }
                total = total.saturating_add(meta.len());
                if total > MAX_TOTAL_BYTES {
                    return Err(CpioError::TooLarge);
                }
                let size = u32::try_from(meta.len()).map_err(|_| CpioError::TooLarge)?;
                let mode = if *executable { 0o100_755 } else { 0o100_644 };
                header(mode, 1, size, (0, 0))
                    .write(&mut out)
                    .map_err(io_err(&sink))?;
                let copied = io::copy(&mut (&mut file).take(u64::from(size)), &mut out)
                    .map_err(io_err(source))?;
                if copied != u64::from(size) {
                    return Err(CpioError::Changed(source.clone()));
                }
                out.write_all(&[0u8; 3][..pad4(u64::from(size))])
                    .map_err(io_err(&sink))?;
            }
        }
    }
    Header {
        ino: 0,
        mode: 0,
        nlink: 1,
        mtime: 0,
        size: 0,
        rdev: (0, 0),
        name: b"TRAILER!!!",
    }
    .write(&mut out)
    .map_err(io_err(&sink))?;
    Ok(out.written)
}

/// [`write_newc`] through gzip with a fixed header (no name, mtime 0, OS
/// "Unix") and the default level: the output depends on the archive bytes and
/// the pinned `flate2`/`miniz_oxide` versions only.
pub fn write_newc_gz<W: Write>(entries: Vec<Entry>, mtime: u64, out: W) -> Result<W, CpioError> {
    let mut gz = GzBuilder::new()
        .mtime(0)
        .operating_system(3)
        .write(out, Compression::default());
    write_newc(entries, mtime, &mut gz)?;
    gz.finish().map_err(io_err(Path::new("<gzip>")))
}

struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Header<'a> {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
    name: &'a [u8],
}

impl Header<'_> {
    fn write<W: Write>(&self, out: &mut W) -> io::Result<()> {
        let namesize = self.name.len() + 1;
        let fields = [
            self.ino,
            self.mode,
            0,
            0,
            self.nlink,
            self.mtime,
            self.size,
            0,
            0,
            self.rdev.0,
            self.rdev.1,
            namesize as u32,
            0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        out.write_all(header.as_bytes())?;
        out.write_all(self.name)?;
        out.write_all(&[0u8])?;
        out.write_all(&[0u8; 3][..pad4(110 + namesize as u64)])
    }
}

fn pad4(len: u64) -> usize {
    ((4 - len % 4) % 4) as usize
}

fn write_padded<W: Write>(out: &mut W, bytes: &[u8]) -> io::Result<()> {
    out.write_all(bytes)?;
    out.write_all(&[0u8; 3][..pad4(bytes.len() as u64)])
}

/// One entry of an archive as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEntry {
    pub path: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub rdev: (u32, u32),
    /// File content or symlink target.
    pub data: Vec<u8>,
}

impl ListedEntry {
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170_000 == 0o040_000
    }
    pub fn is_file(&self) -> bool {
        self.mode & 0o170_000 == 0o100_000
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & 0o170_000 == 0o120_000
    }
    pub fn is_char_device(&self) -> bool {
        self.mode & 0o170_000 == 0o020_000
    }
}

/// Reads a newc archive (gzip'd or not) up to its trailer. Content is held in
/// memory: meant for tests and inspection of images, whose size is bounded by
/// the enclave's memory anyway.
pub fn read_archive(bytes: &[u8]) -> Result<Vec<ListedEntry>, CpioError> {
    let mut plain = Vec::new();
    let data: &[u8] = if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(bytes)
            .take(MAX_TOTAL_BYTES)
            .read_to_end(&mut plain)
            .map_err(io_err(Path::new("<gzip>")))?;
        &plain
    } else {
        bytes
    };
    let bad = |m: &str| CpioError::Malformed(m.to_owned());
    let mut pos = 0usize;
    let mut out = Vec::new();
    loop {
        let header = data
            .get(pos..pos + 110)
            .ok_or_else(|| bad("truncated header"))?;
        if &header[..6] != b"070701" {
            return Err(bad("bad magic"));
        }
        let field = |i: usize| -> Result<u32, CpioError> {
            let text = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i])
                .map_err(|_| bad("non-hex field"))?;
            u32::from_str_radix(text, 16).map_err(|_| bad("non-hex field"))
        };
        let namesize = field(11)? as usize;
        let size = field(6)? as usize;
        let name_start = pos + 110;
        let name = data
            .get(name_start..name_start + namesize)
            .ok_or_else(|| bad("truncated name"))?;
        let name = name
            .strip_suffix(&[0])
            .ok_or_else(|| bad("name not NUL-terminated"))?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| bad("name not UTF-8"))?;
        let data_start = name_start + namesize + pad4((110 + namesize) as u64);
        let content = data
            .get(data_start..data_start + size)
            .ok_or_else(|| bad("truncated data"))?
            .to_vec();
        pos = data_start + size + pad4(size as u64);
        if name == "TRAILER!!!" {
            return Ok(out);
        }
        if out.len() >= MAX_ENTRIES {
            return Err(CpioError::TooManyEntries);
        }
        out.push(ListedEntry {
            path: name,
            mode: field(1)?,
            uid: field(2)?,
            gid: field(3)?,
            nlink: field(4)?,
            mtime: field(5)?,
            rdev: (field(9)?, field(10)?),
            data: content,
        });
    }
}

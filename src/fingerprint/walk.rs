//! The walk of a build context: every entry some client sends, with what BuildKit keeps of it.
//!
//! BuildKit's client sends, for each entry, its path, type, permission bits, link target,
//! device numbers, extended attributes and (for a second name of a file it already sent) the
//! hard link, and the bytes of regular files; it resets owners to 0 and BuildKit's cache keys
//! leave modification times out. The walk records the same, in the client's order (names
//! sorted as bytes, a folder before its entries), so a hard link names the same first path.
//! Contents are read and hashed on threads once the walk has found every file.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::ignore::{Ignore, Parent};
use super::Unknowable;

/// The most context entries walked before giving up: a context that large is very likely a
/// `target/` folder that the ignore file misses, and hashing it would cost more than it saves.
const MAX_ENTRIES: usize = 200_000;
/// The most bytes hashed before giving up, for the same reason.
const MAX_BYTES: u64 = 4 << 30;
/// Below this many bytes of files, threads cost more than they save (a dry run of a workspace
/// of small packages hashes each context on its own).
const THREADS_FROM: u64 = 8 << 20;
/// The read buffer of each hashing thread.
const BUFFER: usize = 256 << 10;

/// The digest of every entry of `context` that some client sends under `ignore`.
pub(super) fn tree(context: &Path, ignore: &Ignore) -> Result<[u8; 32], Unknowable> {
    walked(context, ignore).map(|(digest, _)| digest)
}

/// The digest, and how many entries the walk looked at.
pub(super) fn walked(context: &Path, ignore: &Ignore) -> Result<([u8; 32], usize), Unknowable> {
    let mut walk = Walk {
        ignore,
        entries: 0,
        bytes: 0,
        records: Vec::new(),
        pending: Vec::new(),
        jobs: Vec::new(),
        inodes: HashMap::new(),
    };
    walk.dir(context, &[], &ignore.root())?;
    let mut contents = hash_files(&walk.jobs, walk.bytes)?.into_iter();
    let mut all = Vec::new();
    for record in &walk.records {
        all.extend_from_slice(&record.head);
        if record.file {
            let content = contents.next().unwrap_or_default();
            field(&mut all, &content);
        }
    }
    Ok((*blake3::hash(&all).as_bytes(), walk.entries))
}

/// Appends `bytes`, length first, so that no two sequences of fields read alike.
pub(super) fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// One entry as hashed: its fields, then (for a regular file) what a hashing thread read.
struct Record {
    head: Vec<u8>,
    file: bool,
}

/// A regular file to read.
pub(super) struct Job {
    pub path: PathBuf,
    pub size: u64,
}

struct Walk<'a> {
    ignore: &'a Ignore,
    entries: usize,
    /// Bytes of the regular files found so far, by their sizes.
    bytes: u64,
    records: Vec<Record>,
    /// The folders being walked that no client sends yet: each is sent, before it, when an
    /// entry in it is (the current client sends the folders above what it sends).
    pending: Vec<Option<Record>>,
    jobs: Vec<Job>,
    /// The first path sent of each inode with more than one name: the client sends later names
    /// as hard links to it.
    inodes: HashMap<u64, Vec<u8>>,
}

impl Walk<'_> {
    fn push(&mut self, record: Record) {
        for folder in &mut self.pending {
            if let Some(folder) = folder.take() {
                self.records.push(folder);
            }
        }
        self.records.push(record);
    }

    fn dir(&mut self, dir: &Path, relative: &[u8], parent: &Parent) -> Result<(), Unknowable> {
        let mut entries: Vec<(Vec<u8>, fs::DirEntry)> = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| cannot(dir, e))? {
            let entry = entry.map_err(|e| cannot(dir, e))?;
            entries.push((entry.file_name().as_bytes().to_vec(), entry));
        }
        // The client's order: names as bytes.
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut path = relative.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        let base = path.len();
        for (name, entry) in entries {
            path.truncate(base);
            path.extend_from_slice(&name);
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                return Err(too_large());
            }
            let full = entry.path();
            let file_type = entry.file_type().map_err(|e| cannot(&full, e))?;
            let is_dir = file_type.is_dir();
            let verdict = self.ignore.decide(parent, &path, is_dir);
            if !verdict.sent && verdict.walk.is_none() {
                continue;
            }
            let meta = entry.metadata().map_err(|e| cannot(&full, e))?;
            let kind = if is_dir {
                b'd'
            } else if file_type.is_file() {
                b'f'
            } else if file_type.is_symlink() {
                b'l'
            } else {
                b'o'
            };
            let mut head = vec![kind];
            field(&mut head, &path);
            field(&mut head, &meta.mode().to_le_bytes());
            if is_dir {
                let Some(walk) = verdict.walk else {
                    // A client sends only folders it walks.
                    continue;
                };
                field(&mut head, &xattrs(&full, None)?);
                let record = Record { head, file: false };
                if verdict.sent {
                    self.push(record);
                    self.pending.push(None);
                } else {
                    self.pending.push(Some(record));
                }
                let walked = self.dir(&full, &path, &walk);
                self.pending.pop();
                match walked {
                    // A folder no client sends, walked only in case an exception lets
                    // something in it back in: the clients skip one they may not read.
                    Err(_) if !verdict.sent && !readable(&full) => {}
                    other => other?,
                }
                continue;
            }
            // A second name of an inode is sent as a hard link to the first one sent.
            let mut link = Vec::new();
            if meta.nlink() > 1 {
                match self.inodes.get(&meta.ino()) {
                    Some(first) => link.clone_from(first),
                    None => {
                        self.inodes.insert(meta.ino(), path.clone());
                    }
                }
            }
            field(&mut head, &link);
            match kind {
                b'f' => {
                    self.bytes += meta.len();
                    if self.bytes > MAX_BYTES {
                        return Err(too_large());
                    }
                    self.jobs.push(Job {
                        path: full,
                        size: meta.len(),
                    });
                    self.push(Record { head, file: true });
                    continue;
                }
                b'l' => {
                    let target = fs::read_link(&full).map_err(|e| cannot(&full, e))?;
                    field(&mut head, target.as_os_str().as_bytes());
                }
                _ => {
                    // Fifos, sockets and devices: the device numbers are sent.
                    let device = file_type.is_block_device() || file_type.is_char_device();
                    field(
                        &mut head,
                        &(if device { meta.rdev() } else { 0 }).to_le_bytes(),
                    );
                }
            }
            field(&mut head, &xattrs(&full, None)?);
            self.push(Record { head, file: false });
        }
        Ok(())
    }
}

/// Whether the folder can be listed (a permission error is what the clients skip).
fn readable(dir: &Path) -> bool {
    !matches!(fs::read_dir(dir), Err(e) if e.kind() == io::ErrorKind::PermissionDenied)
}

fn cannot(path: &Path, e: io::Error) -> Unknowable {
    Unknowable(format!("cannot read `{}`: {e}", path.display()))
}

fn too_large() -> Unknowable {
    Unknowable(format!(
        "the build context has more than {MAX_ENTRIES} entries or {} GiB that the ignore file lets through",
        MAX_BYTES >> 30
    ))
}

/// A file's content digest and extended attributes, or why they cannot be read.
type Content = Result<Vec<u8>, Unknowable>;

/// Each file's content digest and extended attributes, in the order of `jobs`: on threads
/// when there is enough to read, the largest files first so that the threads end together.
pub(super) fn hash_files(jobs: &[Job], bytes: u64) -> Result<Vec<Vec<u8>>, Unknowable> {
    let threads = if bytes < THREADS_FROM {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8)
            .min(jobs.len())
    };
    if threads <= 1 {
        let mut buffer = vec![0; BUFFER];
        return jobs.iter().map(|job| read(job, &mut buffer)).collect();
    }
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_unstable_by(|&a, &b| jobs[b].size.cmp(&jobs[a].size));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let done: Vec<Vec<(usize, Content)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut buffer = vec![0; BUFFER];
                    let mut done = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        let result = read(&jobs[i], &mut buffer);
                        if result.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        done.push((i, result));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let mut contents = vec![None; jobs.len()];
    for (i, result) in done.into_iter().flatten() {
        contents[i] = Some(result?);
    }
    contents
        .into_iter()
        .zip(jobs)
        .map(|(content, job)| {
            content.ok_or_else(|| cannot(&job.path, io::Error::other("not read")))
        })
        .collect()
}

/// A file's content digest, then its extended attributes (read from the open file, which
/// saves looking its path up again).
fn read(job: &Job, buffer: &mut [u8]) -> Result<Vec<u8>, Unknowable> {
    let cannot = |e| cannot(&job.path, e);
    let mut file = fs::File::open(&job.path).map_err(cannot)?;
    let mut hash = blake3::Hasher::new();
    loop {
        let n = match file.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(cannot(e)),
        };
        hash.update(&buffer[..n]);
    }
    let mut out = hash.finalize().as_bytes().to_vec();
    out.extend_from_slice(&xattrs(&job.path, Some(&file))?);
    Ok(out)
}

/// The entry's extended attributes, names sorted, as the client sends them (an entry's
/// capabilities or ACLs reach the image through `COPY`). A file system without them has none.
#[cfg(target_os = "linux")]
fn xattrs(path: &Path, file: Option<&fs::File>) -> Result<Vec<u8>, Unknowable> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    let cannot = |e| {
        Unknowable(format!(
            "cannot read the extended attributes of `{}`: {e}",
            path.display()
        ))
    };
    let c_path = match file {
        Some(_) => None,
        None => Some(CString::new(path.as_os_str().as_bytes()).map_err(|e| cannot(e.into()))?),
    };
    let fd = file.map(|f| f.as_raw_fd());
    // SAFETY (both calls): the buffer is as long as said, the strings NUL-terminated.
    let names = grow(|buf| unsafe {
        match (&c_path, fd) {
            (Some(p), _) => libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()),
            (None, Some(fd)) => libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()),
            (None, None) => 0,
        }
    });
    let names = match names {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
        Err(e) => return Err(cannot(e)),
    };
    let mut out = Vec::new();
    let mut keys: Vec<&[u8]> = names.split(|&b| b == 0).filter(|k| !k.is_empty()).collect();
    keys.sort_unstable();
    for key in keys {
        let c_key = CString::new(key).map_err(|e| cannot(e.into()))?;
        let value = grow(|buf| unsafe {
            match (&c_path, fd) {
                (Some(p), _) => libc::lgetxattr(
                    p.as_ptr(),
                    c_key.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                ),
                (None, Some(fd)) => {
                    libc::fgetxattr(fd, c_key.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                }
                (None, None) => 0,
            }
        })
        .map_err(cannot)?;
        field(&mut out, key);
        field(&mut out, &value);
    }
    Ok(out)
}

/// What `call` writes into a buffer it is given, the buffer growing while the kernel says it is
/// too small (`ERANGE`).
#[cfg(target_os = "linux")]
fn grow(mut call: impl FnMut(&mut [u8]) -> isize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = call(&mut buf);
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
        let size = buf.len() * 4;
        buf.resize(size, 0);
    }
}

/// Elsewhere the attributes are not read, so there is no fingerprint.
#[cfg(not(target_os = "linux"))]
fn xattrs(path: &Path, _file: Option<&fs::File>) -> Result<Vec<u8>, Unknowable> {
    Err(Unknowable(format!(
        "the extended attributes of `{}` are read on Linux only",
        path.display()
    )))
}

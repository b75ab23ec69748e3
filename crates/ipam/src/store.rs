//! The on-disk store, byte-compatible with the reference `host-local` so the
//! two binaries can be swapped under running pods.
//!
//! In `dataDir/<network name>/`:
//! * `<ip>`: one file per allocated address, named by the address's
//!   canonical text (Go's `net.IP.String()`: dotted IPv4, RFC 5952 IPv6),
//!   holding `<containerID>\r\n<ifname>` with no trailing newline, mode 0644.
//!   Files of older reference versions hold the container ID only (legacy).
//! * `last_reserved_ip.<N>`: the last address reserved in range set `N`, as
//!   text without a newline, mode 0644.
//! * `lock`: empty; every operation holds `flock(LOCK_EX)` on it (readers
//!   `LOCK_SH`), created `O_RDONLY|O_CREAT` mode 0750 as the reference's
//!   go-filemutex does, so the two binaries exclude each other.
//!
//! Our additions, which the reference ignores (their names are not
//! addresses) and cleans up consistently (their content is the owner's):
//! * `.owner:<containerID>:<ifname>:<ip>`: a second hard link to an IP file
//!   we reserved, so the owner of every address can be known from one
//!   directory listing, without opening the files. A link counts only while
//!   the directory entry of `<ip>` has the same inode number, so a stale link
//!   (its address released behind our back) is recognised and ignored; IP
//!   files without a valid link (the reference's, or legacy) are read.
//! * `.tmp:<pid>:<n>`: a staging file, used only when an owner cannot be
//!   encoded in a file name.
//!
//! Reservation is atomic: the content is written in full to the staging file
//! (the owner link), then `link(2)`ed to the address's name, which fails
//! with `EEXIST` when the address is taken. A process killed at any point
//! leaves either no `<ip>` file or a complete one, never a duplicate; what
//! it leaves behind (a staging file, an owner link without its address) is
//! ignored and removed by GC.

use crate::range::canonical;
use kindnet_cni_spec::CniError;
use std::cell::Cell;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The lock file every operation holds `flock` on.
pub const LOCK_FILE: &str = "lock";
/// `last_reserved_ip.<N>`: the last address reserved in range set `N`.
pub const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// Between container ID and interface name in an IP file.
pub const LINE_BREAK: &str = "\r\n";
/// Names of our owner links (`.owner:<id>:<ifname>:<ip>`).
pub const OWNER_PREFIX: &str = ".owner:";
/// Names of our staging files (`.tmp:<pid>:<n>`).
pub const TEMP_PREFIX: &str = ".tmp:";

thread_local! {
    /// IP files whose content was read on this thread (for tests that check
    /// the hot path reads none).
    static CONTENT_READS: Cell<u64> = const { Cell::new(0) };
}

/// How many IP files' contents this thread has read so far.
pub fn content_reads() -> u64 {
    CONTENT_READS.with(Cell::get)
}

/// Who holds an address, from an IP file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// `<containerID>\r\n<ifname>`.
    Attachment {
        /// The container ID.
        container_id: String,
        /// The interface name.
        ifname: String,
    },
    /// The container ID alone, as older reference versions wrote it.
    Legacy {
        /// The container ID.
        container_id: String,
    },
    /// Empty, unreadable or garbled: nobody.
    Unknown,
}

impl Owner {
    /// Parses content the way the reference compares it: surrounding
    /// whitespace is ignored.
    pub fn parse(bytes: &[u8]) -> Owner {
        let bad = |s: &str| s.chars().any(char::is_control);
        let Ok(s) = std::str::from_utf8(bytes) else {
            return Owner::Unknown;
        };
        let t = s.trim();
        match t.split_once(LINE_BREAK) {
            _ if t.is_empty() => Owner::Unknown,
            Some((id, ifname)) => {
                let (id, ifname) = (id.trim(), ifname.trim());
                if id.is_empty() || bad(id) || bad(ifname) {
                    Owner::Unknown
                } else {
                    Owner::Attachment {
                        container_id: id.into(),
                        ifname: ifname.into(),
                    }
                }
            }
            None if bad(t) => Owner::Unknown,
            None => Owner::Legacy {
                container_id: t.into(),
            },
        }
    }

    /// Exactly this attachment (not a legacy file of the same container).
    pub fn is(&self, id: &str, ifname: &str) -> bool {
        matches!(self, Owner::Attachment { container_id, ifname: i } if container_id == id && i == ifname)
    }

    /// The owner's container ID; empty when unknown.
    pub fn container_id(&self) -> &str {
        match self {
            Owner::Attachment { container_id, .. } | Owner::Legacy { container_id } => container_id,
            Owner::Unknown => "",
        }
    }

    /// The owner's interface name; empty for a legacy or unknown owner.
    pub fn ifname(&self) -> &str {
        match self {
            Owner::Attachment { ifname, .. } => ifname,
            _ => "",
        }
    }
}

/// The file content for an owner: `<id>\r\n<ifname>`.
pub fn content(id: &str, ifname: &str) -> String {
    format!("{}{LINE_BREAK}{ifname}", id.trim())
}

/// The owner link's name, or `None` when the owner cannot be encoded in a
/// file name (a `:`, `/`, control character, or too long).
pub fn owner_link_name(id: &str, ifname: &str, ip: IpAddr) -> Option<String> {
    let ok = |s: &str| !s.is_empty() && !s.contains([':', '/']) && !s.chars().any(char::is_control);
    let name = format!("{OWNER_PREFIX}{id}:{ifname}:{ip}");
    (ok(id) && ok(ifname) && name.len() <= 255).then_some(name)
}

fn parse_owner_link(name: &str) -> Option<(&str, &str, IpAddr)> {
    let rest = name.strip_prefix(OWNER_PREFIX)?;
    let mut it = rest.splitn(3, ':');
    let (id, ifname, ip) = (it.next()?, it.next()?, it.next()?);
    let ip = canonical(ip.parse().ok()?);
    Some((id, ifname, ip))
}

/// Where a name lies in [`Scan`]'s name buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

/// An entry named by an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpFile {
    /// The address (canonical).
    pub ip: IpAddr,
    /// The file's inode number (an owner link counts only with the same one).
    pub ino: u64,
    name: Span,
}

/// An owner link: `.owner:<id>:<ifname>:<ip>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerLink {
    /// The address the link names.
    pub ip: IpAddr,
    /// The link's inode number.
    pub ino: u64,
    name: Span,
}

/// One directory listing, classified by name only (no file is opened).
/// Names live in one buffer, so a listing of hundreds of entries costs a
/// handful of allocations.
#[derive(Debug, Default)]
pub struct Scan {
    names: String,
    /// The address files.
    pub ips: Vec<IpFile>,
    /// Our owner links.
    pub links: Vec<OwnerLink>,
    /// Staging files and unparsable `.owner:` names.
    temps: Vec<Span>,
}

impl Scan {
    fn push_name(&mut self, name: &str) -> Span {
        let span = Span {
            start: self.names.len() as u32,
            len: name.len() as u32,
        };
        self.names.push_str(name);
        span
    }

    fn text(&self, s: Span) -> &str {
        &self.names[s.start as usize..(s.start + s.len) as usize]
    }

    /// The directory entry name of `f`.
    pub fn ip_name(&self, f: &IpFile) -> &str {
        self.text(f.name)
    }

    /// The directory entry name of `l`.
    pub fn link_name(&self, l: &OwnerLink) -> &str {
        self.text(l.name)
    }

    /// (container ID, ifname) as the link's name records them.
    pub fn link_owner(&self, l: &OwnerLink) -> (&str, &str) {
        let rest = &self.link_name(l)[OWNER_PREFIX.len()..];
        let mut it = rest.splitn(3, ':');
        (it.next().unwrap_or(""), it.next().unwrap_or(""))
    }

    /// The links naming attachment (`id`, `ifname`): one prefix compare per
    /// link.
    pub fn links_of<'s>(&'s self, id: &str, ifname: &str) -> impl Iterator<Item = &'s OwnerLink> {
        let prefix = format!("{OWNER_PREFIX}{id}:{ifname}:");
        self.links
            .iter()
            .filter(move |l| self.link_name(l).starts_with(&prefix))
    }

    /// The names of staging files and unparsable `.owner:` entries (GC removes them).
    pub fn temp_names(&self) -> impl Iterator<Item = &str> {
        self.temps.iter().map(|s| self.text(*s))
    }

    /// Inode numbers of the IP files that have a valid owner link (same
    /// address, same inode), sorted.
    pub fn indexed(&self) -> Vec<u64> {
        let mut linked: Vec<(u64, IpAddr)> = self.links.iter().map(|l| (l.ino, l.ip)).collect();
        linked.sort_unstable();
        let mut out: Vec<u64> = self
            .ips
            .iter()
            .filter(|f| linked.binary_search(&(f.ino, f.ip)).is_ok())
            .map(|f| f.ino)
            .collect();
        out.sort_unstable();
        out
    }

    fn classify(&mut self, name: &str, ino: u64) {
        if name == LOCK_FILE || name.starts_with(LAST_RESERVED_PREFIX) {
            return;
        }
        if name.starts_with(OWNER_PREFIX) {
            match parse_owner_link(name) {
                Some((_, _, ip)) => {
                    let name = self.push_name(name);
                    self.links.push(OwnerLink { ip, ino, name });
                }
                None => {
                    let s = self.push_name(name);
                    self.temps.push(s);
                }
            }
        } else if name.starts_with(TEMP_PREFIX) {
            let s = self.push_name(name);
            self.temps.push(s);
        } else if let Ok(ip) = name.parse::<IpAddr>() {
            let name = self.push_name(name);
            self.ips.push(IpFile {
                ip: canonical(ip),
                ino,
                name,
            });
        }
    }
}

/// How a store is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// `LOCK_SH`: readers (CHECK, STATUS, listings).
    Shared,
    /// `LOCK_EX`: every change.
    Exclusive,
}

/// An open store: the network's directory with its lock held until drop.
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

/// `data_dir/network`, refusing network names that are not one path
/// component.
pub fn network_dir(data_dir: &Path, network: &str) -> Result<PathBuf, CniError> {
    if network.is_empty() || network == "." || network == ".." || network.contains(['/', '\0']) {
        return Err(CniError::invalid_config(format!(
            "invalid network name {network:?}: it must be usable as a directory name"
        )));
    }
    Ok(data_dir.join(network))
}

fn io_err(what: &str, path: &Path, e: io::Error) -> CniError {
    CniError::io(format!("{what} {}: {e}", path.display()))
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Creates the directory (0755, like the reference) and the lock file if
    /// needed, then takes the lock.
    pub fn open(data_dir: &Path, network: &str, mode: LockMode) -> Result<Store, CniError> {
        let dir = network_dir(data_dir, network)?;
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| io_err("cannot create IPAM data directory", &dir, e))?;
        let lock = lock(&dir, mode)?;
        Ok(Store { dir, _lock: lock })
    }

    /// Like [`Store::open`] but creates no directory: `None` when the
    /// network has no store yet.
    pub fn open_existing(
        data_dir: &Path,
        network: &str,
        mode: LockMode,
    ) -> Result<Option<Store>, CniError> {
        let dir = network_dir(data_dir, network)?;
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(CniError::io(format!(
                    "IPAM data directory {} is not a directory",
                    dir.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot access IPAM data directory", &dir, e)),
        }
        let lock = lock(&dir, mode)?;
        Ok(Some(Store { dir, _lock: lock }))
    }

    /// The network's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lists the directory once (readdir, no allocation per entry);
    /// classifies entries by name.
    pub fn scan(&self) -> Result<Scan, CniError> {
        let fail = |e: io::Error| io_err("cannot list", &self.dir, e);
        let mut scan = Scan {
            names: String::with_capacity(8192),
            ..Scan::default()
        };
        for ent in std::fs::read_dir(&self.dir).map_err(fail)? {
            let ent = ent.map_err(fail)?;
            // d_ino from the directory entry itself: no stat per file
            let ino = std::os::unix::fs::DirEntryExt::ino(&ent);
            if let Some(name) = ent.file_name().to_str() {
                scan.classify(name, ino);
            }
        }
        Ok(scan)
    }

    /// The owner recorded in IP file `name`; `None` if it vanished or cannot
    /// be read.
    pub fn read_owner(&self, name: &str) -> Option<Owner> {
        CONTENT_READS.with(|c| c.set(c.get() + 1));
        let mut buf = Vec::with_capacity(128);
        File::open(self.dir.join(name))
            .ok()?
            .take(64 * 1024)
            .read_to_end(&mut buf)
            .ok()?;
        Some(Owner::parse(&buf))
    }

    /// Reserves `ip` for (`id`, `ifname`) atomically; `Ok(false)` when the
    /// address is already taken.
    pub fn reserve(&self, ip: IpAddr, id: &str, ifname: &str) -> Result<bool, CniError> {
        let id = id.trim();
        let link = owner_link_name(id, ifname, ip);
        let staging = match &link {
            Some(l) => self.dir.join(l),
            None => self.dir.join(format!(
                "{TEMP_PREFIX}{}:{}",
                std::process::id(),
                TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
            )),
        };
        create_new(&staging, content(id, ifname).as_bytes())
            .map_err(|e| io_err("cannot write reservation", &staging, e))?;
        let target = self.dir.join(ip.to_string());
        match fs::hard_link(&staging, &target) {
            Ok(()) => {
                if link.is_none() {
                    let _ = fs::remove_file(&staging);
                }
                Ok(true)
            }
            Err(e) => {
                let _ = fs::remove_file(&staging);
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Ok(false)
                } else {
                    Err(io_err("cannot reserve", &target, e))
                }
            }
        }
    }

    /// Removes one entry; `Ok(false)` if it was already gone.
    pub fn remove(&self, name: &str) -> Result<bool, CniError> {
        let path = self.dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("cannot remove", &path, e)),
        }
    }

    /// Adds the owner link of an existing IP file (best effort).
    pub fn add_link(&self, ip_name: &str, link_name: &str) -> bool {
        fs::hard_link(self.dir.join(ip_name), self.dir.join(link_name)).is_ok()
    }

    /// `last_reserved_ip.<idx>`, if present and parsable.
    pub fn last_reserved(&self, idx: usize) -> Option<IpAddr> {
        let mut f = File::open(self.dir.join(format!("{LAST_RESERVED_PREFIX}{idx}"))).ok()?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        let s = std::str::from_utf8(&buf[..n]).ok()?;
        s.trim().parse::<IpAddr>().ok().map(canonical)
    }

    /// Writes `last_reserved_ip.<idx>`: the address's text, no newline.
    ///
    /// Overwritten in place and then cut to length rather than opened with
    /// `O_TRUNC`: on ext4 closing a file truncated to zero and rewritten
    /// forces its blocks out (`auto_da_alloc`), which costs milliseconds on
    /// every ADD. Readers hold the lock, so they never see the middle state;
    /// a crash in between can at worst leave a wrong hint, which only moves
    /// where the round robin resumes.
    pub fn set_last_reserved(&self, idx: usize, ip: IpAddr) -> Result<(), CniError> {
        let path = self.dir.join(format!("{LAST_RESERVED_PREFIX}{idx}"));
        let text = ip.to_string();
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .and_then(|f| {
                f.write_all_at(text.as_bytes(), 0)?;
                f.set_len(text.len() as u64)
            })
            .map_err(|e| io_err("cannot write", &path, e))
    }
}

/// Creates `path` exclusively with `content`. A leftover of an interrupted
/// earlier attempt is unlinked (never truncated: it may be a live IP file's
/// second name) and creation retried once.
fn create_new(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut retried = false;
    loop {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)
        {
            Ok(mut f) => {
                return f.write_all(content).inspect_err(|_| {
                    let _ = fs::remove_file(path);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !retried => {
                retried = true;
                match fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens (creating) `dir/lock` as go-filemutex does (mode 0750) and takes
/// the flock.
fn lock(dir: &Path, mode: LockMode) -> Result<File, CniError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_FILE);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o750)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| io_err("cannot open lock file", &path, e))?;
    match mode {
        LockMode::Shared => file.lock_shared(),
        LockMode::Exclusive => file.lock(),
    }
    .map_err(|e| io_err("cannot lock", &path, e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_parsing() {
        assert_eq!(
            Owner::parse(b"abc\r\neth0"),
            Owner::Attachment {
                container_id: "abc".into(),
                ifname: "eth0".into()
            }
        );
        assert_eq!(
            Owner::parse(b"  abc \r\neth0\n"),
            Owner::Attachment {
                container_id: "abc".into(),
                ifname: "eth0".into()
            }
        );
        assert_eq!(
            Owner::parse(b"abc"),
            Owner::Legacy {
                container_id: "abc".into()
            }
        );
        assert_eq!(
            Owner::parse(b"abc\n"),
            Owner::Legacy {
                container_id: "abc".into()
            }
        );
        assert_eq!(Owner::parse(b""), Owner::Unknown);
        assert_eq!(Owner::parse(b" \r\n "), Owner::Unknown);
        assert_eq!(Owner::parse(b"\xff\xfe"), Owner::Unknown);
        assert_eq!(Owner::parse(b"a\x00b"), Owner::Unknown);
        assert!(Owner::parse(b"abc\r\neth0").is("abc", "eth0"));
        assert!(!Owner::parse(b"abc").is("abc", "eth0"));
    }

    #[test]
    fn owner_link_names_round_trip() {
        let ip: IpAddr = "fd00::5".parse().unwrap();
        let n = owner_link_name("abc-1.x_y", "eth0", ip).unwrap();
        assert_eq!(n, ".owner:abc-1.x_y:eth0:fd00::5");
        assert_eq!(parse_owner_link(&n), Some(("abc-1.x_y", "eth0", ip)));
        assert_eq!(owner_link_name("a:b", "eth0", ip), None);
        assert_eq!(owner_link_name("a", "e/0", ip), None);
        assert_eq!(owner_link_name(&"x".repeat(250), "eth0", ip), None);
        assert_eq!(parse_owner_link(".owner:abc:eth0:nope"), None);
    }

    #[test]
    fn address_file_names_are_gos_canonical_text() {
        // Go's net.IP.String() for these addresses.
        for (input, go) in [
            ("10.1.2.3", "10.1.2.3"),
            ("::ffff:10.1.2.3", "10.1.2.3"),
            ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
            ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
            ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
            ("FD00::ABCD", "fd00::abcd"),
            ("::1.2.3.4", "::102:304"),
        ] {
            let ip = canonical(input.parse().unwrap());
            assert_eq!(ip.to_string(), go, "{input}");
        }
    }

    #[test]
    fn network_names_must_be_one_component() {
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert_eq!(
                network_dir(Path::new("/x"), bad).unwrap_err().code,
                7,
                "{bad:?}"
            );
        }
        assert_eq!(
            network_dir(Path::new("/x"), "kindnet").unwrap(),
            PathBuf::from("/x/kindnet")
        );
    }
}

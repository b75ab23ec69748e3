//! Network namespace handles and the two safe ways of running code in one.

// The nsfs ioctl NS_GET_NSTYPE (see Netns::open_pod).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

/// `NSFS_MAGIC` of linux/magic.h.
const NSFS_MAGIC: i64 = libc::NSFS_MAGIC;
/// `NS_GET_NSTYPE` of linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::Ioctl = 0xb703;

/// An open network namespace file (/var/run/netns/X, /proc/PID/ns/net, ...).
/// Holding the fd keeps the namespace alive.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    path: PathBuf,
}

fn setns(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(move_into_link_name_space(
        fd,
        Some(LinkNameSpaceType::Network),
    )?)
}

impl Netns {
    /// Opens a namespace by path; a missing path fails with `is_not_found()`.
    pub fn open(path: impl AsRef<Path>) -> Result<Netns> {
        let path = path.as_ref();
        let f = File::open(path).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOENT) {
                Error::NotFound(format!("network namespace {}", path.display()))
            } else {
                Error::os(format!("open network namespace {}", path.display()), e)
            }
        })?;
        Ok(Netns {
            fd: f.into(),
            path: path.to_path_buf(),
        })
    }

    /// Opens what a runtime passed as a pod's network namespace, and
    /// proves it is one: a file of the namespace filesystem (not a regular
    /// file, a directory or `/dev/null`), of a *network* namespace (not
    /// `/proc/PID/ns/mnt`), and not the namespace this thread is in (the
    /// node's own). Each refusal is `Error::Invalid` naming the reason.
    pub fn open_pod(path: impl AsRef<Path>) -> Result<Netns> {
        let ns = Netns::open(path)?;
        let shown = ns.path.display().to_string();
        let st = rustix::fs::fstatfs(&ns.fd)
            .map_err(|e| Error::os(format!("statfs {shown}"), e.into()))?;
        if st.f_type as i64 != NSFS_MAGIC {
            return Err(Error::Invalid(format!(
                "{shown} is not a network namespace (not a file of the namespace filesystem)"
            )));
        }
        // SAFETY: NS_GET_NSTYPE (linux/nsfs.h) takes no argument and only
        // returns the namespace type of a valid fd; nothing is read or
        // written through a pointer. No safe equivalent: neither rustix nor
        // std wraps it, and the fd's /proc name does not show the type for
        // a bind-mounted namespace (/var/run/netns/X).
        let ty = unsafe { libc::ioctl(ns.fd.as_raw_fd(), NS_GET_NSTYPE) };
        if ty != libc::CLONE_NEWNET {
            return Err(Error::Invalid(format!(
                "{shown} is a namespace, but not a network namespace"
            )));
        }
        if ns.is_same(&Netns::current()?)? {
            return Err(Error::Invalid(format!(
                "{shown} is the node's own network namespace"
            )));
        }
        Ok(ns)
    }

    /// The calling thread's current network namespace.
    pub fn current() -> Result<Netns> {
        Netns::open("/proc/thread-self/ns/net")
    }

    /// The namespace's file descriptor (for `setns`).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether two handles name the same namespace (same nsfs inode).
    pub fn is_same(&self, other: &Netns) -> Result<bool> {
        let id = |n: &Netns| -> Result<(u64, u64)> {
            let st = rustix::fs::fstat(&n.fd).map_err(|e| Error::Io(e.into()))?;
            Ok((st.st_dev, st.st_ino))
        };
        Ok(id(self)? == id(other)?)
    }

    /// Runs `f` with the CALLING THREAD switched into this namespace and
    /// switches back before returning, also when `f` panics.
    ///
    /// Only the calling thread moves: other threads (and sockets they open)
    /// stay where they were, so this is meant for single-threaded callers
    /// such as the CNI plugin. Multi-threaded programs should prefer
    /// [`Netns::run`].
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> Result<R> {
        let original = Netns::current()?;
        setns(self.as_fd())
            .map_err(|e| Error::os(format!("enter netns {}", self.path.display()), e))?;
        let guard = Restore(Some(original));
        let r = f();
        guard.finish()?;
        Ok(r)
    }

    /// Runs `f` on a fresh scoped thread that entered this namespace, so the
    /// caller's threads never change namespace. Panics in `f` propagate.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                setns(self.as_fd())
                    .map_err(|e| Error::os(format!("enter netns {}", self.path.display()), e))?;
                Ok(f())
            });
            match t.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

/// Switches the thread back to the saved namespace when dropped.
struct Restore(Option<Netns>);

impl Restore {
    fn finish(mut self) -> Result<()> {
        match self.0.take() {
            Some(ns) => setns(ns.as_fd())
                .map_err(|e| Error::os(format!("return to netns {}", ns.path.display()), e)),
            None => Ok(()),
        }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(ns) = self.0.take() {
            if setns(ns.as_fd()).is_ok() {
                return;
            }
            // Unwinding with the thread stuck in a foreign namespace would
            // let later code silently act on the wrong network.
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_path_is_not_found() {
        let e = Netns::open("/var/run/netns/knl-definitely-missing").unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }

    #[test]
    fn current_is_same_as_itself_and_differs_from_a_non_netns_file() {
        let a = Netns::current().unwrap();
        let b = Netns::open("/proc/self/ns/net").unwrap();
        assert!(a.is_same(&b).unwrap());
        let other = Netns::open("/proc/self/ns/uts").unwrap();
        assert!(!a.is_same(&other).unwrap());
        assert_eq!(b.path(), Path::new("/proc/self/ns/net"));
    }

    #[test]
    fn open_pod_refuses_what_is_not_another_network_namespace() {
        let refused = |p: &str| match Netns::open_pod(p) {
            Err(Error::Invalid(why)) => why,
            other => panic!("{p}: {other:?}"),
        };
        assert!(refused("/dev/null").contains("not a file of the namespace filesystem"));
        assert!(refused("/proc/self/ns/uts").contains("not a network namespace"));
        assert!(refused("/proc/self/ns/mnt").contains("not a network namespace"));
        assert!(refused("/proc/thread-self/ns/net").contains("node's own"));
    }
}

//! One error type for the whole crate, so callers can ask "does it exist?" /
//! "is it gone?" without matching on errno values themselves.

use std::io;

/// This crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Every failure of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A plain system call failure without further context.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A system call failure with what we were doing at the time.
    #[error("{context}: {source}")]
    Os {
        /// What we were doing.
        context: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The kernel answered a netlink request with an error.
    #[error("{context}: {}", io::Error::from_raw_os_error(*code))]
    Netlink {
        /// The positive errno.
        code: i32,
        /// What we asked for.
        context: String,
    },
    /// The kernel sent something we could not make sense of.
    #[error("netlink decode: {0}")]
    Decode(String),
    /// A named object (link, namespace, ...) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The caller passed something the kernel would reject anyway.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl Error {
    /// Attaches `context` to an OS error.
    pub(crate) fn os(context: impl Into<String>, source: io::Error) -> Error {
        Error::Os {
            context: context.into(),
            source,
        }
    }

    /// The positive errno behind this error, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Io(e) | Error::Os { source: e, .. } => e.raw_os_error(),
            Error::Netlink { code, .. } => Some(*code),
            Error::NotFound(_) => Some(libc::ENOENT),
            Error::Invalid(_) => Some(libc::EINVAL),
            Error::Decode(_) => None,
        }
    }

    /// True for "no such device / file / route / address" (ENODEV, ENOENT,
    /// ESRCH, EADDRNOTAVAIL): the thing asked for is not there, which is
    /// often fine for idempotent deletes.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
            || matches!(
                self.errno(),
                Some(libc::ENODEV | libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL)
            )
    }

    /// True when the kernel refused to create something that already exists.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// True when a route event socket overflowed and events were lost: the
    /// caller must resynchronise from a full dump.
    pub fn is_overrun(&self) -> bool {
        self.errno() == Some(libc::ENOBUFS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let e = Error::Netlink {
            code: libc::EEXIST,
            context: "add route".into(),
        };
        assert!(e.is_exists());
        assert!(!e.is_not_found());
        assert_eq!(e.errno(), Some(libc::EEXIST));
        assert!(e.to_string().starts_with("add route: "), "{e}");

        for code in [libc::ENODEV, libc::ENOENT, libc::ESRCH, libc::EADDRNOTAVAIL] {
            let e = Error::Netlink {
                code,
                context: String::new(),
            };
            assert!(e.is_not_found(), "{code}");
            assert!(!e.is_exists());
        }
        let e = Error::os("open netns", io::Error::from_raw_os_error(libc::ENOENT));
        assert!(e.is_not_found());
        assert!(Error::NotFound("x".into()).is_not_found());
        assert!(!Error::Decode("x".into()).is_not_found());
        assert!(Error::Io(io::Error::from_raw_os_error(libc::ENOBUFS)).is_overrun());
        assert_eq!(Error::Decode("x".into()).errno(), None);
    }
}

//! The Container Network Interface, as far as a plugin needs it: the error
//! object and its codes, the network configuration envelope, results and their
//! conversion between spec versions, the `CNI_*` environment, the skeleton
//! that turns a process invocation into a call on a [`Plugin`], and the
//! delegation of IPAM to another plugin binary.

#![warn(missing_docs)]

pub mod attachment;
pub mod binary;
pub mod decode;
pub mod env;
pub mod error;
pub mod invoke;
pub mod log;
pub mod netconf;
pub mod result;
pub mod skeleton;
pub mod version;

pub use attachment::{AttachmentId, NetworkKey, OwnerTag};
pub use env::{Command, Env};
pub use error::{CniError, code};
pub use netconf::NetConf;
pub use result::{CniResult, Dns, Interface, IpConfig, RouteConfig};
pub use skeleton::{Plugin, Request};

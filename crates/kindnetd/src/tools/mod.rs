//! kindnetd's subcommands: `kindnetd doctor` (checks a node for what breaks
//! kindnet) and `kindnetd cleanup` (removes what kindnet put on a node).

pub mod cleanup;
pub mod doctor;

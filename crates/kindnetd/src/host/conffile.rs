//! The one file kindnetd writes: the CNI config, replaced atomically and
//! only when its content changes, in the order runtimes' watchers need.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// The directory inside the CNI config directory where the next conflist
/// is written before it is moved into place. Runtimes watch the config
/// directory without recursion and load only files (never directories)
/// ending in `.conf`, `.conflist` or `.json`, so nothing written in here is
/// seen or loaded; being inside the directory, it is on the same
/// filesystem (a DaemonSet mounts only `/etc/cni/net.d` from the host), so
/// the move is a rename.
pub const STAGING_DIR: &str = ".kindnet-staging";

/// The name the finished file has for a moment inside the config directory,
/// between the two renames: hidden, and with an extension no runtime loads.
fn next_name(name: &str) -> String {
    format!(".{name}.next")
}

/// Writes `content` to `dir/name` if it differs from what is there, so that
/// a runtime watching `dir` never loads anything but a complete config and
/// reloads once, after the new one is in place. Returns whether it wrote.
///
/// containerd (1.6 to 2.x) reloads on every write, rename (IN_MOVED_FROM)
/// or remove event of any name in the directory, ignores create
/// (IN_CREATE, and IN_MOVED_TO) and chmod events, and then loads every
/// `.conf`/`.conflist`/`.json` file (hidden ones too); a load that finds a
/// partial file, or none at all, logs "failed to reload cni configuration".
/// So:
/// 1. the file is written, fsynced and given its mode in [`STAGING_DIR`]
///    (no event in `dir`: a temp file in `dir` itself makes a write event,
///    and with it a reload, while the new file is not in place — before the
///    first conflist that reload finds none and fails);
/// 2. renamed into `dir` as `.<name>.next` (a create event: ignored, and
///    the name is not loadable);
/// 3. renamed over `dir/name`: the rename event of `.<name>.next` makes the
///    runtime reload, and the complete file is already there. A file
///    renamed into `dir` straight from elsewhere makes only a create event,
///    which containerd ignores: it would never load the new config.
pub fn write_if_changed(dir: &Path, name: &str, content: &str) -> io::Result<bool> {
    let target = dir.join(name);
    match fs::read(&target) {
        Ok(old) if old == content.as_bytes() => return Ok(false),
        _ => {}
    }
    fs::create_dir_all(dir)?;
    let staging = dir.join(STAGING_DIR);
    match fs::create_dir(&staging) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    if !fs::symlink_metadata(&staging)?.file_type().is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            staging.display()
        )));
    }
    let tmp = staging.join(format!("{name}.{}", std::process::id()));
    let next = dir.join(next_name(name));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        drop(f);
        set_mode(&tmp, 0o644)?;
        fs::rename(&tmp, &next)?;
        fs::rename(&next, &target)?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(true)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&next);
    }
    result
}

fn set_mode(p: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::cniconf::CONFLIST_NAME;

    #[test]
    fn atomic_write_only_on_change() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net.d");
        assert!(write_if_changed(&dir, CONFLIST_NAME, "a\n").unwrap());
        let ino = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(p).unwrap().ino()
        };
        let target = dir.join(CONFLIST_NAME);
        let first = ino(&target);
        assert!(!write_if_changed(&dir, CONFLIST_NAME, "a\n").unwrap());
        assert_eq!(ino(&target), first, "unchanged content is not rewritten");
        assert!(write_if_changed(&dir, CONFLIST_NAME, "b\n").unwrap());
        assert_ne!(ino(&target), first, "new content arrives by rename");
        assert_eq!(fs::read_to_string(&target).unwrap(), "b\n");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != STAGING_DIR)
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
        assert_eq!(
            fs::read_dir(dir.join(STAGING_DIR)).unwrap().count(),
            0,
            "nothing left in the staging directory"
        );
    }
}

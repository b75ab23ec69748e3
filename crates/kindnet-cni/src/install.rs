//! `kindnet-cni install DIR`: copies this binary to `DIR/kindnet-cni` and
//! points each plugin name at it with a relative symlink. Every file is put in
//! place by rename, so a runtime exec-ing a plugin during an upgrade sees
//! either the old or the new binary, never a partial one. Idempotent.

use crate::PLUGIN_NAMES;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use kindnet_cni_spec::binary::NAME as BINARY;

pub fn install(dir: &Path) -> io::Result<Vec<String>> {
    let me = std::fs::read("/proc/self/exe")?;
    install_bytes(dir, &me)
}

pub(crate) fn install_bytes(dir: &Path, binary: &[u8]) -> io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let target = dir.join(BINARY);
    if std::fs::read(&target).ok().as_deref() != Some(binary) {
        let tmp = dir.join(format!(".{BINARY}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, binary)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &target)?;
    }
    for name in PLUGIN_NAMES {
        let link = dir.join(name);
        if std::fs::read_link(&link)
            .ok()
            .is_some_and(|t| t == Path::new(BINARY))
        {
            continue;
        }
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(BINARY, &tmp)?;
        std::fs::rename(&tmp, &link)?;
    }
    Ok(PLUGIN_NAMES.iter().map(|s| s.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_links_replaces_files_and_is_idempotent() {
        let dir = std::env::temp_dir().join(format!("kindnet-install-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // a reference plugin already there is replaced
        std::fs::write(dir.join("ptp"), b"old").unwrap();
        for _ in 0..2 {
            install_bytes(&dir, b"new-binary").unwrap();
            assert_eq!(std::fs::read(dir.join(BINARY)).unwrap(), b"new-binary");
            for n in PLUGIN_NAMES {
                assert_eq!(std::fs::read_link(dir.join(n)).unwrap(), Path::new(BINARY));
                assert_eq!(std::fs::read(dir.join(n)).unwrap(), b"new-binary");
            }
        }
        let mode = std::fs::metadata(dir.join(BINARY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

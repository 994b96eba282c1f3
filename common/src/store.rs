//! Atomic state files: a crash leaves either the old or the new content, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is written,
/// flushed to disk and renamed over `path`, then the directory entry is flushed too.
/// The file gets `mode` (e.g. `0o600` for keys and credentials).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        // A leftover from a crash (the pid repeats in containers) could carry a looser mode,
        // which opening an existing file would keep: start from a new file.
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::file(path, e)
    })
}

/// Stores `value` as pretty JSON at `path`, atomically, readable by the owner only.
pub fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::file(path, std::io::Error::other(e)))?;
    write_atomic(path, &bytes, 0o600)
}

/// Loads JSON stored by [`save_json`]; `None` when the file does not exist yet.
pub fn load_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::file(path, std::io::Error::other(e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::file(path, e)),
    }
}

/// Loads JSON that only saves work (a cache, bookkeeping that can be rebuilt): a file that cannot
/// be read as `T` is renamed `<name>.corrupt-<unix time>`, with a warning, and `None` returned,
/// so that start-up goes on instead of waiting for someone to delete it.
pub fn load_json_or_set_aside<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let error = match load_json(path) {
        Ok(value) => return value,
        Err(e) => e,
    };
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{seconds}"));
    let aside = std::path::PathBuf::from(aside);
    match fs::rename(path, &aside) {
        Ok(()) => tracing::warn!(
            error = %error,
            set_aside = %aside.display(),
            "an unreadable state file was set aside; starting without it"
        ),
        Err(e) => tracing::warn!(
            error = %error,
            rename_error = %e,
            "an unreadable state file is ignored (it could not be set aside)"
        ),
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_unreadable_cache_is_set_aside_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.json");
        assert_eq!(load_json_or_set_aside::<Vec<u32>>(&path), None);
        fs::write(&path, b"{ truncated").unwrap();
        assert_eq!(load_json_or_set_aside::<Vec<u32>>(&path), None);
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].starts_with("images.json.corrupt-"), "{names:?}");
        save_json(&path, &vec![1u32]).unwrap();
        assert_eq!(load_json_or_set_aside(&path), Some(vec![1u32]));
    }

    #[test]
    fn replaces_content_with_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        save_json(&path, &vec![1, 2]).unwrap();
        save_json(&path, &vec![3]).unwrap();
        assert_eq!(load_json::<Vec<i32>>(&path).unwrap(), Some(vec![3]));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn missing_file_is_none_and_garbage_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        assert_eq!(load_json::<i32>(&path).unwrap(), None);
        fs::write(&path, "{").unwrap();
        let err = load_json::<i32>(&path).unwrap_err().to_string();
        assert!(err.contains("x.json"), "{err}");
    }
}

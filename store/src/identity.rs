//! The node's 32-byte secret: one key for every network identity the node
//! has. Created once, never regenerated: a lost key is a new node to every
//! peer, so an unreadable key is an error, not a reason to make a new one.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::RngCore;

use crate::error::StoreError;

/// The key file inside the data dir.
pub const KEY_FILE: &str = "node.key";
const KEY_BYTES: usize = 32;
/// Owner read/write only.
const KEY_MODE: u32 = 0o600;

/// The node's secret key bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeSecret(pub [u8; KEY_BYTES]);

impl std::fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeSecret(..)") // never log key material
    }
}

/// The key, if `init` has run in `data_dir`.
pub fn load_identity(data_dir: &Path) -> Result<Option<NodeSecret>, StoreError> {
    let path = data_dir.join(KEY_FILE);
    let mut file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad_key(&path, e.to_string())),
    };
    let mut bytes = Vec::with_capacity(KEY_BYTES + 1);
    Read::by_ref(&mut file)
        .take(KEY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad_key(&path, e.to_string()))?;
    let key: [u8; KEY_BYTES] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| bad_key(&path, format!("{} bytes, expected {KEY_BYTES}", b.len())))?;
    Ok(Some(NodeSecret(key)))
}

fn bad_key(path: &Path, detail: String) -> StoreError {
    StoreError::BadKey {
        path: path.to_path_buf(),
        detail,
    }
}

/// Loads the key, creating it first if there is none. Returns the key and
/// whether it was created now. Idempotent and race-free: the key is written
/// to an exclusive temp file, synced, then linked into place without
/// replacing a key another process created meanwhile.
pub fn init_identity(data_dir: &Path) -> Result<(NodeSecret, bool), StoreError> {
    if let Some(key) = load_identity(data_dir)? {
        return Ok((key, false));
    }
    fs::create_dir_all(data_dir).map_err(|e| StoreError::io(data_dir, e))?;
    let mut secret = [0u8; KEY_BYTES];
    rand::rng().fill_bytes(&mut secret);
    let path = data_dir.join(KEY_FILE);
    let temp = data_dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
    write_exclusive(&temp, &secret)?;
    // link() fails if the key exists: the first process to get here wins.
    let linked = fs::hard_link(&temp, &path);
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            sync_dir(data_dir)?;
            Ok((NodeSecret(secret), true))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let key = load_identity(data_dir)?.ok_or(StoreError::NoIdentity)?;
            Ok((key, false))
        }
        Err(e) => Err(StoreError::io(&path, e)),
    }
}

fn write_exclusive(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(KEY_MODE)
        .open(path)
        .map_err(|e| StoreError::io(path, e))?;
    // The umask cannot widen 0600, but an inherited ACL could: set it explicitly.
    file.set_permissions(fs::Permissions::from_mode(KEY_MODE))
        .map_err(|e| StoreError::io(path, e))?;
    file.write_all(bytes).map_err(|e| StoreError::io(path, e))?;
    file.sync_all().map_err(|e| StoreError::io(path, e))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_idempotent_and_private() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_identity(dir.path()).unwrap(), None);
        let (a, created) = init_identity(dir.path()).unwrap();
        assert!(created);
        let (b, created) = init_identity(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn a_damaged_key_is_an_error_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        assert!(matches!(
            init_identity(dir.path()),
            Err(StoreError::BadKey { .. })
        ));
        assert_eq!(fs::read(dir.path().join(KEY_FILE)).unwrap(), b"short");
    }
}

//! `<data-dir>/node.json`: how a CLI finds the running node — its pid, API
//! address and the token every API request must carry. Mode 0600 (the
//! token is a password), written atomically, removed when the node stops.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use serde::{Deserialize, Serialize};

/// The file's name inside the data dir.
pub const NODE_FILE: &str = "node.json";
/// Bytes of randomness in an API token (hex-encoded).
const TOKEN_BYTES: usize = 32;
/// node.json is tiny; anything bigger is not ours.
const MAX_NODE_FILE_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub pid: u32,
    pub api: SocketAddr,
    pub token: String,
    pub id: String,
    pub started_ms: i64,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(NODE_FILE)
}

pub fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes node.json (temp file with 0600, then rename).
pub fn write(data_dir: &Path, info: &NodeInfo) -> std::io::Result<()> {
    let target = path(data_dir);
    let temp = data_dir.join(format!(".{NODE_FILE}.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(&serde_json::to_vec_pretty(info).expect("serializes"))?;
    file.sync_all()?;
    std::fs::rename(&temp, &target)
}

/// Reads node.json; `None` if absent or not ours (a stale or foreign file
/// must never block offline use).
pub fn read(data_dir: &Path) -> Option<NodeInfo> {
    let file = std::fs::File::open(path(data_dir)).ok()?;
    if file.metadata().ok()?.len() > MAX_NODE_FILE_BYTES {
        return None;
    }
    serde_json::from_reader(std::io::BufReader::new(file)).ok()
}

/// Removes node.json if it is still the one `pid` wrote.
pub fn remove(data_dir: &Path, pid: u32) {
    if read(data_dir).is_some_and(|i| i.pid == pid) {
        let _ = std::fs::remove_file(path(data_dir));
    }
}

/// Whether a process with this pid exists (Linux: /proc).
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

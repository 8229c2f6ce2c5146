//! What may cross a link: the sites pay for bandwidth. State always syncs
//! (it is tiny); stems follow the stems policy — `always`, `lan-only` or
//! `never` — set for the node (`config set stems-policy …`) or for one
//! peer (`config set stems-policy:<node id> …`). A link is what it is
//! marked (`config set link:<node id> lan|remote`); unmarked, it is judged
//! by the path in use (`seen`): through a relay, or to a public address,
//! it is remote; direct to a private, link-local or loopback address, LAN;
//! with no connection up, LAN (the mark decides then). The policy
//! holds both ways: this node neither fetches stems over a link it keeps
//! them off, nor serves them over it.

use std::net::IpAddr;

use crate::request::Context;

/// Settings: the node's stems policy, a peer's, and how a peer's link is marked.
pub const STEMS_POLICY_KEY: &str = "stems-policy";
pub const STEMS_POLICY_PREFIX: &str = "stems-policy:";
pub const LINK_PREFIX: &str = "link:";
pub const STEMS_POLICIES: &[&str] = &["always", "lan-only", "never"];
pub const LINK_KINDS: &[&str] = &["lan", "remote"];

/// How a path looks: relayed or public is `remote`, private is `lan`.
pub fn seen(relayed: bool, remote_ip: Option<IpAddr>) -> &'static str {
    let private = |ip: IpAddr| match ip {
        IpAddr::V4(ip) => ip.is_private() || ip.is_link_local() || ip.is_loopback(),
        IpAddr::V6(ip) => {
            let first = ip.segments()[0];
            ip.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    };
    match remote_ip {
        Some(ip) if !relayed && private(ip) => "lan",
        _ => "remote",
    }
}

/// Whether stems may travel between this node and `peer` (hex id), whose
/// link looks like `seen` now (`None`: no connection up).
pub fn stems_allowed(ctx: &mut Context, peer: &str, seen: Option<&str>) -> bool {
    let Ok(store) = ctx.store() else {
        return false;
    };
    let setting = |key: &str| store.setting(key).ok().flatten();
    let policy = setting(&format!("{STEMS_POLICY_PREFIX}{peer}"))
        .or_else(|| setting(STEMS_POLICY_KEY))
        .unwrap_or_else(|| "always".into());
    match policy.as_str() {
        "never" => false,
        "lan-only" => {
            let marked = setting(&format!("{LINK_PREFIX}{peer}"));
            marked.as_deref().or(seen) != Some("remote")
        }
        _ => true,
    }
}

/// Whether `key` is a link setting (a policy or a peer's cap), and `value`
/// one it takes: `None` if the key is not one, else the error for a bad
/// value or a key naming no node id.
pub fn check_setting(key: &str, value: &str) -> Option<Result<(), String>> {
    use super::rate_limit::{DOWNLOAD_PREFIX, UPLOAD_PREFIX};
    let prefixes = [
        STEMS_POLICY_PREFIX,
        LINK_PREFIX,
        UPLOAD_PREFIX,
        DOWNLOAD_PREFIX,
    ];
    let peer = prefixes.iter().find_map(|p| key.strip_prefix(p));
    if let Some(peer) = peer
        && peer.parse::<iroh::EndpointId>().is_err()
    {
        return Some(Err(format!(
            "{key}: {peer:?} is not a node id (`meshstudio status` shows peers' ids)"
        )));
    }
    if key.starts_with(UPLOAD_PREFIX) || key.starts_with(DOWNLOAD_PREFIX) {
        return Some(super::rate_limit::check_kbps_setting(key, value));
    }
    let allowed = if key == STEMS_POLICY_KEY || key.starts_with(STEMS_POLICY_PREFIX) {
        STEMS_POLICIES
    } else if key.starts_with(LINK_PREFIX) {
        LINK_KINDS
    } else {
        return None;
    };
    Some(if allowed.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{key}: choose {}, not {value:?}",
            allowed.join(", ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_judged_lan_or_remote() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        assert_eq!(seen(false, ip("192.168.1.7")), "lan");
        assert_eq!(seen(false, ip("10.0.0.2")), "lan");
        assert_eq!(seen(false, ip("fd00::7")), "lan");
        assert_eq!(seen(false, ip("fe80::1")), "lan");
        assert_eq!(seen(false, ip("203.0.113.9")), "remote");
        assert_eq!(seen(false, ip("2001:db8::1")), "remote");
        assert_eq!(seen(true, ip("192.168.1.7")), "remote", "through a relay");
        assert_eq!(seen(true, None), "remote");
    }

    #[test]
    fn policy_settings_are_checked() {
        assert_eq!(check_setting("author", "x"), None);
        assert_eq!(check_setting("stems-policy", "lan-only"), Some(Ok(())));
        let id = iroh::SecretKey::from_bytes(&[3; 32]).public().to_string();
        let ok = |key: &str, value| check_setting(&format!("{key}{id}"), value);
        assert_eq!(ok("stems-policy:", "never"), Some(Ok(())));
        assert_eq!(ok("link:", "remote"), Some(Ok(())));
        assert!(matches!(ok("link:", "far"), Some(Err(_))));
        assert_eq!(ok("max-upload-kbps:", "800"), Some(Ok(())));
        assert_eq!(ok("max-download-kbps:", "none"), Some(Ok(())));
        assert!(matches!(ok("max-download-kbps:", "8"), Some(Err(_))));
        assert!(matches!(ok("max-upload-kbps:", "fast"), Some(Err(_))));
        let typo = check_setting("stems-policy:abcd", "never");
        assert!(matches!(typo, Some(Err(e)) if e.contains("not a node id")));
        assert!(matches!(
            check_setting("stems-policy", "sometimes"),
            Some(Err(_))
        ));
    }
}

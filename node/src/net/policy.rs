//! What may cross a link: the sites pay for bandwidth. State always syncs
//! (it is tiny); stems follow the stems policy — `always`, `lan-only` or
//! `never` — set for the node (`config set stems-policy …`) or for one
//! peer (`config set stems-policy:<node id> …`). A link counts as LAN
//! unless marked remote (`config set link:<node id> remote`). The policy
//! holds both ways: this node neither fetches stems over a link it keeps
//! them off, nor serves them over it.

use crate::request::Context;

/// Settings: the node's stems policy, a peer's, and how a peer's link is marked.
pub const STEMS_POLICY_KEY: &str = "stems-policy";
pub const STEMS_POLICY_PREFIX: &str = "stems-policy:";
pub const LINK_PREFIX: &str = "link:";
pub const STEMS_POLICIES: &[&str] = &["always", "lan-only", "never"];
pub const LINK_KINDS: &[&str] = &["lan", "remote"];

/// Whether stems may travel between this node and `peer` (hex id).
pub fn stems_allowed(ctx: &mut Context, peer: &str) -> bool {
    let Ok(store) = ctx.store() else {
        return false;
    };
    let setting = |key: &str| store.setting(key).ok().flatten();
    let policy = setting(&format!("{STEMS_POLICY_PREFIX}{peer}"))
        .or_else(|| setting(STEMS_POLICY_KEY))
        .unwrap_or_else(|| "always".into());
    match policy.as_str() {
        "never" => false,
        "lan-only" => setting(&format!("{LINK_PREFIX}{peer}")).as_deref() != Some("remote"),
        _ => true,
    }
}

/// Whether `key` is a policy setting, and `value` one it takes: `None` if
/// the key is not a policy's, else the error for a bad value.
pub fn check_setting(key: &str, value: &str) -> Option<Result<(), String>> {
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
    fn policy_settings_are_checked() {
        assert_eq!(check_setting("author", "x"), None);
        assert_eq!(check_setting("stems-policy", "lan-only"), Some(Ok(())));
        assert_eq!(check_setting("stems-policy:abcd", "never"), Some(Ok(())));
        assert_eq!(check_setting("link:abcd", "remote"), Some(Ok(())));
        assert!(matches!(check_setting("link:abcd", "far"), Some(Err(_))));
        assert!(matches!(
            check_setting("stems-policy", "sometimes"),
            Some(Err(_))
        ));
    }
}

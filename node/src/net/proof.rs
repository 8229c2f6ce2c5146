//! Proofs of knowing a project's secret, bound to both authenticated node
//! ids and to what the proof is for, so one can't be replayed elsewhere:
//! `BLAKE3-keyed(secret, purpose ‖ 0 ‖ project ‖ from ‖ to)`.

/// What a proof is for.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    /// A joiner to the inviter: "I hold the ticket".
    Join,
    /// The inviter back to the joiner: "I am really a member".
    Welcome,
    /// Either side of a sync session.
    Sync,
}

impl Purpose {
    fn tag(self) -> &'static [u8] {
        match self {
            Purpose::Join => b"meshstudio/join",
            Purpose::Welcome => b"meshstudio/welcome",
            Purpose::Sync => b"meshstudio/sync",
        }
    }
}

pub fn make(secret: &[u8; 32], purpose: Purpose, project: &str, from: &str, to: &str) -> String {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(purpose.tag());
    h.update(&[0]);
    for part in [project, from, to] {
        h.update(&(part.len() as u32).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// Constant-time check of a proof someone sent.
pub fn check(
    proof: &str,
    secret: &[u8; 32],
    purpose: Purpose,
    project: &str,
    from: &str,
    to: &str,
) -> bool {
    let Ok(sent) = blake3::Hash::from_hex(proof) else {
        return false;
    };
    let want = make(secret, purpose, project, from, to);
    blake3::Hash::from_hex(want).is_ok_and(|w| w == sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_purpose_project_and_both_ids() {
        let s = [9u8; 32];
        let p = make(&s, Purpose::Join, "proj", "a", "b");
        assert!(check(&p, &s, Purpose::Join, "proj", "a", "b"));
        assert!(!check(&p, &s, Purpose::Sync, "proj", "a", "b"));
        assert!(!check(&p, &s, Purpose::Join, "other", "a", "b"));
        assert!(!check(&p, &s, Purpose::Join, "proj", "b", "a"));
        assert!(!check(&p, &[8u8; 32], Purpose::Join, "proj", "a", "b"));
        assert!(!check("zz", &s, Purpose::Join, "proj", "a", "b"));
    }
}

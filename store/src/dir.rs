//! Where a node keeps its data.

use std::path::{Path, PathBuf};

/// Environment variable that overrides the data dir (the CLI's `--data-dir` wins over it).
pub const DATA_DIR_ENV: &str = "MESHSTUDIO_DIR";
/// Name of the data dir under the per-user data directory.
const APP_DIR_NAME: &str = "meshstudio";

/// Errors finding the data dir.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("no data dir: set --data-dir or {DATA_DIR_ENV}, or HOME")]
    NoHome,
}

/// Where a node keeps its data: `explicit` (from `--data-dir`), else
/// `$MESHSTUDIO_DIR`, else `$XDG_DATA_HOME/meshstudio`, else
/// `~/.local/share/meshstudio`.
pub fn resolve_data_dir(explicit: Option<&Path>) -> Result<PathBuf, DataDirError> {
    resolve_with(explicit, |k| std::env::var_os(k).filter(|v| !v.is_empty()))
}

fn resolve_with(
    explicit: Option<&Path>,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<PathBuf, DataDirError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = env(DATA_DIR_ENV) {
        return Ok(PathBuf::from(p));
    }
    // XDG says relative values are invalid and must be ignored.
    if let Some(p) = env("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        return Ok(p.join(APP_DIR_NAME));
    }
    let home = env("HOME").ok_or(DataDirError::NoHome)?;
    Ok(PathBuf::from(home).join(".local/share").join(APP_DIR_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| {
            pairs
                .iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn precedence_is_flag_env_xdg_home() {
        let all = env_of(&[
            ("MESHSTUDIO_DIR", "/env"),
            ("XDG_DATA_HOME", "/xdg"),
            ("HOME", "/home/u"),
        ]);
        let flag = Path::new("/flag");
        assert_eq!(resolve_with(Some(flag), &all).unwrap(), flag);
        assert_eq!(resolve_with(None, &all).unwrap(), Path::new("/env"));
        let no_env = env_of(&[("XDG_DATA_HOME", "/xdg"), ("HOME", "/home/u")]);
        assert_eq!(
            resolve_with(None, no_env).unwrap(),
            Path::new("/xdg/meshstudio")
        );
        let relative_xdg = env_of(&[("XDG_DATA_HOME", "rel"), ("HOME", "/home/u")]);
        assert_eq!(
            resolve_with(None, relative_xdg).unwrap(),
            Path::new("/home/u/.local/share/meshstudio")
        );
        assert!(matches!(
            resolve_with(None, env_of(&[])),
            Err(DataDirError::NoHome)
        ));
    }
}

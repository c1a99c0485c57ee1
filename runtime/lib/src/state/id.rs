//! Container ids, checked the way runc checks them.

use anyhow::{bail, Result};

/// Longest id husk accepts: it names a directory, so it must fit in one path component.
pub const MAX_ID_LEN: usize = 255;

/// Accepts what runc accepts: letters, digits, `_`, `+`, `-` and `.`, but not `.` or `..`.
pub fn validate(id: &str) -> Result<()> {
    if id.is_empty() {
        bail!("invalid container id: it is empty");
    }
    if id == "." || id == ".." {
        bail!("invalid container id {id:?}");
    }
    if id.len() > MAX_ID_LEN {
        bail!("invalid container id: longer than {MAX_ID_LEN} bytes");
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.')))
    {
        bail!("invalid container id {id:?}: {c:?} is not allowed (use letters, digits, _ + - .)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_runc_style_ids() {
        for id in [
            "a",
            "abc-123",
            "x_y.z+w",
            "0123456789abcdef".repeat(4).as_str(),
            "..a",
        ] {
            validate(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }

    #[test]
    fn refuses_paths_and_odd_characters() {
        for id in ["", ".", "..", "a/b", "../x", "a b", "é", "a\nb", "a:b"] {
            assert!(validate(id).is_err(), "{id:?} accepted");
        }
        assert!(validate(&"a".repeat(MAX_ID_LEN + 1)).is_err());
    }
}

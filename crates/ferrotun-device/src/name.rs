//! Interface names: what the kernel accepts, checked before any system call.
//!
//! Linux keeps interface names in `IFNAMSIZ` (16) bytes including the terminating NUL, so a
//! name has at most 15 bytes (`include/uapi/linux/if.h`). The kernel's own check
//! (`dev_valid_name` in `net/core/dev.c`) refuses "", ".", "..", '/', ':' and white space; a
//! name with `%d` is a pattern the kernel fills with the lowest free number
//! (`dev_alloc_name`), and it allows exactly one `%` followed by `d`. We accept a stricter
//! set (ASCII letters, digits, `-`, `_`, `.`, and one `%d`) so that every name we create is
//! also safe to put in a file path, a shell hook's environment and a log line.

use crate::error::{DeviceError, Result};

/// The longest interface name, in bytes (`IFNAMSIZ` - 1).
pub const MAX_NAME_LEN: usize = 15;

/// Checks an interface name or pattern (`ftun%d`) and returns whether it is a pattern.
pub fn validate(name: &str) -> Result<bool> {
    let bad = |reason| {
        Err(DeviceError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 15 bytes (the kernel's IFNAMSIZ limit)");
    }
    if name == "." || name == ".." {
        return bad("\".\" and \"..\" are not interface names");
    }
    let percents = name.matches('%').count();
    if percents > 1 {
        return bad("it has more than one '%' (only one \"%d\" is allowed)");
    }
    if percents == 1 && !name.contains("%d") {
        return bad("'%' must be followed by 'd' (\"%d\" is the number the kernel fills in)");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '%')))
    {
        return Err(DeviceError::InvalidName {
            name: name.to_owned(),
            reason: if c.is_whitespace() {
                "it contains white space"
            } else if c == '/' || c == ':' {
                "it contains '/' or ':'"
            } else {
                "it contains a character other than ASCII letters, digits, '-', '_', '.' and \"%d\""
            },
        });
    }
    Ok(percents == 1)
}

/// Copies a validated name into a NUL-terminated `IFNAMSIZ` array.
pub(crate) fn to_ifname(name: &str) -> [u8; libc::IFNAMSIZ] {
    let mut out = [0u8; libc::IFNAMSIZ];
    let n = name.len().min(MAX_NAME_LEN);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

/// Reads a NUL-terminated `IFNAMSIZ` array back into a string.
pub(crate) fn from_ifname(raw: &[u8; libc::IFNAMSIZ]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(name: &str) -> String {
        match validate(name) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{name:?} was accepted"),
        }
    }

    #[test]
    fn accepts_plain_names_and_one_pattern() {
        assert!(!validate("ftun0").unwrap());
        assert!(!validate("a").unwrap());
        assert!(!validate("x_y-z.1").unwrap());
        assert!(validate("ftun%d").unwrap());
        assert!(!validate("123456789012345").unwrap());
    }

    #[test]
    fn refuses_bad_names_with_a_reason() {
        assert!(reason("").contains("empty"));
        assert!(reason("1234567890123456").contains("15 bytes"));
        assert!(reason("a b").contains("white space"));
        assert!(reason("a/b").contains("'/'"));
        assert!(reason("a:b").contains("':'"));
        assert!(reason("..").contains("\"..\""));
        assert!(reason("t%d%d").contains("more than one"));
        assert!(reason("t%x").contains("followed by 'd'"));
        assert!(reason("tün").contains("ASCII"));
        assert!(reason("a\u{0}b").contains("ASCII"));
    }

    #[test]
    fn ifname_round_trip() {
        let raw = to_ifname("ftun7");
        assert_eq!(raw[5], 0);
        assert_eq!(from_ifname(&raw), "ftun7");
        let full = to_ifname("123456789012345");
        assert_eq!(full[15], 0);
        assert_eq!(from_ifname(&full), "123456789012345");
    }
}

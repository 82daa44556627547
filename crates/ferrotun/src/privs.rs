//! Dropping privileges after setup, and telling systemd we are ready.
//!
//! Creating the device, binding the sockets and running the `up` hook need root (or
//! `CAP_NET_ADMIN`); moving packets does not: the device and socket descriptors stay
//! open. With `[interface] user`/`group` the process switches to that user and group once
//! setup is done, keeping no capabilities (the kernel clears them on the switch from uid
//! 0; `no_new_privs` keeps them from coming back). A process started unprivileged with
//! ambient `CAP_NET_ADMIN` (the systemd units) drops its capabilities the same way.
//!
//! Also here: `sd_notify` (`READY=1`, `RELOADING=1`, `STOPPING=1`) for `Type=notify`
//! units, written by hand: one datagram to `$NOTIFY_SOCKET`.

use std::ffi::CString;
use std::io;

/// A user and group to run as after setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunAs {
    /// User id.
    pub(crate) uid: u32,
    /// Group id.
    pub(crate) gid: u32,
}

/// Resolves a user name (or a numeric id, for systems without `/etc/passwd` such as a
/// `scratch` container) to its uid and primary gid.
pub(crate) fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    if let Ok(uid) = name.parse::<u32>() {
        // A bare id: its primary group is whatever passwd says, else the same number.
        let gid = passwd_by_uid(uid).map_or(uid, |(_, g)| g);
        return Ok((uid, gid));
    }
    let c = CString::new(name).map_err(|_| format!("user {name:?} contains a NUL byte"))?;
    let mut pwd: libc::passwd = unsafe_zeroed_passwd();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes into `pwd` and `buf` (sizes passed) and sets `result` to
    // `&pwd` or null; all outlive the call.
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(format!(
            "no user {name:?} on this system (a numeric uid works everywhere)"
        ));
    }
    Ok((pwd.pw_uid, pwd.pw_gid))
}

fn unsafe_zeroed_passwd() -> libc::passwd {
    // SAFETY: `passwd` is plain data (integers and pointers); all-zero is a valid value
    // that getpwnam_r/getpwuid_r overwrite.
    unsafe { std::mem::zeroed() }
}

fn passwd_by_uid(uid: u32) -> Option<(u32, u32)> {
    let mut pwd = unsafe_zeroed_passwd();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as in lookup_user.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    (rc == 0 && !result.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
}

/// Resolves a group name (or numeric id) to its gid.
pub(crate) fn lookup_group(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let c = CString::new(name).map_err(|_| format!("group {name:?} contains a NUL byte"))?;
    // SAFETY: `group` is plain data; all-zero is valid and getgrnam_r overwrites it.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into `grp` and `buf` (sizes passed); all outlive the call.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(format!(
            "no group {name:?} on this system (a numeric gid works everywhere)"
        ));
    }
    Ok(grp.gr_gid)
}

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}

/// Switches the whole process (every thread: glibc's set*id wrappers apply to all
/// threads) to `to`, with no supplementary groups and no capabilities.
pub(crate) fn drop_to(to: RunAs) -> io::Result<()> {
    // SAFETY: plain system calls with integer arguments; results checked.
    unsafe {
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            "no_new_privs",
        )?;
        check(libc::setgroups(1, &to.gid), "setgroups")?;
        check(libc::setresgid(to.gid, to.gid, to.gid), "setresgid")?;
        check(libc::setresuid(to.uid, to.uid, to.uid), "setresuid")?;
    }
    clear_capabilities()
}

/// Clears every capability of every thread (effective, permitted, inheritable, ambient).
pub(crate) fn clear_capabilities() -> io::Result<()> {
    // SAFETY: prctl with integer arguments; the result is checked.
    unsafe {
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            "no_new_privs",
        )?;
        // Ambient capabilities are per thread too, but clearing permitted below removes
        // them (an ambient capability must be permitted and inheritable).
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    // capset acts on the calling thread only; every thread of ours must lose them. The
    // tokio runtime's threads were started before this point, so run capset on each: the
    // caller arranges that by calling `clear_capabilities_everywhere`.
    capset_zero()
}

/// `capset(2)` with all sets empty, for the calling thread.
pub(crate) fn capset_zero() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522; // _LINUX_CAPABILITY_VERSION_3
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data::default(); 2];
    // SAFETY: a version-3 header and two data words, as capset(2) requires.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "capset: {}",
            io::Error::last_os_error()
        )))
    }
}

/// The effective capability mask of a thread, from `/proc/thread-self/status` or
/// `/proc/<pid>/task/<tid>/status`.
pub(crate) fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Whether this process has any effective capability (on the calling thread).
pub(crate) fn has_capabilities() -> bool {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| effective_caps(&s))
        .is_some_and(|c| c != 0)
}

/// Sends a state line to systemd when started as a `Type=notify` service; does nothing
/// otherwise.
pub(crate) fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket address.
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = sent {
        tracing::debug!("sd_notify {state:?}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_groups_resolve_by_name_and_number() {
        assert_eq!(lookup_user("root").unwrap(), (0, 0));
        assert_eq!(lookup_user("0").unwrap(), (0, 0));
        assert_eq!(lookup_user("4242").unwrap().0, 4242);
        assert!(
            lookup_user("no-such-user-here")
                .unwrap_err()
                .contains("numeric uid")
        );
        assert_eq!(lookup_group("root").unwrap(), 0);
        assert_eq!(lookup_group("777").unwrap(), 777);
        assert!(lookup_group("no-such-group-here").is_err());
    }

    #[test]
    fn capability_masks_parse() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        assert_eq!(effective_caps(s), Some(0x1fffeffffff));
        assert_eq!(effective_caps("CapEff:\t0000000000000000\n"), Some(0));
        assert_eq!(effective_caps("nothing"), None);
    }

    #[test]
    fn notify_reaches_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // SAFETY: the test sets the variable before any thread of its own reads it; other
        // tests in this binary do not read NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        sd_notify("READY=1");
        // SAFETY: as above.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 32];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}

//! The descriptor limit: raised to the hard limit at start (systemd's soft
//! default of 1024 held the proxy near 500 relayed connections), and turned
//! into how many connections the proxy can hold.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors kept for everything but relayed connections: the listener,
/// stdio, the runtime's own, a hybrid-vsock connect in flight.
pub const RESERVED_FDS: u64 = 32;

/// The soft `RLIMIT_NOFILE` after raising it to the hard limit (or the old
/// soft limit if raising failed, with the error).
pub fn raise_nofile() -> (u64, Option<nix::Error>) {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return (1024, None);
    };
    if soft >= hard {
        return (soft, None);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => (hard, None),
        Err(e) => (soft, Some(e)),
    }
}

/// Relayed connections `fds` descriptors can hold: two each (client and
/// upstream).
pub fn connections_for(fds: u64) -> u64 {
    fds.saturating_sub(RESERVED_FDS) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_descriptors_a_connection_after_the_reserve() {
        assert_eq!(connections_for(1024), 496);
        assert_eq!(connections_for(10), 0);
    }

    #[test]
    fn raising_ends_at_the_hard_limit() {
        let (soft, err) = raise_nofile();
        assert!(err.is_none(), "{err:?}");
        let (now_soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        assert_eq!(soft, now_soft);
        assert_eq!(now_soft, hard);
    }
}

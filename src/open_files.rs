//! The daemon's limit on open files: raised at start from the soft limit
//! it was given (often 1024 outside systemd) to the hard limit. Every
//! SMTP session holds a socket, and a session past its first 16 KiB of
//! DATA (or stalled with them) also its spool file: at 1024, about 500
//! such sessions would leave none for the spool, the next hops and the
//! listeners.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// What raising the limit did: the soft limit before and after (`None`
/// for unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    pub from: Option<u64>,
    pub to: Option<u64>,
}

/// Raises the soft limit on open files to the hard limit; the error when
/// the system refuses.
pub fn raise() -> std::io::Result<Raised> {
    let limit = getrlimit(Resource::Nofile);
    let wanted = target(limit.current, limit.maximum);
    if wanted != limit.current {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: wanted,
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(Raised {
        from: limit.current,
        to: wanted,
    })
}

/// The soft limit to ask for: the hard one (`None`: unlimited), but never
/// lower than the current one.
fn target(current: Option<u64>, maximum: Option<u64>) -> Option<u64> {
    match (current, maximum) {
        (None, _) => None,
        (Some(c), Some(m)) => Some(c.max(m)),
        (Some(_), None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::target;

    #[test]
    fn the_soft_limit_goes_up_to_the_hard_one_and_never_down() {
        assert_eq!(target(Some(1024), Some(524_288)), Some(524_288));
        assert_eq!(target(Some(1024), None), None);
        assert_eq!(target(None, Some(4096)), None);
        assert_eq!(target(Some(65_536), Some(65_536)), Some(65_536));
    }
}

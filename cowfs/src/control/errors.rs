//! Engine, mount and token errors as typed protocol errors.

use cowfs_ctl::proto::{ErrorKind, ErrorReply};

use super::tokens::TokenError;
use crate::fuse::MountError;
use crate::pool::PoolError;

pub fn pool(e: PoolError) -> ErrorReply {
    let kind = match &e {
        PoolError::BranchNotFound(_) => ErrorKind::NotFound,
        PoolError::BranchExists(_) => ErrorKind::Exists,
        PoolError::InvalidName(..) => ErrorKind::InvalidName,
        PoolError::Busy(_) => ErrorKind::Busy,
        _ => match e.errno() {
            libc::ENOSPC => ErrorKind::NoSpace,
            libc::EROFS => ErrorKind::ReadOnly,
            _ => ErrorKind::Io,
        },
    };
    let message = match kind {
        ErrorKind::ReadOnly => {
            format!("{e}: snapshots and a pool in read-only state cannot change")
        }
        _ => e.to_string(),
    };
    ErrorReply::new(kind, message)
}

pub fn mount(e: MountError) -> ErrorReply {
    let kind = match &e {
        MountError::Pool(p) => return pool_ref(p, e.to_string()),
        MountError::NotADirectory(_) | MountError::NotRealPath(_) => ErrorKind::NotADirectory,
        MountError::AlreadyMounted(_) => ErrorKind::Exists,
        MountError::BranchMounted { .. } => ErrorKind::Mounted,
        MountError::NotMounted(_) => ErrorKind::NotMounted,
        MountError::Busy(_) => ErrorKind::Busy,
        MountError::Detached(_) | MountError::Covered(_) => ErrorKind::Busy,
        MountError::WouldHide { .. } => ErrorKind::Forbidden,
        _ => ErrorKind::Io,
    };
    ErrorReply::new(kind, e.to_string())
}

fn pool_ref(p: &PoolError, message: String) -> ErrorReply {
    let kind = match p {
        PoolError::BranchNotFound(_) => ErrorKind::NotFound,
        PoolError::Busy(_) => ErrorKind::Busy,
        _ => ErrorKind::Io,
    };
    ErrorReply::new(kind, message)
}

pub fn token(e: TokenError) -> ErrorReply {
    let kind = match &e {
        TokenError::Exists(_) => ErrorKind::Exists,
        TokenError::NotFound(_) => ErrorKind::NotFound,
        _ => ErrorKind::Io,
    };
    ErrorReply::new(kind, e.to_string())
}

/// The reply to a request of a token revoked since its connection said hello.
pub fn revoked(token: &str) -> ErrorReply {
    ErrorReply::new(
        ErrorKind::Unauthenticated,
        format!("token '{token}' has been revoked; connect again with a valid token"),
    )
}

pub fn bad_request(message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorKind::BadRequest, message)
}

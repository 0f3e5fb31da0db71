//! POSIX ACL blobs (`system.posix_acl_access` / `_default`): any user can set
//! one with setxattr(2), and the FUSE adapter parses what is stored when a file
//! is created in a directory or its mode changes. A blob that parses encodes
//! back to exactly its bytes.

use cowfs::fuse::acl::Acl;

pub fn posix_acl(data: &[u8]) {
    if let Some(acl) = Acl::parse(data) {
        assert_eq!(acl.encode(), data);
    }
}

//! The fuser `Filesystem` of one mounted branch: each kernel request becomes one
//! pool call on that branch, and the result becomes the reply.
//!
//! Locks (fcntl and flock) are not implemented here on purpose: without
//! FUSE_POSIX_LOCKS / FUSE_FLOCK_LOCKS the kernel keeps them itself, which is
//! exact between the processes of one machine. Access times are not updated on
//! read (the mount is `noatime`).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, OpenAccMode, OpenFlags, PollEvents, PollFlags, PollNotifier,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};

use super::acl;
use super::attr::{
    errno, file_attr, file_type, from_request_time, negative_entry, time_or_now, TTL,
};
use super::handles::Handles;
use super::kernel;
use super::lookups::Lookups;
use super::privileges::{keeps_setgid, names_visible_to, Caller};
use super::write_back::WriteBack;
use crate::fs::file::{SeekWhence, WriteTimes};
use crate::fs::{Attr, FsError, FsResult, SetAttr};
use crate::pool::{BranchId, Pool};

/// Directory entries fetched from the engine per readdir request.
const READDIR_BATCH: usize = 512;
/// Largest range shared by one copy_file_range request (the kernel loops for more).
const MAX_CLONE: u64 = 1 << 30;

/// Files keep their page cache across opens. Without FOPEN_KEEP_CACHE the kernel
/// drops a file's cached pages at every open and reads them from the daemon again.
/// Keeping them is safe because a mounted branch changes only through its one
/// mount (a branch mounts once; reset refuses mounted branches), so the kernel's
/// cache is never stale.
const OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE;

pub(crate) struct CowFs {
    pub(super) pool: Arc<Pool>,
    pub(super) branch: BranchId,
    read_only: bool,
    handles: Arc<Handles>,
    lookups: Lookups,
    /// The kernel keeps regular files' mtime and ctime (it took the writeback
    /// cache at FUSE_INIT).
    kernel_keeps_times: bool,
    /// Set once the session exists (the session owns this struct); used to tell
    /// the kernel about attribute changes it did not ask for.
    notifier: Arc<OnceLock<fuser::Notifier>>,
}

impl CowFs {
    pub(crate) fn new(pool: Arc<Pool>, branch: BranchId, read_only: bool) -> CowFs {
        CowFs {
            pool,
            branch,
            read_only,
            handles: Arc::default(),
            lookups: Lookups::default(),
            kernel_keeps_times: false,
            notifier: Arc::default(),
        }
    }

    /// Where the mount puts the session's notifier once the session is created.
    pub(crate) fn notifier_slot(&self) -> Arc<OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// What the mount table needs to wait for this mount's dirty pages.
    pub(crate) fn write_back(&self) -> WriteBack {
        WriteBack {
            handles: self.handles.clone(),
            notifier: self.notifier.clone(),
        }
    }

    /// Make the kernel fetch `ino`'s attributes again.
    pub(crate) fn invalidate_attributes(&self, ino: u64) {
        if let Some(n) = self.notifier.get() {
            // Offset -1: attributes only, the page cache stays.
            if let Err(e) = n.inval_inode(INodeNo(ino), -1, 0) {
                log::debug!("inode {ino}: attribute invalidation: {e}");
            }
        }
    }

    /// What fallocate and copy_file_range do to a file's times. With the writeback
    /// cache the kernel stamps them itself (`file_modified`) and sends them in a
    /// SETATTR; a stamp of ours, later than the kernel's, would show up as a
    /// different mtime once the kernel forgets the inode.
    fn content_times(&self) -> WriteTimes {
        if self.kernel_keeps_times {
            WriteTimes::Keep
        } else {
            WriteTimes::Stamp
        }
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// Reply with an entry; the kernel then holds a reference until FORGET.
    fn entry(&self, reply: ReplyEntry, r: FsResult<Attr>) {
        match r {
            Ok(a) => {
                self.lookups.add(&self.pool, self.branch, a.ino);
                reply.entry(&TTL, &file_attr(&a), Generation(0))
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn empty(reply: ReplyEmpty, r: FsResult<()>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn xattr(reply: ReplyXattr, size: u32, r: FsResult<Vec<u8>>) {
        match r {
            Ok(v) if size == 0 => match u32::try_from(v.len()) {
                Ok(n) => reply.size(n),
                Err(_) => reply.error(Errno::E2BIG),
            },
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Durability for fsync/fsyncdir/destroy: a group commit that returns at once
    /// when a finished commit already covers every earlier change.
    fn commit(&self) -> FsResult<()> {
        self.pool.sync().map_err(|e| {
            log::error!("commit failed: {e}");
            FsError::Posix(e.errno())
        })
    }
}

impl Filesystem for CowFs {
    fn init(&mut self, _req: &Request, cfg: &mut KernelConfig) -> io::Result<()> {
        self.kernel_keeps_times = kernel::negotiate(cfg, self.read_only);
        Ok(())
    }

    fn destroy(&mut self) {
        self.handles.release_all(&self.pool, self.branch);
        self.lookups.forget_all(&self.pool, self.branch);
        if let Err(e) = self.commit() {
            log::error!("final commit of the mount failed: {e}");
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.lookups.forget(&self.pool, self.branch, ino.0, nlookup);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.pool.lookup(self.branch, parent.0, name.as_bytes()) {
            Err(e) if e.errno() == libc::ENOENT => {
                reply.entry(&TTL, &negative_entry(), Generation(0))
            }
            r => self.entry(reply, r),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.pool.getattr(self.branch, ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        let mut s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_or_now),
            mtime: mtime.map(time_or_now),
            ctime: ctime.map(from_request_time),
        };
        if let Err(e) = self.drop_privileges_for_setattr(ino.0, &mut s, Caller::of(req)) {
            return reply.error(errno(&e));
        }
        let r = self
            .pool
            .setattr(self.branch, ino.0, &s)
            .and_then(|a| match mode {
                Some(m) => acl::after_chmod(&self.pool, self.branch, ino.0, m).map(|()| a),
                None => Ok(a),
            });
        match r {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.pool.readlink(self.branch, ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        self.entry(
            reply,
            self.create_node(req, parent.0, name, mode, umask, u64::from(rdev)),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        let mode = libc::S_IFDIR | (mode & 0o7777);
        self.entry(reply, self.create_node(req, parent.0, name, mode, umask, 0));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        Self::empty(
            reply,
            self.pool.unlink(self.branch, parent.0, name.as_bytes()),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        Self::empty(
            reply,
            self.pool.rmdir(self.branch, parent.0, name.as_bytes()),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        let r = self
            .new_owner(req, parent.0, libc::S_IFLNK)
            .and_then(|(owner, _)| {
                self.pool.symlink(
                    self.branch,
                    parent.0,
                    link_name.as_bytes(),
                    target.as_os_str().as_bytes(),
                    owner,
                )
            });
        self.entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let r = self.pool.rename(
            self.branch,
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            flags.bits(),
        );
        Self::empty(reply, r);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        let r = self
            .pool
            .link(self.branch, ino.0, newparent.0, newname.as_bytes());
        self.entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY && self.read_only {
            return reply.error(Errno::EROFS);
        }
        if let Err(e) = self.pool.getattr(self.branch, ino.0) {
            return reply.error(errno(&e));
        }
        let fh = self.handles.open(&self.pool, self.branch, ino.0);
        reply.opened(FileHandle(fh), OPEN_FLAGS);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        let mode = libc::S_IFREG | (mode & 0o7777);
        match self.create_node(req, parent.0, name, mode, umask, 0) {
            Ok(a) => {
                let fh = self.handles.open(&self.pool, self.branch, a.ino);
                self.lookups.add(&self.pool, self.branch, a.ino);
                reply.created(
                    &TTL,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(fh),
                    OPEN_FLAGS,
                );
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self
            .pool
            .read_file_bytes(self.branch, ino.0, offset, size as usize)
        {
            Ok(d) => reply.data(d.as_slice()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            if let Err(e) = self.drop_privileges_for_write(ino.0, Caller::of(req)) {
                return reply.error(errno(&e));
            }
        }
        // Pages written back from the page cache keep the file's times: the kernel
        // keeps those and sends them itself (SETATTR) when it changes them. Other
        // writes (O_DIRECT, write-through) are stamped here.
        let times = if write_flags.contains(WriteFlags::FUSE_WRITE_CACHE) {
            WriteTimes::Keep
        } else {
            WriteTimes::Stamp
        };
        // The kernel resolves O_APPEND offsets itself; `offset` is final.
        match self
            .pool
            .write_file_with(self.branch, ino.0, offset, data, times)
        {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Data reaches the engine with each write (the kernel writes a file's dirty
        // pages back before it would send FLUSH, and reports their errors to close
        // itself); durability is fsync's job. ENOSYS tells the kernel never to send
        // FLUSH again, which saves a round trip on every close(2).
        reply.error(Errno::ENOSYS);
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        // A file here is always ready, as on a disk file system. ENOSYS tells the
        // kernel never to send POLL again and to answer every poll(2) with the
        // default mask (readable and writable) itself. fuser's default does the
        // same but logs a warning per mount, which reads like a fault (MariaDB
        // polls its files).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.release(&self.pool, self.branch, fh.0);
        reply.ok();
    }

    /// No ioctls are supported. ENOTTY is the answer a regular file gives to
    /// terminal ioctls: Python's open() asks TCGETS (isatty) of every file it
    /// opens, and fuser's default would log a warning for each.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // The kernel has written back this file's dirty pages (and sent the times
        // it kept) before asking: an intent log record or a commit makes them
        // durable before we answer.
        let r = self.pool.sync_file(self.branch, ino.0).map_err(|e| {
            log::error!("fsync failed: {e}");
            FsError::Posix(e.errno())
        });
        Self::empty(reply, r);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.pool.getattr(self.branch, ino.0) {
            Ok(a) if a.is_dir() => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.pool.readdir(self.branch, ino.0, offset, READDIR_BATCH) {
            Ok(entries) => {
                for e in entries {
                    let name = OsStr::from_bytes(&e.name);
                    if reply.add(INodeNo(e.ino), e.offset, file_type(e.ftype), name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.pool.readdir(self.branch, ino.0, offset, READDIR_BATCH) {
            Ok(entries) => {
                for e in entries {
                    // An entry removed since the listing is skipped.
                    let Ok(a) = self.pool.getattr(self.branch, e.ino) else {
                        continue;
                    };
                    let name = OsStr::from_bytes(&e.name);
                    let full = reply.add(
                        INodeNo(e.ino),
                        e.offset,
                        name,
                        &TTL,
                        &file_attr(&a),
                        Generation(0),
                    );
                    if full {
                        break;
                    }
                    // The kernel takes a reference on every entry but "." and "..".
                    if e.name != b"." && e.name != b".." {
                        self.lookups.add(&self.pool, self.branch, e.ino);
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        Self::empty(reply, self.commit());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.pool.statfs_of(self.branch);
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        let Ok(flags) = u32::try_from(flags) else {
            return reply.error(Errno::EINVAL);
        };
        let name = name.as_bytes();
        let r = if name == acl::ACCESS || name == acl::DEFAULT {
            let keeps = |file_gid| keeps_setgid(req.pid(), req.uid(), req.gid(), file_gid);
            acl::set(&self.pool, self.branch, ino.0, name, value, flags, keeps)
        } else {
            self.pool.setxattr(self.branch, ino.0, name, value, flags)
        };
        Self::empty(reply, r);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let r = self.pool.getxattr(self.branch, ino.0, name.as_bytes());
        Self::xattr(reply, size, r);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let r = self.pool.listxattr(self.branch, ino.0);
        let r = r.map(|list| names_visible_to(req.pid(), req.uid(), list));
        Self::xattr(reply, size, r);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        let name = name.as_bytes();
        let r = if name == acl::ACCESS || name == acl::DEFAULT {
            acl::remove(&self.pool, self.branch, ino.0, name)
        } else {
            self.pool.removexattr(self.branch, ino.0, name)
        };
        Self::empty(reply, r);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // With default_permissions the kernel checks modes; this only answers
        // whether the inode exists and, for W_OK, whether the mount is writable.
        match self.pool.getattr(self.branch, ino.0) {
            Ok(_) if mask.contains(AccessFlags::W_OK) && self.read_only => {
                reply.error(Errno::EROFS)
            }
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        if let Err(e) = self.drop_privileges_for_change(Caller::of(req), ino.0) {
            return reply.error(errno(&e));
        }
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        const ZERO_KEEP: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        let (b, ino, times) = (self.branch, ino.0, self.content_times());
        let r = match mode {
            0 => self
                .pool
                .fallocate_with(b, ino, offset, length, false, times),
            libc::FALLOC_FL_KEEP_SIZE => self
                .pool
                .fallocate_with(b, ino, offset, length, true, times),
            PUNCH => self.pool.punch_hole_with(b, ino, offset, length, times),
            libc::FALLOC_FL_ZERO_RANGE => self
                .pool
                .zero_range_with(b, ino, offset, length, false, times),
            ZERO_KEEP => self
                .pool
                .zero_range_with(b, ino, offset, length, true, times),
            _ => Err(FsError::Posix(libc::EOPNOTSUPP)),
        };
        Self::empty(reply, r);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        // With the writeback cache the kernel holds written pages that have not
        // reached us yet, and it sends LSEEK without writing them back first: our
        // extents would report fresh data as a hole, and sparse-aware copies would
        // skip it. ENOSYS makes the kernel answer from its own size for the rest of
        // the mount (all data, one hole at the end). A read-only mount has no
        // writeback cache, so the engine's extents are the whole truth there.
        if !self.read_only {
            return reply.error(Errno::ENOSYS);
        }
        let whence = match whence {
            libc::SEEK_DATA => SeekWhence::Data,
            libc::SEEK_HOLE => SeekWhence::Hole,
            // SEEK_SET, SEEK_CUR and SEEK_END are resolved by the kernel.
            _ => return reply.error(Errno::EINVAL),
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        match self.pool.seek(self.branch, ino.0, offset, whence) {
            Ok(o) => match i64::try_from(o) {
                Ok(o) => reply.offset(o),
                Err(_) => reply.error(Errno::EOVERFLOW),
            },
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        if let Err(e) = self.drop_privileges_for_change(Caller::of(req), ino_out.0) {
            return reply.error(errno(&e));
        }
        // Extents are shared, not copied: O(1) per extent.
        let range = (
            ino_in.0,
            offset_in,
            ino_out.0,
            offset_out,
            len.min(MAX_CLONE),
        );
        match self
            .pool
            .clone_range_with(self.branch, range, self.content_times())
        {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

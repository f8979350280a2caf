"""A passthrough FUSE file system that a test can freeze: ``SIGSTOP`` its process
and every call on the mount blocks in the kernel, as on a hung NFS mount;
``SIGCONT`` and they all complete.

    python hangfs.py BACKING_DIR MOUNTPOINT     # foreground; fusermount -u -z to end

fusepy over libfuse2 (scripts/bootstrap.sh installs ``fuse``/``libfuse2``).
"""
from __future__ import annotations

import errno
import os
import sys

from fuse import FUSE, FuseOSError, Operations


class Passthrough(Operations):
    """Every operation forwarded to the same path under ``root``."""

    def __init__(self, root: str):
        self.root = os.path.realpath(root)

    def _p(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def __call__(self, op, path, *args):
        try:
            return super().__call__(op, self._p(path) if isinstance(path, str) else path, *args)
        except OSError as exc:
            raise FuseOSError(exc.errno or errno.EIO) from None

    # metadata
    def access(self, path, mode):
        if not os.access(path, mode):
            raise FuseOSError(errno.EACCES)

    def getattr(self, path, fh=None):
        st = os.lstat(path)
        return {k: getattr(st, k) for k in ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime",
                                            "st_nlink", "st_size", "st_uid", "st_blocks")}

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(path)]

    def readlink(self, path):
        return os.readlink(path)

    def statfs(self, path):
        sv = os.statvfs(path)
        return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                                            "f_files", "f_flag", "f_frsize", "f_namemax")}

    def chmod(self, path, mode):
        os.chmod(path, mode)

    def chown(self, path, uid, gid):
        os.lchown(path, uid, gid)

    def utimens(self, path, times=None):
        os.utime(path, times, follow_symlinks=False)

    # names
    def mkdir(self, path, mode):
        os.mkdir(path, mode)

    def rmdir(self, path):
        os.rmdir(path)

    def unlink(self, path):
        os.unlink(path)

    def rename(self, old, new):
        os.rename(old, self._p(new))

    def symlink(self, name, target):
        os.symlink(target, name)

    def link(self, target, name):
        os.link(self._p(name), target)

    def mknod(self, path, mode, dev):
        os.mknod(path, mode, dev)

    # data
    def open(self, path, flags):
        return os.open(path, flags)

    def create(self, path, mode, fi=None):
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path, length, offset, fh):
        return os.pread(fh, length, offset)

    def write(self, path, buf, offset, fh):
        return os.pwrite(fh, buf, offset)

    def truncate(self, path, length, fh=None):
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(path, length)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)

    def fsync(self, path, datasync, fh):
        (os.fdatasync if datasync else os.fsync)(fh)

    def fallocate(self, path, mode, offset, length, fh):
        os.posix_fallocate(fh, offset, length)


def main() -> None:
    backing, mountpoint = sys.argv[1:3]
    # no kernel caching of names or attributes: every stat reaches this process
    # (so a frozen server blocks every call at once, not after a cache expires)
    FUSE(Passthrough(backing), mountpoint, foreground=True, nothreads=False, allow_other=True,
         default_permissions=False, attr_timeout=0, entry_timeout=0, negative_timeout=0)


if __name__ == "__main__":
    main()

// Package hangfs is a file system for tests whose files never finish a
// read.
package hangfs

import (
	"context"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ipnix/ipnix/internal/testmounts"
)

// Dir mounts a file system on a new directory where every name is
// a 16-byte regular file whose reads never return until the test ends:
// what a disk or a network file system that stopped answering looks like
// to a reader, and what the owner of a directory can put there with a
// symlink to a FUSE mount of theirs. It skips the test without root or
// /dev/fuse, and unmounts in cleanup, after letting the reads fail.
func Dir(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for FUSE")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
	mnt := t.TempDir()
	release := make(chan struct{})
	srv, err := fusefs.Mount(mnt, &hangRoot{release: release}, &fusefs.Options{MountOptions: fuse.MountOptions{Name: "ipnixhang"}})
	if err != nil {
		t.Skipf("mount: %v", err)
	}
	untrack := testmounts.Track(mnt)
	var once sync.Once
	t.Cleanup(func() {
		once.Do(func() { close(release) })
		// A reader let go may still hold its file open for a moment
		// (EBUSY); past that, the mount is detached rather than left.
		var err error
		for range 50 {
			if err = srv.Unmount(); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("unmount: %v", err)
			_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
		untrack()
	})
	return mnt
}

type hangRoot struct {
	fusefs.Inode
	release chan struct{}
}

type hangFile struct {
	fusefs.Inode
	release chan struct{}
}

func (r *hangRoot) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	out.Attr.Mode = syscall.S_IFREG | 0o644
	out.Attr.Size = 16
	return r.NewInode(ctx, &hangFile{release: r.release}, fusefs.StableAttr{Mode: syscall.S_IFREG}), 0
}

func (f *hangFile) Getattr(ctx context.Context, fh fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Attr.Mode = syscall.S_IFREG | 0o644
	out.Attr.Size = 16
	return 0
}

func (f *hangFile) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (f *hangFile) Read(ctx context.Context, fh fusefs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	<-f.release
	return fuse.ReadResultData(nil), syscall.EIO
}

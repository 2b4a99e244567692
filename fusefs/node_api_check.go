package fusefs

import "github.com/hanwen/go-fuse/v2/fs"

// The operations each node type supports; anything else gets go-fuse's
// default (ENOTSUP or EROFS for writes).
var (
	_ fs.NodeLookuper  = (*rootNode)(nil)
	_ fs.NodeReaddirer = (*rootNode)(nil)
	_ fs.NodeGetattrer = (*rootNode)(nil)
	_ fs.NodeStatfser  = (*rootNode)(nil)

	_ fs.NodeGetattrer      = (*dirNode)(nil)
	_ fs.NodeLookuper       = (*dirNode)(nil)
	_ fs.NodeReaddirer      = (*dirNode)(nil)
	_ fs.NodeOpendirHandler = (*dirNode)(nil)

	_ fs.NodeGetattrer = (*fileNode)(nil)
	_ fs.NodeOpener    = (*fileNode)(nil)
	_ fs.NodeReader    = (*fileNode)(nil)
	_ fs.NodeFlusher   = (*fileNode)(nil)

	_ fs.FileReleaser        = (*fileHandle)(nil)
	_ fs.FilePassthroughFder = (*fileHandle)(nil)

	_ fs.NodeGetattrer  = (*symlinkNode)(nil)
	_ fs.NodeReadlinker = (*symlinkNode)(nil)

	_ fs.NodeGetattrer = (*emptyDir)(nil)
	_ fs.NodeReaddirer = (*emptyDir)(nil)
)

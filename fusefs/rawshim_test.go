package fusefs

import (
	"slices"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// readProbe is the bridge under the shim: it records whether the shim
// marked each read it was given, and can serve another request while a
// read is in flight.
type readProbe struct {
	fuse.RawFileSystem
	execs  *execReads
	marked []bool
	during func()
}

func (p *readProbe) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	// The bridge hands the node a fuse.Context whose Done is cancel.
	p.marked = append(p.marked, p.execs.is(&fuse.Context{Cancel: cancel}))
	if during := p.during; during != nil {
		p.during = nil
		during()
	}
	return fuse.ReadResultData(nil), fuse.OK
}

// Reads of a file being executed (__FMODE_EXEC among the flags FUSE sends
// in each READ) are marked for the node, and only while they last; other
// reads, in flight at the same time or not, are not.
func TestShimMarksExecReads(t *testing.T) {
	var execs execReads
	probe := &readProbe{RawFileSystem: fuse.NewDefaultRawFileSystem(), execs: &execs}
	shim := &rawShim{RawFileSystem: probe, execs: &execs}
	read := func(flags uint32) <-chan struct{} {
		cancel := make(chan struct{}) // each request has its own
		shim.Read(cancel, &fuse.ReadIn{Flags: flags}, nil)
		return cancel
	}
	const largefile, nonblock = 0x8000, 0x800
	done := read(fmodeExec | largefile) // as the kernel opens a program
	read(largefile)
	read(largefile | nonblock)
	if want := []bool{true, false, false}; !slices.Equal(probe.marked, want) {
		t.Fatalf("marked %v, want %v", probe.marked, want)
	}
	if execs.is(&fuse.Context{Cancel: done}) || execs.n.Load() != 0 {
		t.Fatalf("a mark outlived its read: %d held", execs.n.Load())
	}

	probe.marked = nil
	probe.during = func() { read(largefile) }
	read(fmodeExec)
	if want := []bool{true, false}; !slices.Equal(probe.marked, want) {
		t.Fatalf("an exec read with a plain read during it: marked %v, want %v", probe.marked, want)
	}
}

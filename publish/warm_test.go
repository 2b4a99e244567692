package publish

import (
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// The walk waits while it is a window ahead of the NAR written, and stop
// ends it even then.
func TestWarmAheadStops(t *testing.T) {
	root := t.TempDir()
	for _, n := range []string{"a", "b", "c"} {
		if err := os.WriteFile(filepath.Join(root, n), make([]byte, 1000), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	var progress atomic.Int64
	stop := warmAhead(root, &progress, 0) // no room past the first file
	done := make(chan struct{})
	go func() { stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("stop did not end a waiting walk")
	}
	// With progress ahead of it, the walk runs to the end by itself.
	progress.Store(1 << 40)
	stop = warmAhead(root, &progress, 0)
	stop()
}

// Package testmounts detaches the FUSE mounts a test process serves itself
// before the test binary's -timeout ends it. The timeout panics and runs no
// cleanup, and a process that dies serving a mount leaves the mount behind,
// answering ENOTCONN, for whoever comes next (a later run, CI's check for
// leftover mounts). Mounts served by child processes need none of this:
// those children die with their parent (runenv.Start) and unmount on the
// way out.
package testmounts

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// started is about when the test binary's alarm was set: package
// initialisation runs just before testing.M.Run, unless a TestMain does
// long work first (the watchdog then fires that much early; no package
// that tracks mounts has one).
var started = time.Now()

// margin is how long before the timeout the mounts are detached.
const margin = 3 * time.Second

var (
	mu   sync.Mutex
	dirs = map[string]bool{}
	arm  sync.Once
)

// Track records dir, a FUSE mount this process serves, until the returned
// function is called (once the test has unmounted it). The first call arms
// the watchdog, if the process is a test binary with a timeout.
func Track(dir string) (untrack func()) {
	arm.Do(func() {
		if d := timeout(); d > 0 {
			time.AfterFunc(time.Until(started.Add(d-min(margin, d/10))), func() { DetachAll() })
		}
	})
	mu.Lock()
	dirs[dir] = true
	mu.Unlock()
	return func() {
		mu.Lock()
		delete(dirs, dir)
		mu.Unlock()
	}
}

// timeout is the test binary's -test.timeout, or 0.
func timeout() time.Duration {
	f := flag.Lookup("test.timeout")
	if f == nil {
		return 0
	}
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return 0
	}
	d, _ := g.Get().(time.Duration)
	return d
}

// DetachAll detaches every tracked mount (lazily: requests in flight
// finish, the name goes at once) and returns how many it detached.
func DetachAll() int {
	mu.Lock()
	defer mu.Unlock()
	n := 0
	for dir := range dirs {
		fmt.Fprintf(os.Stderr, "testmounts: the test binary's timeout is near: detaching %s\n", dir)
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			if out, err := exec.Command("fusermount3", "-u", "-z", dir).CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "testmounts: %s: %v: %s\n", dir, err, out)
				continue
			}
		}
		delete(dirs, dir)
		n++
	}
	return n
}

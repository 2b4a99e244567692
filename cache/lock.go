package cache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// lockName is the file whose flock(2) coordinates the users of a store
// directory: every open store (a mount, a server, a prefetch) holds it
// shared, GC exclusively. Locks go with the process, so a killed one
// leaves none behind.
const lockName = "LOCK"

// ErrInUse is returned (wrapped) by GC while a store is open on the
// directory.
var ErrInUse = errors.New("cache directory in use")

// lockWait is how long opening a store waits for a GC to end.
const lockWait = 30 * time.Second

// lockShared takes dir's lock shared, waiting up to lockWait while a GC
// holds it.
func lockShared(dir string) (*os.File, error) {
	f, err := openLock(dir)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(lockWait)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("cache directory %s is being garbage-collected (ipnix cache gc holds %s); gave up after %v", dir, f.Name(), lockWait)
			}
			return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lockExclusive takes dir's lock exclusively, or fails at once wrapping
// ErrInUse.
func lockExclusive(dir string) (*os.File, error) {
	f, err := openLock(dir)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is open in a running ipnix mount, serve or prefetch, or another gc runs (it holds %s); stop it, or run this when it has ended", ErrInUse, dir, f.Name())
		}
		return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
	}
	return f, nil
}

func openLock(dir string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, lockName), os.O_RDONLY|os.O_CREATE|unix.O_CLOEXEC, 0o600)
}

// InUse reports whether a store is open on dir now (a mount, a server or
// a prefetch holds its lock). It takes the lock for an instant: a store
// opening meanwhile waits for it.
func InUse(dir string) bool {
	f, err := lockExclusive(dir)
	if err != nil {
		return errors.Is(err, ErrInUse)
	}
	f.Close()
	return false
}

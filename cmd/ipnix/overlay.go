package main

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/ipnix/ipnix/narindex"
)

// overlay puts a mount's store paths under a Nix store directory that
// stays what it was: an overlayfs on the store directory itself, with the
// store as its upper layer (what Nix builds or copies goes there, as
// before) and the ipnix mount as its lower layer; the closures registered
// in the Nix database with `nix-store --load-db` (the files are not read);
// and GC roots for them, so that Nix's garbage collector keeps them.
// stop undoes it in reverse order: GC roots, overlay, then `nix-store
// --verify` drops from the database the registered paths that are gone.
type overlay struct {
	store, lower, work string
	gcroots            string   // directory of the GC root links
	roots              []string // GC root links made
	log                *slog.Logger
}

func startOverlay(store, lower string, closure []*narindex.Resolved, roots []string, log *slog.Logger) (*overlay, error) {
	store, err := filepath.Abs(store)
	if err != nil {
		return nil, err
	}
	lower, err = filepath.Abs(lower)
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("--overlay needs root (it mounts an overlay and writes the Nix database)")
	}
	nixStore, err := exec.LookPath("nix-store")
	if err != nil {
		return nil, fmt.Errorf("--overlay: no nix-store on PATH to register the closures with: %w", err)
	}
	// An overlay of ours left by a mount that was killed: its lower layer
	// is dead, and a new one would stack on it.
	if stale, err := staleOverlay(store, lower); err == nil && stale {
		log.Warn("removing the overlay a killed ipnix left on the store", "dir", store)
		syscall.Unmount(store, syscall.MNT_DETACH)
	}
	// The work directory must be on the same mount as the upper layer.
	o := &overlay{store: store, lower: lower, work: filepath.Join(filepath.Dir(store), ".ipnix-overlay-work"), log: log}
	if err := os.RemoveAll(o.work); err != nil {
		return nil, fmt.Errorf("--overlay: clearing %s: %w", o.work, err)
	}
	if err := os.Mkdir(o.work, 0o700); err != nil {
		return nil, fmt.Errorf("--overlay: %w", err)
	}
	opts := "lowerdir=" + lower + ",upperdir=" + store + ",workdir=" + o.work
	if err := syscall.Mount("overlay", store, "overlay", 0, opts); err != nil {
		os.RemoveAll(o.work)
		return nil, fmt.Errorf("--overlay: mounting an overlay on %s (%s): %w (the work directory must be on the same filesystem mount as the store)", store, opts, err)
	}
	var db bytes.Buffer
	for _, p := range closure {
		writeLoadDB(&db, p.Info)
	}
	cmd := exec.Command(nixStore, "--load-db")
	cmd.Stdin = &db
	if out, err := cmd.CombinedOutput(); err != nil {
		o.unmount()
		return nil, fmt.Errorf("--overlay: nix-store --load-db: %v: %s", err, strings.TrimSpace(string(out)))
	}
	o.gcroots = filepath.Join(nixStateDir(), "gcroots", "ipnix")
	if err := os.MkdirAll(o.gcroots, 0o755); err != nil {
		log.Warn("no GC roots for the registered closures", "dir", o.gcroots, "err", err)
	}
	for _, base := range roots {
		link := filepath.Join(o.gcroots, base)
		os.Remove(link)
		if err := os.Symlink(filepath.Join(narindex.StoreDir, base), link); err != nil {
			log.Warn("no GC root for a registered closure", "path", base, "err", err)
			continue
		}
		o.roots = append(o.roots, link)
	}
	return o, nil
}

// nixStateDir is Nix's state directory (GC roots, database).
func nixStateDir() string {
	if d := os.Getenv("NIX_STATE_DIR"); d != "" {
		return d
	}
	return "/nix/var/nix"
}

func (o *overlay) unmount() {
	if err := syscall.Unmount(o.store, 0); err != nil {
		o.log.Warn("overlay busy; detaching it lazily", "dir", o.store, "err", err)
		syscall.Unmount(o.store, syscall.MNT_DETACH)
	}
	os.RemoveAll(o.work)
}

// stop removes the GC roots, the overlay and then, from the Nix database,
// the registered paths that are gone with it.
func (o *overlay) stop() {
	for _, l := range o.roots {
		os.Remove(l)
	}
	os.Remove(o.gcroots) // only when empty: other roots stay
	o.unmount()
	if nixStore, err := exec.LookPath("nix-store"); err == nil {
		out, err := exec.Command(nixStore, "--verify").CombinedOutput()
		if err != nil {
			o.log.Warn("nix-store --verify after removing the overlay", "err", err, "output", strings.TrimSpace(string(out)))
		}
	}
}

// staleOverlay reports whether the top mount at store is an overlay whose
// lower layer is lower (one this command made).
func staleOverlay(store, lower string) (bool, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	found := false
	for line := range strings.Lines(string(data)) {
		// id parent major:minor root mountpoint opts ... - fstype source superopts
		f := strings.Fields(line)
		if len(f) < 10 || f[4] != store {
			continue
		}
		found = false // the last match is on top
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				found = i+3 < len(f) && f[i+1] == "overlay" &&
					strings.Contains(","+f[i+3]+",", ",lowerdir="+lower+",")
				break
			}
		}
	}
	return found, nil
}

package publish

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ipnix/ipnix/fetch/fetchtest"
)

// A publish removes the temporary files an earlier, killed publish left in
// the cache directory and its nar/ directory, once they are stale, and
// nothing else: not a fresh temporary file (a publish running beside it),
// not a NAR file, not a directory or a symlink named like one.
func TestNewRemovesStaleTemps(t *testing.T) {
	to := t.TempDir()
	outside := filepath.Join(t.TempDir(), "outside")
	old := time.Now().Add(-staleTempAge - time.Hour)
	write := func(p string, age time.Time) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("partial"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, age, age); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(to, "nar", ".tmp-123.nar"), old)
	write(filepath.Join(to, ".tmp-abc.narinfo-456"), old)
	write(filepath.Join(to, "nar", ".tmp-789.nar"), time.Now())
	write(filepath.Join(to, "nar", "x.nar"), old)
	write(outside, old)
	if err := os.Symlink(outside, filepath.Join(to, "nar", ".tmp-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(to, "nar", ".tmp-dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(to, "nar", ".tmp-dir"), old, old); err != nil {
		t.Fatal(err)
	}

	if _, err := New(storeAdder{fetchtest.NewStore()}, Options{To: to}); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"nar/.tmp-123.nar", ".tmp-abc.narinfo-456"} {
		if _, err := os.Lstat(filepath.Join(to, gone)); !os.IsNotExist(err) {
			t.Errorf("%s: still there (%v)", gone, err)
		}
	}
	for _, kept := range []string{"nar/.tmp-789.nar", "nar/x.nar", "nar/.tmp-link", "nar/.tmp-dir"} {
		if _, err := os.Lstat(filepath.Join(to, kept)); err != nil {
			t.Errorf("%s: %v", kept, err)
		}
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("the symlink's target: %v", err)
	}
}

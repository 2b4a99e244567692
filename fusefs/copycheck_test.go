package fusefs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The manifest of local copies is read from disk: any content is refused
// or parsed, never a panic, and what parses is canonical.
func FuzzReadManifest(f *testing.F) {
	f.Add("0 262144 " + strings.Repeat("ab", 32) + "\n")
	f.Add("12 3 x\n")
	f.Add("")
	f.Add("-1 5 " + strings.Repeat("0", 64) + "\n")
	f.Fuzz(func(t *testing.T, s string) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "manifest"), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		m, err := readManifest(dir)
		if err != nil {
			return
		}
		for name, e := range m {
			if e.size < 0 || len(e.sha) != 64 || strings.ContainsAny(name, "/\x00") || name == "" {
				t.Fatalf("accepted entry %q %+v", name, e)
			}
		}
	})
}

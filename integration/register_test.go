package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ipnix/ipnix/narindex"
)

// dbRecord is one path of nix-store --dump-db / --load-db text.
type dbRecord struct {
	path, hash, size, deriver string
	refs                      []string
}

func parseDB(t *testing.T, text string, hashPrefix string) []dbRecord {
	t.Helper()
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	var out []dbRecord
	for i := 0; i < len(lines); {
		if i+5 > len(lines) {
			t.Fatalf("truncated record at line %d of:\n%s", i+1, text)
		}
		h, err := narindex.ParseHash(hashPrefix + lines[i+1])
		if err != nil {
			t.Fatalf("line %d: %v", i+2, err)
		}
		r := dbRecord{path: lines[i], hash: h.String(), size: lines[i+2], deriver: lines[i+3]}
		var n int
		for _, c := range lines[i+4] {
			n = n*10 + int(c-'0')
		}
		r.refs = append(r.refs, lines[i+5:i+5+n]...)
		slices.Sort(r.refs)
		out = append(out, r)
		i += 5 + n
	}
	return out
}

// `ipnix register` writes for a published closure what Nix's own
// `nix-store --dump-db` writes for it (same paths, hashes, sizes,
// derivers and references), references first, and Nix loads it: in a
// scratch store, the registered paths are valid with their references.
func TestRegisterMatchesNixDumpDB(t *testing.T) {
	p := publishClosure(t)
	outFile := filepath.Join(t.TempDir(), "db")
	out, err := ipnixCmd(t, nil, "register", "--substituter", "file://"+p.cache, "--trusted-public-key", p.pub, "-O", outFile, p.closure.top)
	if err != nil {
		t.Fatalf("register: %v\n%s", err, out)
	}
	cmd := exec.Command(ipnixBin, "register", "--substituter", "file://"+p.cache, "--trusted-public-key", p.pub, p.closure.top)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("register: %v\n%s", err, stderr.String())
	}
	if b, err := os.ReadFile(outFile); err != nil || !bytes.Equal(b, stdout.Bytes()) {
		t.Fatalf("--output wrote something else than standard output: %v", err)
	}
	got := parseDB(t, stdout.String(), "")
	dump, err := exec.Command("nix-store", append([]string{"--dump-db"}, p.closure.paths...)...).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := parseDB(t, string(dump), "sha256:")
	byPath := func(rs []dbRecord) map[string]dbRecord {
		m := map[string]dbRecord{}
		for _, r := range rs {
			m[r.path] = r
		}
		return m
	}
	g, w := byPath(got), byPath(want)
	if len(g) != len(w) || len(got) != len(w) {
		t.Fatalf("register wrote %d records (%d paths), nix-store --dump-db %d", len(got), len(g), len(w))
	}
	for path, wr := range w {
		gr, ok := g[path]
		if !ok || gr.hash != wr.hash || gr.size != wr.size || gr.deriver != wr.deriver || !slices.Equal(gr.refs, wr.refs) {
			t.Errorf("%s:\nregister %+v\nnix      %+v", path, gr, wr)
		}
	}
	seen := map[string]bool{}
	for _, r := range got {
		for _, ref := range r.refs {
			if ref != r.path && !seen[ref] {
				t.Errorf("%s written before its reference %s", r.path, ref)
			}
		}
		seen[r.path] = true
	}

	// Nix loads it (into a scratch store: the machine's database is not
	// touched), and the paths are valid with their references.
	scratch := t.TempDir()
	load := exec.Command("nix-store", "--store", scratch, "--load-db")
	load.Stdin = bytes.NewReader(stdout.Bytes())
	if o, err := load.CombinedOutput(); err != nil {
		t.Fatalf("nix-store --load-db: %v\n%s", err, o)
	}
	refs, err := exec.Command("nix-store", "--store", scratch, "-q", "--references", p.closure.top).Output()
	if err != nil {
		t.Fatal(err)
	}
	if wantRefs := w[p.closure.top].refs; !slices.Equal(sortedFields(string(refs)), wantRefs) {
		t.Fatalf("references in the scratch store: %q, want %q", refs, wantRefs)
	}

	// A bad key is refused, naming the flag and not echoing the key.
	if out, err := ipnixCmd(t, nil, "register", "--substituter", "file://"+p.cache, "--trusted-public-key", "k:not-base64", p.closure.top); err == nil || !strings.Contains(out, "--trusted-public-key") || strings.Contains(out, "not-base64") {
		t.Fatalf("bad key: %v\n%s", err, out)
	}
}

func sortedFields(s string) []string {
	f := strings.Fields(s)
	slices.Sort(f)
	return f
}

package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"context"
)

// An existing binary cache written by real Nix (nix copy, signed, in each
// compression) is republished into IPFS keeping its signatures, and mounts.
func TestPublishFromNixCache(t *testing.T) {
	requireReal(t)
	k := startKubo(t)
	c := buildClosure(t)
	sec, pub := genKey(t, "nix-made-1")
	nix := func(args ...string) {
		t.Helper()
		all := append([]string{"--extra-experimental-features", "nix-command"}, args...)
		if out, err := exec.Command("nix", all...).CombinedOutput(); err != nil {
			t.Fatalf("nix %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	nix("store", "sign", "--key-file", sec, "--recursive", c.top)
	for _, comp := range []string{"xz", "zstd", "bzip2", "none"} {
		t.Run(comp, func(t *testing.T) {
			from, to := t.TempDir(), t.TempDir()
			nix("copy", "--to", "file://"+from+"?compression="+comp, c.top)
			out, err := ipnixCmd(t, nil, "publish", "--api", k.api, "--from", "file://"+from, "--to", to)
			if err != nil {
				t.Fatalf("ipnix publish --from: %v\n%s", err, out)
			}
			// A second run skips everything.
			out, err = ipnixCmd(t, nil, "publish", "--api", k.api, "--from", from, "--to", to)
			if err != nil || !strings.Contains(out, "published 0 store paths") || !strings.Contains(out, "4 already published") {
				t.Fatalf("second publish --from: %v\n%s", err, out)
			}
			m := startMount(t, "--api", k.api, "--substituter", "file://"+to, "--trusted-public-key", pub)
			for _, sp := range c.paths {
				var got string
				withTimeout(t, 2*time.Minute, "nix hash path", func(context.Context) {
					got = nixHashPath(t, filepath.Join(m.dir, filepath.Base(sp)))
				})
				if want := nixHashPath(t, sp); got != want {
					t.Errorf("%s: mounted %s, original %s", sp, got, want)
				}
			}
			// Plain Nix can still use the output as a binary cache: the
			// NAR files are where the narinfos say.
			entries, _ := filepath.Glob(filepath.Join(to, "*.narinfo"))
			if len(entries) != len(c.paths) {
				t.Fatalf("%d narinfos written, want %d", len(entries), len(c.paths))
			}
			if _, err := os.Stat(filepath.Join(to, "nix-cache-info")); err != nil {
				t.Fatal(err)
			}
			// Each NAR file is the source's, byte for byte (copied as it
			// was read when compressed, as a sink of the upload when not).
			for _, e := range entries {
				data, err := os.ReadFile(e)
				must(t, err)
				url := ""
				for line := range strings.Lines(string(data)) {
					if v, ok := strings.CutPrefix(strings.TrimSpace(line), "URL: "); ok {
						url = v
					}
				}
				want, err := os.ReadFile(filepath.Join(from, url))
				must(t, err)
				got, err := os.ReadFile(filepath.Join(to, url))
				must(t, err)
				if url == "" || !bytes.Equal(got, want) {
					t.Errorf("%s: NAR file %q differs from the source's (%d bytes, want %d)", filepath.Base(e), url, len(got), len(want))
				}
			}
		})
	}
}

// Plain Nix substitutes from what ipnix publish wrote.
func TestNixCanUsePublishedCache(t *testing.T) {
	p := publishClosure(t)
	store := t.TempDir()
	// Copy into a fresh chroot store so nothing comes from /nix/store.
	out, err := exec.Command("nix", "--extra-experimental-features", "nix-command",
		"copy", "--from", "file://"+p.cache, "--to", store, "--trusted-public-keys", p.pub, p.closure.top).CombinedOutput()
	if err != nil {
		t.Fatalf("nix copy --from the published cache: %v\n%s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(store, p.closure.top))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(p.closure.top)
	if string(got) != string(want) {
		t.Fatalf("substituted top path differs")
	}
}

package main

import (
	"bytes"
	"testing"

	"github.com/ipnix/ipnix/cache"
)

// The flags reach the filesystem: a flag parsed and then dropped on the
// way (as --background-fetch once was) does nothing while its help text
// says otherwise.
func TestFSConfigFromFlags(t *testing.T) {
	base := []string{"--substituter", "file:///c", "--trusted-public-key", testKey}
	memOnly := func() *blockStack { return &blockStack{mem: cache.NewMemory(nil, 64<<20)} }
	withDisk := func() *blockStack {
		st := memOnly()
		d, err := cache.OpenDisk(t.TempDir(), 1<<30, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		st.disk = d
		return st
	}
	remote := func() *blockStack { st := memOnly(); st.remote = []string{"http://gw.example"}; return st }
	cases := []struct {
		name             string
		args             []string
		st               *blockStack
		walk, exec, read int64
		yields           bool
	}{
		{"defaults", []string{"/mnt"}, memOnly(), 32 << 20, 32 << 20, 0, false},
		{"larger memory cache", []string{"--memory-cache", "1GiB", "/mnt"}, memOnly(), 512 << 20, 64 << 20, 0, false},
		{"small memory cache", []string{"--memory-cache", "1MiB", "/mnt"}, memOnly(), 512 << 10, 512 << 10, 0, false},
		{"no memory cache: no walk", []string{"--memory-cache", "0", "/mnt"}, memOnly(), -1, -1, 0, false},
		{"disk cache: half of it ahead", []string{"--cache-dir", "/c", "/mnt"}, withDisk(), 512 << 20, 32 << 20, 0, false},
		{"no background fetch", []string{"--background-fetch=false", "/mnt"}, memOnly(), -1, 32 << 20, 0, false},
		{"no read-ahead", []string{"--readahead", "0", "/mnt"}, memOnly(), -1, 32 << 20, -1, false},
		{"remote source: the walk yields", []string{"/mnt"}, remote(), 32 << 20, 32 << 20, 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseMountArgs(append(append([]string{}, base...), tc.args...), &bytes.Buffer{})
			if err != nil {
				t.Fatal(err)
			}
			cfg := fsConfig(c, tc.st)
			if cfg.WalkAhead != tc.walk || cfg.ExecAhead != tc.exec {
				t.Errorf("WalkAhead %d, ExecAhead %d; want %d, %d", cfg.WalkAhead, cfg.ExecAhead, tc.walk, tc.exec)
			}
			if tc.read != 0 && cfg.Readahead != tc.read {
				t.Errorf("Readahead %d, want %d", cfg.Readahead, tc.read)
			}
			if (cfg.Demand != nil) != tc.yields {
				t.Errorf("background walk yields to readers: %v, want %v", cfg.Demand != nil, tc.yields)
			}
		})
	}
}

// The mount runs twice the Ps Go would (its reads block in the kernel
// holding one), unless GOMAXPROCS says otherwise.
func TestMountProcs(t *testing.T) {
	if got := mountProcs(false, 2); got != 4 {
		t.Errorf("2 CPUs: %d Ps, want 4", got)
	}
	if got := mountProcs(true, 3); got != 3 {
		t.Errorf("GOMAXPROCS=3 set: %d Ps, want 3", got)
	}
}

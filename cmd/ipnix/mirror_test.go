package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMirrorArgs(t *testing.T) {
	h := "0c0ryf9wpzvv9vr8p6f7yq62zkkn8z7x"
	for _, tc := range []struct {
		name string
		args []string
		want func(c *mirrorConfig) bool
		err  string
	}{
		{"plain", []string{"--from", "/srv/cache", "--trusted-public-key", testKey}, func(c *mirrorConfig) bool {
			return c.From == "/srv/cache" && c.Jobs == 4 && c.StallTimeout == 5*time.Minute && len(c.TrustedKeys) == 1 && len(c.Paths) == 0
		}, ""},
		{"paths and flags", []string{"--from", "https://c", "--no-require-sigs", "-j", "9", "--stall-timeout", "1m", "--api", "/ip4/127.0.0.1/tcp/5001", "/nix/store/" + h + "-a", h},
			func(c *mirrorConfig) bool {
				return c.Jobs == 9 && c.StallTimeout == time.Minute && c.API != "" && len(c.Paths) == 2 && c.NoRequireSigs
			}, ""},
		{"no from", []string{"--trusted-public-key", testKey}, nil, "--from"},
		{"no key", []string{"--from", "/c"}, nil, "--no-require-sigs"},
		{"bad jobs", []string{"--from", "/c", "--no-require-sigs", "-j", "0"}, nil, "--jobs 0"},
		{"bad stall", []string{"--from", "/c", "--no-require-sigs", "--stall-timeout", "0s"}, nil, "--stall-timeout"},
		{"bad path", []string{"--from", "/c", "--no-require-sigs", "/etc/passwd"}, nil, "/etc/passwd"},
	} {
		c, err := parseMirrorArgs(tc.args, io.Discard)
		if tc.err != "" {
			if _, ok := err.(usageError); !ok || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want a usage error naming %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || !tc.want(c) {
			t.Errorf("%s: %+v, %v", tc.name, c, err)
		}
	}
}

func TestMirrorSource(t *testing.T) {
	wd, _ := os.Getwd()
	for in, want := range map[string][2]string{
		"/srv/cache":         {"file:///srv/cache", "/srv/cache"},
		"cache":              {"file://" + filepath.Join(wd, "cache"), filepath.Join(wd, "cache")},
		"file:///srv/cache":  {"file:///srv/cache", "/srv/cache"},
		"https://cache.org/": {"https://cache.org/", ""},
	} {
		u, d, err := mirrorSource(in)
		if err != nil || u != want[0] || d != want[1] {
			t.Errorf("mirrorSource(%q) = %q, %q, %v; want %q", in, u, d, err, want)
		}
	}
}

func TestMirrorCommand(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "nix-cache-info"), []byte("StoreDir: /nix/store\n"), 0o644)
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"ipnix", "mirror", "--help"}, exitOK, "--stall-timeout"},
		{[]string{"ipnix", "mirror", "--help"}, exitOK, "--trusted-public-key"},
		{[]string{"ipnix", "--help"}, exitOK, "ipnix mirror"},
		{[]string{"ipnix", "mirror", "--from", dir}, exitUsage, "--no-require-sigs"},
		{[]string{"ipnix", "mirror", "--from", dir, "--trusted-public-key", "garbage"}, exitUsage, "not a public key"},
		{[]string{"ipnix", "mirror", "--from", "ftp://x", "--no-require-sigs"}, exitUsage, "ftp"},
		{[]string{"ipnix", "mirror", "--from", dir, "--no-require-sigs", "--api", "/ip4/127.0.0.1/tcp/1"}, exitKubo, "does not answer"},
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb)
		all := out.String() + errb.String()
		if code != tc.code || !strings.Contains(all, tc.out) {
			t.Errorf("%v: exit %d (want %d), output %q (want %q)", tc.args, code, tc.code, all, tc.out)
		}
	}
	// Every flag is explained in --help.
	var out bytes.Buffer
	parseMirrorArgs([]string{"--help"}, &out)
	for _, f := range []string{"--from", "--api", "--trusted-public-key", "--no-require-sigs", "--jobs", "--stall-timeout", "--debug"} {
		if !strings.Contains(out.String(), f) {
			t.Errorf("--help does not mention %s", f)
		}
	}
}

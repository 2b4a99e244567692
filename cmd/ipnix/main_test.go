package main

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestMountArgs(t *testing.T) {
	base := []string{"--substituter", "file:///c", "--trusted-public-key", "k:AAAA"}
	cases := []struct {
		name string
		args []string
		want func(c *mountConfig) bool
		err  string
	}{
		{"plain", append(base, "/mnt"), func(c *mountConfig) bool {
			return c.MountPoint == "/mnt" && c.MemoryCache == 64<<20 && !c.NoRequireSigs && c.BlockTimeout == 30*time.Second
		}, ""},
		{"source and dir as mount(8) passes", append(base, "ipnix", "/mnt"), func(c *mountConfig) bool { return c.MountPoint == "/mnt" }, ""},
		{"fstab options", []string{"-o", "substituter=file:///a,substituter=http://b,trusted-public-key=k:AAAA,api=/ip4/127.0.0.1/tcp/5001,memory-cache=1GiB,allow_other,nosuid,nodev,ro,_netdev", "/mnt"},
			func(c *mountConfig) bool {
				return reflect.DeepEqual(c.Substituters, []string{"file:///a", "http://b"}) && c.API == "/ip4/127.0.0.1/tcp/5001" &&
					c.MemoryCache == 1<<30 && c.AllowOther && reflect.DeepEqual(c.KernelOptions, []string{"nosuid", "nodev"})
			}, ""},
		{"repeated -o", append(base, "-o", "debug", "-o", "block-timeout=5s", "/mnt"), func(c *mountConfig) bool { return c.Debug && c.BlockTimeout == 5*time.Second }, ""},
		{"no-require-sigs without keys", []string{"--substituter", "file:///c", "--no-require-sigs", "/mnt"}, func(c *mountConfig) bool { return c.NoRequireSigs }, ""},
		{"memory size", append(base, "--memory-cache", "64MiB", "/mnt"), func(c *mountConfig) bool { return c.MemoryCache == 64<<20 }, ""},
		{"no-passthrough", append(base, "--no-passthrough", "/mnt"), func(c *mountConfig) bool { return c.NoPassthrough }, ""},
		{"no-passthrough as -o", append(base, "-o", "no-passthrough", "/mnt"), func(c *mountConfig) bool { return c.NoPassthrough }, ""},
		{"no mount point", base, nil, "exactly one MOUNTPOINT"},
		{"no substituter", []string{"--trusted-public-key", "k:AAAA", "/mnt"}, nil, "--substituter"},
		{"no key", []string{"--substituter", "file:///c", "/mnt"}, nil, "--no-require-sigs"},
		{"rw refused", append(base, "-o", "rw", "/mnt"), nil, "read-only"},
		{"unknown option", append(base, "-o", "frobnicate", "/mnt"), nil, `"frobnicate"`},
		{"option without value", append(base, "-o", "api", "/mnt"), nil, "needs a value"},
		{"bad size", append(base, "--memory-cache", "lots", "/mnt"), nil, `"lots"`},
		{"bad size in -o", append(base, "-o", "memory-cache=lots", "/mnt"), nil, `"lots"`},
		{"bad timeout", append(base, "--block-timeout", "-1s", "/mnt"), nil, "positive"},
		{"unknown flag", append(base, "--frob", "/mnt"), nil, "frob"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseMountArgs(tc.args, &bytes.Buffer{})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.err)
				}
				if _, ok := err.(usageError); !ok {
					t.Fatalf("%v is not a usage error", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.want(c) {
				t.Fatalf("config %+v", c)
			}
		})
	}
}

func TestPublishArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"/nix/store/00000000000000000000000000000000-x"}, "--to"},
		{[]string{"--to", "/tmp/c"}, "STOREPATH"},
		{[]string{"--to", "/tmp/c", "--from", "/a", "/nix/store/00000000000000000000000000000000-x"}, "not both"},
		{[]string{"--to", "/tmp/c", "/usr/bin/ls"}, `"/usr/bin/ls"`},
	} {
		_, err := parsePublishArgs(tc.args, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%v: err = %v, want one mentioning %q", tc.args, err, tc.err)
		}
	}
	c, err := parsePublishArgs([]string{"--to", "/tmp/c", "--no-closure", "/nix/store/00000000000000000000000000000000-x"}, &bytes.Buffer{})
	if err != nil || !c.NoClosure || c.Chunker != "size-262144" {
		t.Fatalf("%+v %v", c, err)
	}
}

func TestExitCodesAndHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"ipnix"}, exitUsage, "Usage:"},
		{[]string{"ipnix", "--help"}, exitOK, "ipnix mount"},
		{[]string{"ipnix", "mount", "--help"}, exitOK, "--memory-cache"},
		{[]string{"ipnix", "publish", "--help"}, exitOK, "--secret-key"},
		{[]string{"ipnix", "frob"}, exitUsage, `unknown command "frob"`},
		{[]string{"ipnix", "mount", "/mnt"}, exitUsage, "--substituter"},
		{[]string{"ipnix", "mount", "--substituter", "ftp://x", "--no-require-sigs", "/mnt"}, exitUsage, "ftp://x"},
		{[]string{"ipnix", "mount", "--substituter", "file:///c", "--trusted-public-key", "garbage", "/mnt"}, exitUsage, "garbage"},
		{[]string{"ipnix", "publish", "--to", "/tmp/x", "--api", "/ip4/127.0.0.1/tcp/1", "/nix/store/00000000000000000000000000000000-x"}, exitKubo, "does not answer"},
		{[]string{"ipnix", "version"}, exitOK, "ipnix "},
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb)
		all := out.String() + errb.String()
		if code != tc.code || !strings.Contains(all, tc.out) {
			t.Errorf("%v: exit %d (want %d), output %q (want %q)", tc.args, code, tc.code, all, tc.out)
		}
	}
}

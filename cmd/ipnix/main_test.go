package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// testKey is a well-formed public key (32 zero bytes).
const testKey = "k:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="

func TestMountArgs(t *testing.T) {
	base := []string{"--substituter", "file:///c", "--trusted-public-key", testKey}
	cases := []struct {
		name string
		args []string
		want func(c *mountConfig) bool
		err  string
	}{
		{"plain", append(base, "/mnt"), func(c *mountConfig) bool {
			return c.MountPoint == "/mnt" && c.MemoryCache == 64<<20 && !c.NoRequireSigs && !c.RequireCidSig &&
				c.BlockTimeout == 10*time.Second && c.ReadTimeout == 30*time.Second &&
				c.MaxEntries == 1_000_000 && c.ListingMemory == 256<<20 && c.Metrics == "" && !c.MetricsAllowRemote
		}, ""},
		{"source and dir as mount(8) passes", append(base, "ipnix", "/mnt"), func(c *mountConfig) bool { return c.MountPoint == "/mnt" }, ""},
		{"fstab options", []string{"-o", "substituter=file:///a,substituter=http://b,trusted-public-key=" + testKey + ",api=/ip4/127.0.0.1/tcp/5001,memory-cache=1GiB,allow_other,nosuid,nodev,ro,_netdev", "/mnt"},
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
		{"no substituter", []string{"--trusted-public-key", testKey, "/mnt"}, nil, "--substituter"},
		{"no key", []string{"--substituter", "file:///c", "/mnt"}, nil, "--no-require-sigs"},
		{"rw refused", append(base, "-o", "rw", "/mnt"), nil, "read-only"},
		{"unknown option", append(base, "-o", "frobnicate", "/mnt"), nil, `"frobnicate"`},
		{"option without value", append(base, "-o", "api", "/mnt"), nil, "needs a value"},
		{"bad size", append(base, "--memory-cache", "lots", "/mnt"), nil, `"lots"`},
		{"bad size in -o", append(base, "-o", "memory-cache=lots", "/mnt"), nil, `"lots"`},
		{"bad timeout", append(base, "--block-timeout", "-1s", "/mnt"), nil, "positive"},
		{"unknown flag", append(base, "--frob", "/mnt"), nil, "frob"},

		{"require-cid-sig", append(base, "--require-cid-sig", "/mnt"), func(c *mountConfig) bool { return c.RequireCidSig }, ""},
		{"require-cid-sig as -o", append(base, "-o", "require-cid-sig", "/mnt"), func(c *mountConfig) bool { return c.RequireCidSig }, ""},
		{"require-cid-sig without keys", []string{"--substituter", "file:///c", "--no-require-sigs", "--require-cid-sig", "/mnt"}, nil, "--trusted-public-key"},
		{"timeouts", append(base, "--read-timeout", "1m", "--block-timeout", "2s", "/mnt"), func(c *mountConfig) bool {
			return c.ReadTimeout == time.Minute && c.BlockTimeout == 2*time.Second
		}, ""},
		{"timeouts as -o", append(base, "-o", "read-timeout=45s,block-timeout=3s", "/mnt"), func(c *mountConfig) bool {
			return c.ReadTimeout == 45*time.Second && c.BlockTimeout == 3*time.Second
		}, ""},
		{"read-timeout equal to block-timeout", append(base, "--read-timeout", "5s", "--block-timeout", "5s", "/mnt"), func(c *mountConfig) bool { return c.ReadTimeout == 5*time.Second }, ""},
		{"read-timeout zero", append(base, "--read-timeout", "0s", "/mnt"), nil, "--read-timeout 0s must be positive"},
		{"read-timeout negative in -o", append(base, "-o", "read-timeout=-1s", "/mnt"), nil, "must be positive"},
		{"read-timeout below block-timeout", append(base, "--read-timeout", "5s", "--block-timeout", "6s", "/mnt"), nil, "shorter than --block-timeout"},
		{"read-timeout below default block-timeout", append(base, "--read-timeout", "1s", "/mnt"), nil, "shorter than --block-timeout 10s"},
		{"bad read-timeout", append(base, "--read-timeout", "soon", "/mnt"), nil, "soon"},
		{"bad read-timeout in -o", append(base, "-o", "read-timeout=soon", "/mnt"), nil, "soon"},
		{"max-entries", append(base, "--max-entries", "5000", "/mnt"), func(c *mountConfig) bool { return c.MaxEntries == 5000 }, ""},
		{"max-entries as -o", append(base, "-o", "max-entries=7", "/mnt"), func(c *mountConfig) bool { return c.MaxEntries == 7 }, ""},
		{"max-entries zero", append(base, "--max-entries", "0", "/mnt"), nil, "--max-entries 0 must be positive"},
		{"max-entries negative in -o", append(base, "-o", "max-entries=-3", "/mnt"), nil, "must be positive"},
		{"max-entries not a number", append(base, "-o", "max-entries=many", "/mnt"), nil, "many"},
		{"listing-memory", append(base, "--listing-memory", "1GiB", "/mnt"), func(c *mountConfig) bool { return c.ListingMemory == 1<<30 }, ""},
		{"listing-memory as -o", append(base, "-o", "listing-memory=32MiB", "/mnt"), func(c *mountConfig) bool { return c.ListingMemory == 32<<20 }, ""},
		{"listing-memory zero", append(base, "--listing-memory", "0", "/mnt"), nil, "--listing-memory 0 must be positive"},
		{"listing-memory bad", append(base, "-o", "listing-memory=big", "/mnt"), nil, `"big"`},
		{"listing-memory without value", append(base, "-o", "listing-memory", "/mnt"), nil, "needs a value"},
		{"flag-only words in -o", append(base, "-o", "batch-fetch,no-require-sigs,debug", "/mnt"), func(c *mountConfig) bool {
			return c.rangeFetch() == "car" && c.NoRequireSigs && c.Debug
		}, ""},
		{"range-fetch default", append(base, "/mnt"), func(c *mountConfig) bool { return c.rangeFetch() == "bytes" && c.BackgroundFetch }, ""},
		{"range-fetch off as -o", append(base, "-o", "range-fetch=off,background-fetch=false", "/mnt"), func(c *mountConfig) bool {
			return c.rangeFetch() == "off" && !c.BackgroundFetch
		}, ""},
		{"range-fetch unknown", append(base, "--range-fetch", "blocks", "/mnt"), nil, `--range-fetch "blocks": want bytes, car or off`},
		{"no-push-pages", append(base, "-o", "no-push-pages", "/mnt"), func(c *mountConfig) bool { return c.NoPushPages }, ""},
		{"require-sigs undoes", append(base, "-o", "no-require-sigs,require-sigs", "/mnt"), func(c *mountConfig) bool { return !c.NoRequireSigs }, ""},
		{"-o option is not an option", append(base, "-o", "option=debug", "/mnt"), nil, `unknown mount option "option"`},
		{"unknown option names the word only", append(base, "-o", "trusted-public-keys=k:c2VjcmV0", "/mnt"), nil, `unknown mount option "trusted-public-keys"`},
		{"-o appends to flags", append(base, "-o", "substituter=http://b", "/mnt"), func(c *mountConfig) bool {
			return reflect.DeepEqual(c.Substituters, []string{"file:///c", "http://b"})
		}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			checkMountArgs(t, tc.args, tc.want, tc.err)
		})
	}
}

// checkMountArgs parses args and checks the config with want, or that the
// error is a usage error mentioning wantErr.
func checkMountArgs(t *testing.T, args []string, want func(*mountConfig) bool, wantErr string) {
	t.Helper()
	c, err := parseMountArgs(args, &bytes.Buffer{})
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("err = %v, want one mentioning %q", err, wantErr)
		}
		if _, ok := err.(usageError); !ok {
			t.Fatalf("%v is not a usage error", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if !want(c) {
		t.Fatalf("config %+v", c)
	}
}

// The metrics endpoint serves profiles too: only loopback, unless asked.
func TestMetricsAddress(t *testing.T) {
	base := []string{"--substituter", "file:///c", "--trusted-public-key", testKey}
	for _, tc := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"--metrics", "127.0.0.1:9464"}, true},
		{[]string{"--metrics", "127.0.0.1:0"}, true},
		{[]string{"--metrics", "127.8.9.10:9464"}, true},
		{[]string{"--metrics", "[::1]:9464"}, true},
		{[]string{"--metrics", "localhost:9464"}, true},
		{[]string{"--metrics", "LocalHost:9464"}, true},
		{[]string{"-o", "metrics=127.0.0.1:9464"}, true},
		{[]string{"--metrics", "0.0.0.0:9464"}, false},
		{[]string{"--metrics", ":9464"}, false},
		{[]string{"--metrics", "[::]:9464"}, false},
		{[]string{"--metrics", "192.168.1.5:9464"}, false},
		{[]string{"--metrics", "[::ffff:10.0.0.1]:9464"}, false},
		{[]string{"--metrics", "[fe80::1%eth0]:9464"}, false},
		{[]string{"--metrics", "example.com:9464"}, false},
		{[]string{"--metrics", "localhost.evil.example:9464"}, false},
		{[]string{"--metrics", "128.0.0.1:9464"}, false},
		{[]string{"--metrics", "127.0.0.1"}, false}, // no port
		{[]string{"-o", "metrics=0.0.0.0:9464"}, false},
		{[]string{"--metrics", "0.0.0.0:9464", "--metrics-allow-remote"}, true},
		{[]string{"--metrics", ":9464", "-o", "metrics-allow-remote"}, true},
		{[]string{"-o", "metrics=192.168.1.5:9464,metrics-allow-remote"}, true},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			args := append(append(append([]string{}, base...), tc.args...), "/mnt")
			c, err := parseMountArgs(args, &bytes.Buffer{})
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				if c.Metrics == "" {
					t.Fatal("no metrics address")
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted: %+v", c)
			}
			if _, ok := err.(usageError); !ok {
				t.Fatalf("%v is not a usage error", err)
			}
			for _, want := range []string{"--metrics", "pprof", "--metrics-allow-remote"} {
				if !strings.Contains(err.Error(), want) && !strings.Contains(err.Error(), "not host:port") {
					t.Fatalf("error %q does not mention %s", err, want)
				}
			}
		})
	}
}

// A listener bound to a non-loopback address is refused even when the
// name asked for looked harmless.
func TestListenMetricsChecksBoundAddress(t *testing.T) {
	ln, err := listenMetrics("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	// Every interface: refused unless allowed. Listening on the wildcard
	// address needs no network, and the listener is closed at once.
	if ln, err := listenMetrics("0.0.0.0:0", false); err == nil {
		ln.Close()
		t.Fatal("0.0.0.0 accepted without --metrics-allow-remote")
	} else if !strings.Contains(err.Error(), "not loopback") {
		t.Fatalf("err = %v", err)
	}
	if ln, err := listenMetrics("0.0.0.0:0", true); err != nil {
		t.Fatal(err)
	} else {
		ln.Close()
	}
}

// A secret key given where a public key belongs is refused without echoing
// it: not its base64, not even a part of it; the name alone identifies it.
func TestTrustedKeyErrorsHideKeyMaterial(t *testing.T) {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(i*37 + 11)
	}
	sk := ed25519.NewKeyFromSeed(seed)
	secretB64 := base64.StdEncoding.EncodeToString(sk)
	pubB64 := base64.StdEncoding.EncodeToString(sk.Public().(ed25519.PublicKey))
	secret := "cache.example-1:" + secretB64
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"flag", []string{"ipnix", "mount", "--substituter", "file:///c", "--trusted-public-key", secret, "/mnt"}, "this looks like a secret key"},
		{"flag with =", []string{"ipnix", "mount", "--substituter", "file:///c", "--trusted-public-key=" + secret, "/mnt"}, "this looks like a secret key"},
		{"-o", []string{"ipnix", "mount", "-o", "substituter=file:///c,trusted-public-key=" + secret, "/mnt"}, "this looks like a secret key"},
		{"padded", []string{"ipnix", "mount", "--substituter", "file:///c", "--trusted-public-key", " " + secret + "\n", "/mnt"}, "this looks like a secret key"},
		{"among good keys", []string{"ipnix", "mount", "--substituter", "file:///c", "--trusted-public-key", "good:" + pubB64, "--trusted-public-key", secret, "/mnt"}, "this looks like a secret key"},
		{"no name", []string{"ipnix", "mount", "--substituter", "file:///c", "--trusted-public-key", secretB64, "/mnt"}, "not a public key"},
		{"truncated", []string{"ipnix", "mount", "--substituter", "file:///c", "--trusted-public-key", secret[:len(secret)-5], "/mnt"}, "not base64"},
		{"misspelt -o word", []string{"ipnix", "mount", "-o", "substituter=file:///c,trusted-public-keys=" + secret, "/mnt"}, "unknown mount option"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(tc.args, &out, &errb)
			all := out.String() + errb.String()
			if code != exitUsage || !strings.Contains(all, tc.want) {
				t.Fatalf("exit %d, output %q; want exit %d and %q", code, all, exitUsage, tc.want)
			}
			// No run of 8 base64 characters of the key may appear.
			for i := 0; i+8 <= len(secretB64); i++ {
				if strings.Contains(all, secretB64[i:i+8]) {
					t.Fatalf("output %q contains key material %q", all, secretB64[i:i+8])
				}
			}
			if tc.want == "this looks like a secret key" && !strings.Contains(all, `"cache.example-1"`) {
				t.Fatalf("output %q does not name the key", all)
			}
		})
	}
	// The public half parses, and wrong sizes say so.
	if _, err := parseTrustedKey("good:" + pubB64); err != nil {
		t.Fatal(err)
	}
	if _, err := parseTrustedKey("short:AAAA"); err == nil || !strings.Contains(err.Error(), "3 bytes, want 32") {
		t.Fatalf("err = %v", err)
	}
}

// The GC's soft limit leaves room for listings beside the block cache.
func TestMemoryLimitCoversListings(t *testing.T) {
	c, err := parseMountArgs([]string{"--substituter", "file:///c", "--no-require-sigs", "--memory-cache", "64MiB", "--listing-memory", "512MiB", "/mnt"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if got, min := memoryLimit(c, 512<<20), int64(64<<20+512<<20); got <= min {
		t.Fatalf("memory limit %d leaves no headroom over cache and listings (%d)", got, min)
	}
	if got, max := memoryLimit(c, 0), int64(64<<20+128<<20); got > max {
		t.Fatalf("memory limit %d with no listings held, want at most %d", got, max)
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
		{[]string{"--to", "/tmp/c", "-j", "0", "/nix/store/00000000000000000000000000000000-x"}, "--jobs 0: at least 1"},
		{[]string{"--to", "/tmp/c", "--jobs", "many", "/nix/store/00000000000000000000000000000000-x"}, "many"},
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
		{[]string{"ipnix", "mount", "--substituter", "file:///c", "--trusted-public-key", "garbage", "/mnt"}, exitUsage, "not a public key"},
		{[]string{"ipnix", "mount", "--help"}, exitOK, "--metrics-allow-remote"},
		{[]string{"ipnix", "mount", "--help"}, exitOK, "/debug/pprof"},
		{[]string{"ipnix", "mount", "--help"}, exitOK, "require-cid-sig"},
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

// Any -o string is either accepted or a usage error: never a panic.
func FuzzMountOptions(f *testing.F) {
	for _, s := range []string{"debug", "substituter=file:///a,no-require-sigs", "metrics=0.0.0.0:1,metrics-allow-remote",
		"read-timeout=1s,block-timeout=2s", "max-entries=-1", "listing-memory=1EiB", "option=x", "=", ",,=,", "help"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, o string) {
		c, err := parseMountArgs([]string{"--substituter", "file:///c", "--trusted-public-key", testKey, "-o", o, "/mnt"}, io.Discard)
		if err != nil {
			if _, ok := err.(usageError); !ok && !errors.Is(err, pflag.ErrHelp) {
				t.Fatalf("%q: %v is not a usage error", o, err)
			}
			return
		}
		if c.ReadTimeout < c.BlockTimeout || c.BlockTimeout <= 0 || c.MaxEntries <= 0 || c.ListingMemory <= 0 {
			t.Fatalf("%q: accepted %+v", o, c)
		}
		if c.Metrics != "" && !c.MetricsAllowRemote && checkLoopback(c.Metrics) != nil {
			t.Fatalf("%q: accepted metrics address %q", o, c.Metrics)
		}
	})
}

// Whatever is passed as a public key, the error never repeats what follows
// the name.
func FuzzTrustedKey(f *testing.F) {
	f.Add("k:" + base64.StdEncoding.EncodeToString(make([]byte, 64)))
	f.Add("k:" + base64.StdEncoding.EncodeToString(make([]byte, 32)))
	f.Add("k:AAAA")
	f.Add("nocolon")
	f.Add(":")
	f.Fuzz(func(t *testing.T, s string) {
		_, err := parseTrustedKey(s)
		if err == nil {
			return
		}
		name, rest, _ := strings.Cut(strings.TrimSpace(s), ":")
		if len(rest) >= 8 && !strings.Contains(name, rest) && strings.Contains(err.Error(), rest) {
			t.Fatalf("error %q repeats the key %q", err, rest)
		}
	})
}

// --closure, -o closure= and --closures-from all name closures to load at
// start; the forms Nix users write are accepted.
func TestClosureArgs(t *testing.T) {
	const b = "0c6kzph7l0dcbfmjap64f0czdafn3b7x-hello"
	dir := t.TempDir()
	list := filepath.Join(dir, "closures")
	if err := os.WriteFile(list, []byte("# runner tools\n/nix/store/"+b+"-2/bin/x\n\n"+b+"-3  # bare\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := parseMountArgs([]string{"--substituter", "file:///c", "--no-require-sigs", "--closure", "/nix/store/" + b, "-o", "closure=" + b + "-1", "--closures-from", list, "/mnt"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	roots, err := closureRoots(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{b, b + "-1", b + "-2", b + "-3"}; !slices.Equal(roots, want) {
		t.Fatalf("roots %q, want %q", roots, want)
	}
	c.Closures = []string{"not-a-store-path"}
	if _, err := closureRoots(c); err == nil || !strings.Contains(err.Error(), "not-a-store-path") {
		t.Fatalf("bad --closure: %v", err)
	}
	c.Closures, c.ClosuresFrom = nil, filepath.Join(dir, "missing")
	if _, err := closureRoots(c); err == nil || !strings.Contains(err.Error(), "--closures-from") {
		t.Fatalf("missing --closures-from file: %v", err)
	}
}

// A file:// substituter that is not a directory is refused at start,
// naming the flag; sources that do not answer are named in a warning.
func TestStartupChecks(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-cache")
	_, err := newResolver([]string{"file://" + missing}, nil, false, false, nil)
	var ue usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "--substituter") || !strings.Contains(err.Error(), missing) {
		t.Fatalf("missing file:// cache: %v", err)
	}
	if code := run([]string{"ipnix", "register", "--substituter", "file://" + missing, "--no-require-sigs", "x"}, io.Discard, io.Discard); code != exitUsage {
		t.Fatalf("register with a missing cache: exit %d, want %d", code, exitUsage)
	}
	dead := "http://127.0.0.1:1" // nothing listens on port 1
	res, err := newResolver([]string{dead}, nil, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	warnUnanswered(context.Background(), res.Substituters, []string{"http://127.0.0.1:2"}, newLogger(&log, false))
	for _, want := range []string{"substituter not answering", dead, "gateway not answering", "127.0.0.1:2"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("warnings lack %q:\n%s", want, log.String())
		}
	}
}

package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/ipnix/ipnix/ipfscache"
)

const (
	testDirCid  = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
	testIPNSKey = "k51qzi5uqu5dkzhcc7n2jnf9cq33v0zyxpgezf46ideoj0m1digrj21j03gyo1"
)

// TestIPFSSubstituterArgs: ipfs:// and ipns:// substituters and
// --ipns-refresh are checked with the flags (usage errors naming the bad
// value), for mount, -o and serve.
func TestIPFSSubstituterArgs(t *testing.T) {
	key := []string{"--trusted-public-key", testKey}
	for _, tc := range []struct {
		name string
		args []string
		want func(*mountConfig) bool
		err  string
	}{
		{"ipfs", append(key, "--substituter", "ipfs://"+testDirCid, "/mnt"), func(c *mountConfig) bool {
			return c.IpnsRefresh == ipfscache.DefaultRefresh
		}, ""},
		{"ipns with refresh", append(key, "--substituter", "ipns://"+testIPNSKey, "--ipns-refresh", "5s", "/mnt"), func(c *mountConfig) bool {
			return c.IpnsRefresh == 5*time.Second
		}, ""},
		{"refresh as -o", append(key, "-o", "substituter=ipns://"+testIPNSKey+",ipns-refresh=2m", "/mnt"), func(c *mountConfig) bool {
			return c.IpnsRefresh == 2*time.Minute
		}, ""},
		{"refresh too short", append(key, "--substituter", "ipns://"+testIPNSKey, "--ipns-refresh", "10ms", "/mnt"), nil, "--ipns-refresh 10ms"},
		{"refresh negative", append(key, "--substituter", "ipns://"+testIPNSKey, "--ipns-refresh", "-1s", "/mnt"), nil, "--ipns-refresh"},
		{"refresh not a duration", append(key, "--substituter", "ipns://"+testIPNSKey, "--ipns-refresh", "often", "/mnt"), nil, "often"},
		{"not a CID", append(key, "--substituter", "ipfs://nonsense", "/mnt"), nil, `"nonsense"`},
		{"DNSLink", append(key, "--substituter", "ipns://cache.example.org", "/mnt"), nil, "DNSLink"},
		{"path below root", append(key, "--substituter", "ipfs://"+testDirCid+"/sub", "/mnt"), nil, "below the root"},
	} {
		t.Run(tc.name, func(t *testing.T) { checkMountArgs(t, tc.args, tc.want, tc.err) })
	}

	c, err := parseServeArgs(append(key, "--substituter", "ipns://"+testIPNSKey, "--ipns-refresh", "3s"), &bytes.Buffer{})
	if err != nil || c.IpnsRefresh != 3*time.Second {
		t.Errorf("serve: %+v, %v", c, err)
	}
	if _, err := parseServeArgs(append(key, "--substituter", "ipns://x.y"), &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "DNSLink") {
		t.Errorf("serve with a DNSLink name: %v", err)
	}
	// register reads no blocks, so it refuses them plainly.
	if _, err := newResolver([]string{"ipfs://" + testDirCid}, nil, false, false, nil); err == nil || !strings.Contains(err.Error(), "mount and serve") {
		t.Errorf("ipfs:// without a block stack: %v", err)
	}
}

func TestPublishIpfsDirArgs(t *testing.T) {
	c, err := parsePublishArgs([]string{"--to", "/tmp/c", "--ipns-key", "cache"}, &bytes.Buffer{})
	if err != nil || !c.IpfsDir || c.IpnsKey != "cache" || len(c.Paths) != 0 {
		t.Errorf("--ipns-key alone: %+v, %v", c, err)
	}
	c, err = parsePublishArgs([]string{"--to", "/tmp/c", "--ipfs-dir", "/nix/store/00000000000000000000000000000000-x"}, &bytes.Buffer{})
	if err != nil || !c.IpfsDir || c.IpnsKey != "" {
		t.Errorf("--ipfs-dir with a path: %+v, %v", c, err)
	}
	if err := checkIpfsDir(t.Context(), &publishConfig{To: t.TempDir(), IpfsDir: true}, nil); err == nil || !strings.Contains(err.Error(), "not a binary cache") {
		t.Errorf("--ipfs-dir alone on an empty directory: %v", err)
	}
}

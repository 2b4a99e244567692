package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/ipfs/kubo/client/rpc"

	"github.com/ipnix/ipnix/publish"
)

// checkIpfsDir refuses, before anything is published, what would make
// --ipfs-dir or --ipns-key fail at the end: DIR given alone but not a
// binary cache, a kubo key that does not exist.
func checkIpfsDir(ctx context.Context, c *publishConfig, api *rpc.HttpApi) error {
	if c.IpnsKey != "" {
		if _, err := publish.KeyName(ctx, api, c.IpnsKey); err != nil {
			return usageError{fmt.Errorf("--ipns-key: %w", err)}
		}
	}
	if c.IpfsDir && c.From == "" && len(c.Paths) == 0 {
		if _, err := os.Stat(filepath.Join(c.To, "nix-cache-info")); err != nil {
			return usageError{fmt.Errorf("--to %s: not a binary cache to add (%v)", c.To, err)}
		}
	}
	return nil
}

// publishIpfsDir adds the cache directory to IPFS (--ipfs-dir) and, with
// --ipns-key, points the key's IPNS name at it. stdout gets the CID, then
// the name, one a line; progress and the summary go to stderr.
func publishIpfsDir(ctx context.Context, c *publishConfig, api *rpc.HttpApi, stdout, stderr io.Writer) error {
	start := time.Now()
	last := start
	res, err := publish.AddCacheDir(ctx, api, c.To, func(sent, total int) {
		if now := time.Now(); now.Sub(last) >= time.Second {
			last = now
			fmt.Fprintf(stderr, "ipnix: adding %s to IPFS: %d of %d files sent\n", c.To, sent, total)
		}
	})
	if err != nil {
		return err
	}
	layout := "one block"
	if res.Sharded {
		layout = "HAMT-sharded"
	}
	fmt.Fprintf(stderr, "ipnix: cache directory %s added to IPFS: %d files (%d narinfos, %s), %s, in %v\n",
		res.Root, res.Files, res.NarInfos, publish.HumanBytes(uint64(res.Bytes)), layout, time.Since(start).Round(time.Millisecond))
	fmt.Fprintln(stdout, res.Root)
	if c.IpnsKey == "" {
		return nil
	}
	start = time.Now()
	name, err := publish.PublishName(ctx, api, c.IpnsKey, res.Root)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "ipnix: IPNS name %s (key %q) points to %s, in %v\n", name, c.IpnsKey, res.Root, time.Since(start).Round(time.Millisecond))
	if err := publish.CheckName(ctx, api, name); err != nil {
		fmt.Fprintf(stderr, "ipnix: warning: %v\n", err)
	}
	fmt.Fprintln(stdout, name)
	return nil
}

package narindex

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"
)

// StorePathArg reads a store path as Nix users write one: a full path
// ("/nix/store/<hash>-<name>", possibly with a path inside it, which is
// dropped), a symlink into the store (a `result` link, followed without
// the store having to hold the target), or a bare "<hash>-<name>".
func StorePathArg(arg string) (StorePath, error) {
	s := arg
	for range 40 { // symlink hops, as the kernel allows
		if rest, ok := strings.CutPrefix(s, StoreDir+"/"); ok {
			base, _, _ := strings.Cut(rest, "/")
			return ParseStorePathBase(base)
		}
		if fi, err := os.Lstat(s); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			target, err := os.Readlink(s)
			if err != nil {
				return StorePath{}, fmt.Errorf("%q: %w", arg, err)
			}
			if !filepath.IsAbs(target) {
				target = filepath.Join(filepath.Dir(s), target)
			}
			s = target
			continue
		}
		if !strings.Contains(s, "/") {
			if p, err := ParseStorePathBase(s); err == nil {
				return p, nil
			}
		}
		return StorePath{}, fmt.Errorf("%q is not a store path, a <hash>-<name>, or a symlink into %s", arg, StoreDir)
	}
	return StorePath{}, fmt.Errorf("%q: too many levels of symbolic links", arg)
}

// Closure resolves the store paths roots and everything they reference,
// recursively, asking up to workers substituter requests at once. Every
// narinfo passes the resolver's checks (signature, name, CID). The result
// lists each path once, references before the paths that refer to them
// (the order `nix-store --load-db` needs; a path's reference to itself is
// ignored for it). The error names the first path that could not be
// resolved and the path that referred to it.
func (r *Resolver) Closure(ctx context.Context, roots []string, workers int) ([]*Resolved, error) {
	if workers <= 0 {
		workers = 8
	}
	// One goroutine per path, at most workers of them resolving at once
	// (a limit on the group itself would deadlock: paths are found by
	// paths being resolved).
	g, gctx := errgroup.WithContext(ctx)
	sem := make(chan struct{}, workers)
	var (
		mu   sync.Mutex
		seen = map[string]*Resolved{}
	)
	var visit func(base, from string)
	visit = func(base, from string) {
		mu.Lock()
		if _, ok := seen[base]; ok {
			mu.Unlock()
			return
		}
		seen[base] = nil
		mu.Unlock()
		g.Go(func() error {
			select {
			case sem <- struct{}{}:
			case <-gctx.Done():
				return gctx.Err()
			}
			res, err := r.Resolve(gctx, base)
			<-sem
			if err != nil {
				if from != "" {
					return fmt.Errorf("%s (a reference of %s): %w", base, from, err)
				}
				return err
			}
			mu.Lock()
			seen[base] = res
			mu.Unlock()
			for _, ref := range res.Info.References {
				if ref != base {
					visit(ref, base)
				}
			}
			return nil
		})
	}
	for _, root := range roots {
		visit(root, "")
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return topoOrder(seen)
}

// topoOrder lists resolved paths with references first; ties are broken
// by name, so the order is stable.
func topoOrder(all map[string]*Resolved) ([]*Resolved, error) {
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)
	const (
		unvisited = iota
		active
		done
	)
	state := map[string]int{}
	out := make([]*Resolved, 0, len(all))
	var walk func(n string) error
	walk = func(n string) error {
		switch state[n] {
		case done:
			return nil
		case active:
			return errors.New("references form a cycle through " + n)
		}
		state[n] = active
		refs := append([]string(nil), all[n].Info.References...)
		sort.Strings(refs)
		for _, ref := range refs {
			if ref == n {
				continue
			}
			if err := walk(ref); err != nil {
				return err
			}
		}
		state[n] = done
		out = append(out, all[n])
		return nil
	}
	for _, n := range names {
		if err := walk(n); err != nil {
			return nil, err
		}
	}
	return out, nil
}

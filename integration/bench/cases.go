package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/ipnix/ipnix/integration/runenv"
	"github.com/ipnix/ipnix/narindex"
)

// coldCat drops the caches and times reading file to the end.
func coldCat(file string) (time.Duration, error) {
	dropCaches()
	return shell("cat '" + file + "' > /dev/null")
}

// coldMountRead times a cold read of the large file through a fresh mount
// with the given flags.
func (b *bench) coldMountRead(extra ...string) (time.Duration, error) {
	m, err := b.mount(extra...)
	if err != nil {
		return 0, err
	}
	defer b.stopMount(m)
	return coldCat(filepath.Join(inMount(m, b.big), "big.bin"))
}

// B1: cold sequential read of the large file, without and with
// --cache-dir, against kubo's gateway streaming the same NAR and against
// kubo's own FUSE mount.
func (b *bench) b1Cold() error {
	cid, narSize, err := b.narCid(b.big)
	if err != nil {
		return err
	}
	size := b.bigSize
	what := "cold sequential read, " + humanize.IBytes(uint64(size)) + " file"
	gw := func() *figure { return &figure{Label: "kubo gateway stream", Unit: "MiB/s"} }
	plain := b.newRow(row{ID: "B1", What: what + " (blocks read from the local kubo's blockstore files, --kubo-repo)", Ipnix: figure{Unit: "MiB/s"}, Baseline: gw(),
		RatioOf: "ipnix/gateway throughput", Target: "≥ 0.8×", meets: func(r *row) bool { return r.Ratio >= 0.8 }})
	viaKubo := b.newRow(row{ID: "B1", What: what + ", blocks through kubo's gateway (--kubo-repo none)", Ipnix: figure{Unit: "MiB/s"}, Baseline: gw(),
		RatioOf: "ipnix/gateway throughput", Target: "≥ 0.8×", meets: func(r *row) bool { return r.Ratio >= 0.8 }})
	withDir := b.newRow(row{ID: "B1", What: what + ", with --cache-dir", Ipnix: figure{Unit: "MiB/s"}, Baseline: gw(),
		RatioOf: "ipnix/gateway throughput", Target: "≥ 0.8×", meets: func(r *row) bool { return r.Ratio >= 0.8 }})
	fuse := b.newRow(row{ID: "B1", What: "cold sequential read vs kubo's FUSE mount", Ipnix: figure{Unit: "MiB/s"},
		Baseline: &figure{Label: "ipfs mount", Unit: "MiB/s"}, RatioOf: "ipnix/kubo FUSE throughput", Target: "≥ 8×",
		meets: func(r *row) bool { return r.Ratio >= 8 }})
	var fuseErr error
	return b.eachRound("B1", func(i int) error {
		return alternate(i,
			func() error {
				d, err := b.coldMountRead()
				plain.ipnix(mbps(size, d))
				fuse.ipnix(mbps(size, d))
				return err
			},
			func() error {
				args, done, err := b.cacheDir()
				if err != nil {
					return err
				}
				defer done()
				d, err := b.coldMountRead(args...)
				withDir.ipnix(mbps(size, d))
				return err
			},
			func() error {
				d, err := b.coldMountRead("--kubo-repo", "none")
				viaKubo.ipnix(mbps(size, d))
				return err
			},
			func() error {
				dropCaches()
				start := time.Now()
				if _, err := gatewayFetch(nil, b.kubo.Gateway, cid, io.Discard); err != nil {
					return err
				}
				r := mbps(narSize, time.Since(start))
				plain.base(r)
				withDir.base(r)
				viaKubo.base(r)
				return nil
			},
			func() error {
				d, err := coldCat(b.bigFile)
				plain.extra("native cold read", "MiB/s", mbps(size, d))
				return err
			},
			func() error {
				if fuseErr != nil {
					return nil
				}
				d, err := b.kuboFuseRead(cid)
				if err != nil {
					fuseErr = err
					fuse.Baseline = nil
					fuse.note("ipfs mount failed: " + firstLine(err.Error()))
					return nil
				}
				fuse.base(mbps(narSize, d))
				return nil
			})
	})
}

// kuboFuseRead reads /ipfs/<cid> cold through kubo's own FUSE mount,
// mounted for this read only.
func (b *bench) kuboFuseRead(cid string) (time.Duration, error) {
	ipfsDir, ipnsDir, mfsDir := filepath.Join(b.work, "kubo-ipfs"), filepath.Join(b.work, "kubo-ipns"), filepath.Join(b.work, "kubo-mfs")
	for _, d := range []string{ipfsDir, ipnsDir, mfsDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return 0, err
		}
	}
	if _, err := b.kubo.Run(nil, "mount", "-f", ipfsDir, "-n", ipnsDir, "-m", mfsDir); err != nil {
		return 0, err
	}
	defer func() {
		for _, d := range []string{ipfsDir, ipnsDir, mfsDir} {
			exec.Command("fusermount", "-u", "-z", d).Run()
		}
	}()
	return coldCat(filepath.Join(ipfsDir, cid))
}

// B2: re-read after a remount with --cache-dir (the local copies written
// by a first read in the first mount) against a native cold read of the
// same local copy, read directly, in rounds of their own. As in B9 the
// copy is read once, untimed, before the timed read's drop, so that this
// VM's host caches it for both sides. The ipnix side includes what a
// remount costs: the copy is checked against its manifest (CRC-32C)
// before the kernel gets it.
func (b *bench) b2Warm() error {
	size := b.bigSize
	r := b.newRow(row{ID: "B2", What: "re-read after remount, --cache-dir, page cache dropped", Ipnix: figure{Unit: "MiB/s"},
		Baseline: &figure{Label: "native cold read of the same local copy", Unit: "MiB/s"}, RatioOf: "ipnix/native throughput", Target: "≥ 0.8×",
		meets: func(r *row) bool { return r.Ratio >= 0.8 }})
	// copied reads the large file through a mount with a fresh cache dir,
	// stops it, warms the host's cache of the local copy and calls read
	// with the cache dir's flags and the copy.
	copied := func(read func(args []string, copyFile string) error) error {
		args, done, err := b.cacheDir()
		if err != nil {
			return err
		}
		defer done()
		if _, err := b.coldMountRead(args...); err != nil {
			return err
		}
		copyFile, err := b.localCopy(args[1])
		if err != nil {
			return err
		}
		if _, err := coldCat(copyFile); err != nil {
			return err
		}
		return read(args, copyFile)
	}
	return b.eachRound("B2", func(i int) error {
		return alternate(i,
			func() error {
				return copied(func(args []string, _ string) error {
					m, err := b.mount(args...)
					if err != nil {
						return err
					}
					defer b.stopMount(m)
					before, _ := m.Metric("ipnix_fetch_bytes_total")
					d, err := coldCat(filepath.Join(inMount(m, b.big), "big.bin"))
					after, _ := m.Metric("ipnix_fetch_bytes_total")
					r.ipnix(mbps(size, d))
					r.extra("fetched after the remount", "B", float64(after-before))
					return err
				})
			},
			func() error {
				return copied(func(_ []string, copyFile string) error {
					d, err := coldCat(copyFile)
					r.base(mbps(size, d))
					return err
				})
			})
	})
}

// fullSubstitution fetches a whole NAR from a kubo gateway (over client,
// nil for the default), hashes it and unpacks it with nix-store --restore,
// as a substituter would, from a cold page cache, and checks the hash
// against NarHash at the end, as Nix does before it registers a path (and
// as ipnix does before it calls a path verified). It gives the time and
// the bytes nix-store wrote to storage. Nix does not sync restored files,
// so neither does this.
func (b *bench) fullSubstitution(client *http.Client, gateway, storePath string) (time.Duration, int64, error) {
	cid, _, err := b.narCid(storePath)
	if err != nil {
		return 0, 0, err
	}
	f, err := b.narinfoFields(storePath)
	if err != nil {
		return 0, 0, err
	}
	narHash := f["NarHash"]
	dst := filepath.Join(b.work, "restored-"+fmt.Sprint(time.Now().UnixNano()))
	defer os.RemoveAll(dst)
	dropCaches()
	start := time.Now()
	cmd := exec.Command("nix-store", "--restore", dst)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	w, err := cmd.StdinPipe()
	if err != nil {
		return 0, 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	h := sha256.New()
	_, ferr := gatewayFetch(client, gateway, cid, io.MultiWriter(w, h))
	w.Close()
	werr := cmd.Wait()
	got := "sha256:" + narindex.EncodeNix32(h.Sum(nil))
	d := time.Since(start)
	if ferr != nil {
		return 0, 0, ferr
	}
	if got != narHash {
		return 0, 0, fmt.Errorf("substituting %s: NAR hash %s, narinfo says %q", storePath, got, narHash)
	}
	if werr != nil {
		return 0, 0, fmt.Errorf("nix-store --restore: %v\n%s", werr, stderr.String())
	}
	var written int64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		written = ru.Oublock * 512 // the kernel counts write_bytes - cancelled_write_bytes, in 512-byte units
	}
	return d, written, nil
}

// readAll reads every regular file under root.
func readAll(root string) (time.Duration, error) {
	return shell("find '" + root + "' -type f -exec cat {} + > /dev/null")
}

// B3: read every file of the Go toolchain path: cold against full
// substitution, warm against native warm.
func (b *bench) b3SmallFiles() error {
	what := fmt.Sprintf("read every file of a %d-file path (Go toolchain)", b.goFiles)
	warm := b.newRow(row{ID: "B3", What: what + ", warm", Ipnix: figure{Unit: "s"}, Baseline: &figure{Label: "native warm", Unit: "s"},
		RatioOf: "ipnix/native time", Target: "≤ 1.5×", meets: func(r *row) bool { return r.Ratio <= 1.5 }})
	cold := b.newRow(row{ID: "B3", What: what + ", cold", Ipnix: figure{Unit: "s"}, Baseline: &figure{Label: "full substitution", Unit: "s"},
		RatioOf: "ipnix/substitution time", Target: "≤ 1.5×", meets: func(r *row) bool { return r.Ratio <= 1.5 }})
	return b.eachRound("B3", func(i int) error {
		return alternate(i,
			func() error {
				m, err := b.mount()
				if err != nil {
					return err
				}
				defer b.stopMount(m)
				root := inMount(m, b.gopath)
				dropCaches()
				dc, err := readAll(root)
				if err != nil {
					return err
				}
				dw, err := readAll(root)
				cold.ipnix(dc.Seconds())
				warm.ipnix(dw.Seconds())
				return err
			},
			func() error {
				dropCaches()
				dc, err := readAll(b.gopath)
				if err != nil {
					return err
				}
				dw, err := readAll(b.gopath)
				cold.extra("native cold", "s", dc.Seconds())
				warm.base(dw.Seconds())
				return err
			},
			func() error {
				d, _, err := b.fullSubstitution(nil, b.kubo.Gateway, b.gopath)
				cold.base(d.Seconds())
				return err
			},
			func() error {
				m, err := b.mount("--kubo-repo", "none")
				if err != nil {
					return err
				}
				defer b.stopMount(m)
				dropCaches()
				d, err := readAll(inMount(m, b.gopath))
				cold.extra("ipnix cold, blocks through kubo's gateway (--kubo-repo none)", "s", d.Seconds())
				return err
			})
	})
}

// goVersion runs `go version` from the Go toolchain path under root.
func (b *bench) goVersion(root string) (time.Duration, error) {
	return timed(filepath.Join(root, strings.TrimPrefix(b.gopath, "/nix/store/"), "bin", "go"), "version")
}

// B4: run a program from a large store path, cold, against full
// substitution of that path.
func (b *bench) b4LazyStart() error {
	_, narSize, err := b.narCid(b.gopath)
	if err != nil {
		return err
	}
	r := b.newRow(row{ID: "B4", What: "lazy start: `go version` from the Go toolchain path, cold", Ipnix: figure{Unit: "s"},
		Baseline: &figure{Label: "full substitution", Unit: "s"}, Invert: true, RatioOf: "substitution/ipnix time",
		Target: "≥ 8×, ≤ 10 % fetched", meets: func(r *row) bool { return r.Ratio >= 8 && r.extraMedian("fetched, share of the NAR") <= 10 }})
	return b.eachRound("B4", func(i int) error {
		return alternate(i,
			func() error {
				m, err := b.mount()
				if err != nil {
					return err
				}
				defer b.stopMount(m)
				dropCaches()
				before, _ := m.Metric("ipnix_fetch_bytes_total")
				d, err := b.goVersion(m.Dir)
				after, _ := m.Metric("ipnix_fetch_bytes_total")
				r.ipnix(d.Seconds())
				r.extra("fetched", "B", float64(after-before))
				r.extra("fetched, share of the NAR", "%", 100*float64(after-before)/float64(narSize))
				return err
			},
			func() error {
				d, _, err := b.fullSubstitution(nil, b.kubo.Gateway, b.gopath)
				r.base(d.Seconds())
				return err
			})
	})
}

// B5: stat every file of B3's path, warm (and cold, in the note).
func (b *bench) b5Stat() error {
	statAll := func(root string) (time.Duration, error) {
		return shell("find '" + root + "' -printf '%s %m\\n' > /dev/null")
	}
	r := b.newRow(row{ID: "B5", What: "stat every file of B3's path, warm", Ipnix: figure{Unit: "s"},
		Baseline: &figure{Label: "native warm", Unit: "s"}, RatioOf: "ipnix/native time", Target: "≤ 1.5×",
		meets: func(r *row) bool { return r.Ratio <= 1.5 }})
	return b.eachRound("B5", func(i int) error {
		return alternate(i,
			func() error {
				m, err := b.mount()
				if err != nil {
					return err
				}
				defer b.stopMount(m)
				root := inMount(m, b.gopath)
				dropCaches()
				dc, err := statAll(root)
				if err != nil {
					return err
				}
				dw, err := statAll(root)
				r.extra("ipnix cold", "s", dc.Seconds())
				r.ipnix(dw.Seconds())
				return err
			},
			func() error {
				dropCaches()
				dc, err := statAll(b.gopath)
				if err != nil {
					return err
				}
				dw, err := statAll(b.gopath)
				r.extra("native cold", "s", dc.Seconds())
				r.base(dw.Seconds())
				return err
			})
	})
}

// B6: peak RSS of the mount processes, per round, against the memory
// cache size.
func (b *bench) b6RSS() {
	limit := float64(b.memCache + 100<<20)
	r := &row{ID: "B6", What: "peak RSS of the mounts of the cases run (max of each round)", Ipnix: figure{Unit: "B"},
		Baseline: &figure{Label: "memory cache", Unit: "B"}, RatioOf: "RSS/memory cache", Target: "≤ cache + 100 MiB, every round",
		meets: func(r *row) bool { return r.Ipnix.Max <= limit }}
	for _, p := range b.peak {
		if p > 0 {
			r.ipnix(float64(p))
			r.base(float64(b.memCache))
		}
	}
	if len(r.Ipnix.Rounds) > 0 {
		b.rows = append(b.rows, r)
	}
}

// B7: publish throughput against `ipfs add`, each side into a fresh kubo
// (so that neither finds the blocks stored) from the same input with the
// same cache state: from the store (publish serialises the NAR itself;
// the baseline pipes `nix-store --dump` into `ipfs add`), and from NAR
// files (publish --from a binary cache against `ipfs add` of its NARs).
func (b *bench) b7Publish() error {
	var narBytes int64
	var cids []string
	paths := []string{b.big, b.gopath}
	for _, p := range paths {
		cid, size, err := b.narCid(p)
		if err != nil {
			return err
		}
		narBytes += size
		cids = append(cids, cid)
	}
	nars := make([]string, len(paths))
	for i, p := range paths {
		f, err := b.narFile(p)
		if err != nil {
			return err
		}
		nars[i] = f
	}
	what := "publish throughput (" + humanize.IBytes(uint64(narBytes)) + " of NAR)"
	store := b.newRow(row{ID: "B7", What: what + " from the store", Ipnix: figure{Unit: "MiB/s"},
		Baseline: &figure{Label: "nix-store --dump | ipfs add", Unit: "MiB/s"}, RatioOf: "ipnix/baseline throughput",
		Target: "≥ 0.8×", meets: func(r *row) bool { return r.Ratio >= 0.8 },
		Note: "both into a fresh kubo, page cache dropped before each; publish also writes the NAR file, listing and narinfo"})
	files := b.newRow(row{ID: "B7", What: what + " from NAR files", Ipnix: figure{Unit: "MiB/s"},
		Baseline: &figure{Label: "ipfs add of the NAR files", Unit: "MiB/s"}, RatioOf: "ipnix/baseline throughput",
		Target: "≥ 0.8×", meets: func(r *row) bool { return r.Ratio >= 0.8 },
		Note: "publish --from a binary cache of uncompressed NARs: also checks NarHash and copies the NAR files"})
	// onFresh runs f against a fresh kubo and a fresh output directory,
	// with the caches dropped, and gives f's wall time.
	onFresh := func(f func(k *runenv.Kubo, to string) error) (time.Duration, error) {
		dir, err := os.MkdirTemp(b.work, "b7-")
		if err != nil {
			return 0, err
		}
		defer os.RemoveAll(dir)
		k, err := runenv.StartKubo(b.kuboBin, filepath.Join(dir, "ipfs"))
		if err != nil {
			return 0, err
		}
		defer k.Stop()
		dropCaches()
		start := time.Now()
		err = f(k, filepath.Join(dir, "out"))
		return time.Since(start), err
	}
	add := func(k *runenv.Kubo, input func(i int) (string, *os.File, error)) error {
		for i := range paths {
			line, f, err := input(i)
			if err != nil {
				return err
			}
			var out string
			if f != nil {
				out, err = k.Run(f, "add", "-Q", "--cid-version=1", "--raw-leaves", "--chunker=size-262144")
				f.Close()
			} else {
				out, err = output("sh", "-c", line)
				out = strings.TrimSpace(out)
			}
			if err != nil {
				return err
			}
			if out != cids[i] {
				return fmt.Errorf("ipfs add of %s gives %s, the narinfo %s: publish's encoding differs", paths[i], out, cids[i])
			}
		}
		return nil
	}
	return b.eachRound("B7", func(i int) error {
		return alternate(i,
			func() error {
				d, err := onFresh(func(k *runenv.Kubo, to string) error {
					_, err := output(b.ipnix, "publish", "--api", k.API, "--to", to, "--secret-key", b.sec, "--no-closure", b.big, b.gopath)
					return err
				})
				store.ipnix(mbps(narBytes, d))
				return err
			},
			func() error {
				d, err := onFresh(func(k *runenv.Kubo, _ string) error {
					return add(k, func(i int) (string, *os.File, error) {
						return fmt.Sprintf("nix-store --dump '%s' | IPFS_PATH='%s' '%s' --api '%s' add -Q --cid-version=1 --raw-leaves --chunker=size-262144",
							paths[i], k.Path, k.Bin, k.API), nil, nil
					})
				})
				store.base(mbps(narBytes, d))
				return err
			},
			func() error {
				d, err := onFresh(func(k *runenv.Kubo, to string) error {
					_, err := output(b.ipnix, "publish", "--api", k.API, "--to", to, "--secret-key", b.sec, "--from", b.cache)
					return err
				})
				files.ipnix(mbps(narBytes, d))
				return err
			},
			func() error {
				d, err := onFresh(func(k *runenv.Kubo, _ string) error {
					return add(k, func(i int) (string, *os.File, error) {
						f, err := os.Open(nars[i])
						return "", f, err
					})
				})
				files.base(mbps(narBytes, d))
				return err
			})
	})
}

package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"golang.org/x/sys/unix"

	"github.com/ipnix/ipnix/integration/runenv"
)

// The link of B10: a token bucket on the loopback of a private network
// namespace (this kernel has no netem, so no added delay beyond queueing).
const (
	linkRate  = "500mbit"
	linkBits  = 500e6 // bits per second, for the transfer-time floor
	linkShape = "tbf rate " + linkRate + " burst 256kb latency 50ms"

	idealLabel = "native cold + floor at link rate"
)

// netns is a private network namespace holding a rate-limited loopback.
type netns struct {
	name string
	path string // /run/netns/<name>
	// wrap runs a command in the namespace but in this mount namespace
	// (ip netns exec would give it a mount namespace of its own, hiding a
	// FUSE mount made there), exec'ing it in place so signals reach it.
	wrap []string
	// client dials from inside the namespace.
	client *http.Client
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// newNetns makes the namespace with its loopback up (not yet shaped).
func newNetns() (*netns, error) {
	n := &netns{name: fmt.Sprintf("ipnix-bench-%d", os.Getpid())}
	n.path = "/run/netns/" + n.name
	if err := run("ip", "netns", "add", n.name); err != nil {
		return nil, err
	}
	if err := run("ip", "netns", "exec", n.name, "ip", "link", "set", "lo", "up"); err != nil {
		n.remove()
		return nil, err
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		n.remove()
		return nil, fmt.Errorf("nsenter (util-linux) is needed to run kubo and the mount in the namespace: %w", err)
	}
	n.wrap = []string{"nsenter", "--net=" + n.path, "--"}
	n.client = &http.Client{Transport: &http.Transport{DialContext: dialIn(n.path)}}
	return n, nil
}

// shape puts the token bucket on the namespace's loopback.
func (n *netns) shape() error {
	return run("ip", append([]string{"netns", "exec", n.name, "tc", "qdisc", "add", "dev", "lo", "root"}, strings.Fields(linkShape)...)...)
}

func (n *netns) remove() {
	if err := run("ip", "netns", "del", n.name); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
}

// dialIn dials from inside the network namespace at path: the socket is
// made on a thread that joined it, and stays there. The thread is never
// unlocked, so it ends with its goroutine instead of carrying the
// namespace to other goroutines.
func dialIn(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				ch <- result{nil, fmt.Errorf("opening %s: %w", path, err)}
				return
			}
			err = unix.Setns(fd, unix.CLONE_NEWNET)
			unix.Close(fd)
			if err != nil {
				ch <- result{nil, fmt.Errorf("setns %s: %w", path, err)}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// B10: the IPFS node on another machine. kubo and the mount run in a
// private network namespace whose loopback is shaped to 500 Mbit/s; B3
// cold (read every file of the Go path) and B4 (`go version`) are timed
// there against full substitution over the same link, and B11's compile
// job with read-ahead against without. For each: bytes
// fetched against the block-granular floor (the same run with --readahead
// 0), and ipnix's time against the native cold time plus the floor's
// transfer time at the link rate.
func (b *bench) b10Remote() error {
	_, goNar, err := b.narCid(b.gopath)
	if err != nil {
		return err
	}
	link := "over a " + strings.TrimSuffix(linkRate, "mbit") + " Mbit/s link"
	t3 := b.newRow(row{ID: "B10", What: "B3 cold " + link + ": read every file of the Go path", Ipnix: figure{Unit: "s"},
		Baseline: &figure{Label: "full substitution over the link", Unit: "s"}, RatioOf: "ipnix/substitution time", Target: "n/a"})
	f3 := b.newRow(row{ID: "B10", What: "B3 cold " + link + ": bytes fetched", Ipnix: figure{Unit: "B"},
		Baseline: &figure{Label: "with --readahead 0 (block floor)", Unit: "B"}, RatioOf: "fetched/floor", Target: "≤ 1.1×",
		meets: func(r *row) bool { return r.Ratio <= 1.1 },
		Note:  fmt.Sprintf("bytes touched: %s of file bytes, %s of NAR", humanize.IBytes(uint64(b.goBytes)), humanize.IBytes(uint64(goNar)))})
	t4 := b.newRow(row{ID: "B10", What: "B4 " + link + ": `go version`, cold", Ipnix: figure{Unit: "s"},
		Baseline: &figure{Label: "full substitution over the link", Unit: "s"}, Invert: true, RatioOf: "substitution/ipnix time", Target: "n/a"})
	f4 := b.newRow(row{ID: "B10", What: "B4 " + link + ": bytes fetched", Ipnix: figure{Unit: "B"},
		Baseline: &figure{Label: "with --readahead 0 (block floor)", Unit: "B"}, RatioOf: "fetched/floor", Target: "≤ 1.1×",
		meets: func(r *row) bool { return r.Ratio <= 1.1 }})
	jobs, err := b.newCompileRows("B10", " "+link)
	if err != nil {
		return err
	}
	ideal := func(r *row) string {
		return fmt.Sprintf("ipnix against native cold + the floor's transfer time at %s: %.2f× (an additive reference: overlapping the two can beat it)",
			linkRate, r.Ipnix.Median/r.extraMedian(idealLabel))
	}
	t3.post, t4.post, jobs.speed.post = ideal, ideal, ideal
	// blocked says, in the rows, why the namespace or its shaping could
	// not be had here; the benchmark goes on with the other cases.
	blocked := func(err error) error {
		b.logf("B10 blocked: %v", err)
		for i, r := range []*row{t3, f3, t4, f4, jobs.speed, jobs.bytes} {
			r.Baseline, r.meets, r.post = nil, nil, nil
			r.Ipnix.Rounds, r.Note = nil, ""
			if i == 0 {
				r.note("blocked: " + firstLine(err.Error()))
			} else {
				r.note("blocked (see above)")
			}
		}
		return nil
	}

	ns, err := newNetns()
	if err != nil {
		return blocked(err)
	}
	defer ns.remove()
	k, err := runenv.StartKuboWrapped(b.kuboBin, filepath.Join(b.work, "ipfs-remote"), ns.wrap, func(k *runenv.Kubo) error {
		// Offline, before the daemon starts: the same blocks as the
		// benchmark's kubo, without going through the shaped link.
		for _, p := range []string{b.big, b.gopath} {
			cid, _, err := b.narCid(p)
			if err != nil {
				return err
			}
			nar, err := b.narFile(p)
			if err != nil {
				return err
			}
			f, err := os.Open(nar)
			if err != nil {
				return err
			}
			got, err := k.Run(f, "add", "-Q", "--cid-version=1", "--raw-leaves", "--chunker=size-262144")
			f.Close()
			if err != nil {
				return err
			}
			if got != cid {
				return fmt.Errorf("ipfs add of %s's NAR gives %s, the narinfo %s", p, got, cid)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("kubo in the network namespace: %w", err)
	}
	defer k.Stop()
	if err := ns.shape(); err != nil {
		return blocked(err)
	}
	// Check the shaping: stream the Go path's NAR once (warm: this is the
	// link, not the disk).
	goCid, _, _ := b.narCid(b.gopath)
	start := time.Now()
	n, err := gatewayFetch(ns.client, k.Gateway, goCid, io.Discard)
	if err != nil {
		return blocked(fmt.Errorf("fetching through the shaped link: %w", err))
	}
	linkMbit := float64(n) * 8 / time.Since(start).Seconds() / 1e6
	t3.note(fmt.Sprintf("link measured at %.0f Mbit/s (gateway stream of the NAR, warm)", linkMbit))

	transfer := func(bytes float64) float64 { return bytes * 8 / linkBits }
	cold := func(extra ...string) (*runenv.Mount, error) {
		m, err := b.mountWith(ns.wrap, ns.client, k, append([]string{"--kubo-repo", "none"}, extra...)...) // kubo is on "another machine"
		if err != nil {
			return nil, err
		}
		dropCaches()
		return m, nil
	}
	// fetchedBy mounts with extra, runs f cold and gives its time and the
	// bytes the mount fetched.
	fetchedBy := func(f func(root string) (time.Duration, error), extra ...string) (time.Duration, int64, error) {
		m, err := cold(extra...)
		if err != nil {
			return 0, 0, err
		}
		defer b.stopMount(m)
		before, err := m.Metric("ipnix_fetch_bytes_total")
		if err != nil {
			return 0, 0, err
		}
		d, err := f(m.Dir)
		after, merr := m.Metric("ipnix_fetch_bytes_total")
		if err == nil {
			err = merr
		}
		return d, after - before, err
	}
	readGo := func(root string) (time.Duration, error) {
		return readAll(filepath.Join(root, strings.TrimPrefix(b.gopath, "/nix/store/")))
	}
	inNetns := func(extra ...string) (*runenv.Mount, error) {
		return b.mountWith(ns.wrap, ns.client, k, append([]string{"--kubo-repo", "none"}, extra...)...)
	}
	return b.eachRound("B10", func(i int) error {
		var floor3, floor4, floorJob int64
		var native3, native4, nativeJob, subst time.Duration
		err := alternate(i,
			func() error {
				d, n, err := fetchedBy(readGo)
				t3.ipnix(d.Seconds())
				f3.ipnix(float64(n))
				return err
			},
			func() error {
				d, n, err := fetchedBy(readGo, "--readahead", "0")
				floor3 = n
				f3.base(float64(n))
				f3.extra("time with --readahead 0", "s", d.Seconds())
				return err
			},
			func() error {
				dropCaches()
				d, err := readAll(b.gopath)
				native3 = d
				return err
			},
			func() error {
				d, _, err := b.fullSubstitution(ns.client, k.Gateway, b.gopath)
				subst = d
				t3.base(d.Seconds())
				t4.base(d.Seconds())
				return err
			},
			func() error {
				d, n, err := fetchedBy(b.goVersion)
				t4.ipnix(d.Seconds())
				f4.ipnix(float64(n))
				f4.extra("fetched, share of the NAR", "%", 100*float64(n)/float64(goNar))
				return err
			},
			func() error {
				d, n, err := fetchedBy(b.goVersion, "--readahead", "0")
				floor4 = n
				f4.base(float64(n))
				f4.extra("time with --readahead 0", "s", d.Seconds())
				return err
			},
			func() error {
				dropCaches()
				d, err := b.goVersion("/nix/store")
				native4 = d
				return err
			},
			func() error {
				r, err := b.compileCold(inNetns)
				jobs.withReadahead(r)
				return err
			},
			func() error {
				r, err := b.compileCold(inNetns, "--readahead", "0")
				floorJob = r.fetched
				jobs.withoutReadahead(r)
				return err
			},
			func() error {
				dropCaches()
				d, said, err := b.goBuild(b.gopath)
				nativeJob = d
				jobs.said(compileResult{said: said})
				return err
			})
		if err != nil {
			return err
		}
		t3.extra("native cold", "s", native3.Seconds())
		t3.extra(idealLabel, "s", native3.Seconds()+transfer(float64(floor3)))
		t4.extra("native cold", "s", native4.Seconds())
		t4.extra(idealLabel, "s", native4.Seconds()+transfer(float64(floor4)))
		jobs.speed.extra("native cold", "s", nativeJob.Seconds())
		jobs.speed.extra(idealLabel, "s", nativeJob.Seconds()+transfer(float64(floorJob)))
		jobs.speed.extra("full substitution over the link + native cold", "s", subst.Seconds()+nativeJob.Seconds())
		return nil
	})
}

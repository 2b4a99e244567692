package fusefs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// MountOptions are the kernel-facing choices of a mount.
type MountOptions struct {
	AllowOther bool     // let users other than the mounting one in (needs root or user_allow_other)
	Options    []string // further mount(8) options passed to the kernel, e.g. "default_permissions"
	FsName     string   // first field of /proc/mounts; default "ipnix"
	Debug      bool     // log every FUSE request
	// NoPassthrough serves every read from this process even where local
	// copies could be handed to the kernel, and so skips OPEN round trips.
	NoPassthrough bool
}

// maxRequest is the largest read the kernel may send in one request, and
// the read-ahead it may do.
const maxRequest = 1 << 20

// Mount mounts f at dir and returns the running server; call Unmount on it
// (or Wait after an external unmount). A dead mount left at dir by a killed
// process is cleared first; a live one is an error.
func Mount(dir string, f *FS, o MountOptions) (*fuse.Server, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	srv, err := newServer(dir, f, o)
	if err != nil {
		return nil, err
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		srv.Unmount()
		return nil, fmt.Errorf("mounting at %s: %w", dir, err)
	}
	setReadahead(dir, maxRequest)
	return srv, nil
}

// newServer mounts f at the absolute path dir and answers the kernel's
// INIT, but serves nothing else until the caller runs Serve.
func newServer(dir string, f *FS, o MountOptions) (*fuse.Server, error) {
	if err := clearStaleMount(dir); err != nil {
		return nil, err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("mount point: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("mount point %s is not a directory", dir)
	}
	name := o.FsName
	if name == "" {
		name = "ipnix"
	}
	entry, negative := immutableTimeout, rootNegativeTimeout
	kernelOpts := []string{"ro", "default_permissions"}
	for _, opt := range o.Options {
		if !slices.Contains(kernelOpts, opt) {
			kernelOpts = append(kernelOpts, opt)
		}
	}
	opts := &fs.Options{
		EntryTimeout:    &entry,
		AttrTimeout:     &entry,
		NegativeTimeout: &negative,
		MountOptions: fuse.MountOptions{
			AllowOther: o.AllowOther,
			// default_permissions: the kernel checks modes itself, as
			// on a native filesystem (go-fuse's ACCESS lets root
			// execute anything, so "test -x" said yes for 0444).
			Options:              kernelOpts,
			FsName:               name,
			Name:                 "ipnix",
			MaxWrite:             maxRequest,
			MaxReadAhead:         maxRequest,
			EnableSymlinkCaching: true,
			// Every read is answered from memory (ReadResultData), which
			// go-fuse cannot splice; it would still take a pipe, grow it
			// and write the header into it before giving up, and for a
			// 1 MiB read fail to grow it at all and log a line each time.
			DisableSplice: true,
			DisableXAttrs: true,
			// As root, mount with mount(2) directly; else fusermount3.
			DirectMount: os.Geteuid() == 0,
			Debug:       o.Debug,
		},
	}
	raw := &rawShim{RawFileSystem: fs.NewNodeFS(f.Root(), opts), execs: &f.execs}
	// Whether OPEN is wanted is settled from the INIT exchange before any
	// other request is served: an OPEN answered ENOSYS while undecided
	// would turn opens, and so passthrough, off for the mount's life.
	raw.onInit = func(s *fuse.Server) {
		f.opens.Store(wantOpens(f.files != nil, o.NoPassthrough, os.Geteuid() == 0, s.KernelSettings().Flags64()))
		f.served.Store(true)
	}
	srv, err := fuse.NewServer(raw, dir, &opts.MountOptions)
	if err != nil {
		return nil, fmt.Errorf("mounting at %s: %w", dir, err)
	}
	if n := newNotifier(srv); n != nil {
		f.notify.Store(n)
	}
	return srv, nil
}

// wantOpens decides whether OPEN is worth a round trip (see FS.opens): only
// to hand out local copies for passthrough, which needs a copies
// directory, a kernel that offers it, and CAP_SYS_ADMIN.
func wantOpens(haveFiles, noPassthrough, root bool, kernelFlags uint64) bool {
	return haveFiles && !noPassthrough && root && kernelFlags&fuse.CAP_PASSTHROUGH != 0
}

// clearStaleMount unmounts dir if it is a FUSE mount whose server has gone
// (stat fails with ENOTCONN), and refuses if a live ipnix mount is there.
func clearStaleMount(dir string) error {
	// statfs always reaches the server (stat may be answered from cached
	// attributes), so a dead one shows.
	var sfs syscall.Statfs_t
	statErr := syscall.Statfs(dir, &sfs)
	if errors.Is(statErr, syscall.ENOTCONN) || errors.Is(statErr, syscall.ECONNABORTED) {
		if err := unmount(dir); err != nil {
			return fmt.Errorf("clearing dead mount at %s: %w", dir, err)
		}
		return nil
	}
	if statErr != nil {
		return nil // reported by the caller
	}
	mounted, fstype, err := mountedAt(dir)
	if err != nil || !mounted {
		return err
	}
	if strings.HasPrefix(fstype, "fuse") && strings.Contains(fstype, "ipnix") {
		return fmt.Errorf("%s is already an ipnix mount; unmount it first (fusermount3 -u %s)", dir, dir)
	}
	return nil
}

// unmount detaches dir: mount(2) as root, fusermount3 otherwise.
func unmount(dir string) error {
	if os.Geteuid() == 0 {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err == nil {
			return nil
		}
	}
	var last error
	for _, bin := range []string{"fusermount3", "fusermount"} {
		if err := runQuiet(bin, "-u", "-z", dir); err != nil {
			last = err
			continue
		}
		return nil
	}
	return last
}

// mountedAt reports whether dir is a mount point, and its type.
func mountedAt(dir string) (bool, string, error) {
	fh, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, "", nil
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts ... - fstype source superopts
		f := strings.Fields(sc.Text())
		if len(f) < 10 || unescapeMount(f[4]) != dir {
			continue
		}
		for i := 6; i < len(f)-1; i++ {
			if f[i] == "-" {
				return true, f[i+1], nil
			}
		}
		return true, "", nil
	}
	return false, "", sc.Err()
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// WaitMounted polls until dir is a FUSE mount or timeout passes.
func WaitMounted(dir string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, fstype, _ := mountedAt(dir)
		if ok && strings.HasPrefix(fstype, "fuse") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not mounted after %v", dir, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Detach lazily unmounts dir: it disappears from the namespace now and is
// released when its last user lets go.
func Detach(dir string) error { return unmount(dir) }

// setReadahead raises the kernel's read-ahead for the mount to bytes. The
// FUSE INIT exchange can only lower it from the 128 KiB default; the
// mount's backing device info takes more (root only; otherwise the default
// stays). Larger read-ahead means fewer, larger READ requests. The device
// comes from mountinfo: a stat of the mount point would make the kernel
// cache the root's attributes, and answer from them even after the server
// died, hiding the dead mount.
func setReadahead(dir string, bytes int) {
	dev, err := mountDevice(dir)
	if err != nil || dev == "" {
		return
	}
	_ = os.WriteFile("/sys/class/bdi/"+dev+"/read_ahead_kb", []byte(fmt.Sprint(bytes>>10)), 0)
}

// mountDevice returns the major:minor of the mount at dir ("" if none).
func mountDevice(dir string) (string, error) {
	fh, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	dev := ""
	for sc.Scan() {
		// id parent major:minor root mountpoint ...; the last match is on top
		f := strings.Fields(sc.Text())
		if len(f) >= 5 && unescapeMount(f[4]) == dir {
			dev = f[2]
		}
	}
	return dev, sc.Err()
}

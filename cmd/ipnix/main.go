// Command ipnix mounts Nix store paths lazily from IPFS and publishes store
// paths into IPFS. See `ipnix --help`.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/pflag"
)

// Exit codes are fixed so scripts and service managers can tell failures
// apart.
const (
	exitOK       = 0
	exitError    = 1 // the work failed (see the message)
	exitUsage    = 2 // bad command line
	exitKubo     = 3 // the kubo RPC API could not be reached
	exitMount    = 4 // the mount point could not be mounted
	exitInternal = 5 // a bug: please report
	exitClosure  = 6 // a closure asked for at start could not be resolved
)

// usageError marks errors in what the user typed.
type usageError struct{ error }

// exitError carries a specific exit code.
type codedError struct {
	code int
	error
}

func (e codedError) Unwrap() error { return e.error }

const topUsage = `ipnix mounts Nix store paths lazily from IPFS.

Usage:
  ipnix mount [flags] MOUNTPOINT       serve a read-only store at MOUNTPOINT
  ipnix publish [flags] STOREPATH...   add store paths (and their closure) to IPFS
  ipnix publish [flags] --from CACHE   republish an existing binary cache
  ipnix register [flags] STOREPATH...  write nix-store --load-db input for closures
  ipnix serve [flags]                  an HTTP binary cache for plain Nix, from IPFS
  ipnix mirror [flags] --from CACHE    pin every NAR of a binary cache on a kubo node
  ipnix prefetch [flags] STOREPATH...  fetch whole closures into a cache dir, for offline use
  ipnix cache stats|gc [flags]         what a cache dir holds; drop what nothing needs
  ipnix version                        print the version

Run "ipnix <command> --help" for the flags of a command.

Exit codes: 0 success, 1 failure, 2 bad command line, 3 kubo API unreachable,
4 mount failed, 5 internal error, 6 a --closure could not be resolved.
`

var version = "0.1.0-dev"

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) (code int) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(stderr, "ipnix: internal error: %v\n", r)
			code = exitInternal
		}
	}()
	cmd, rest := "", args[1:]
	// mount(8) runs helpers as mount.fuse.ipnix SOURCE DIR -o OPTS.
	if b := filepath.Base(args[0]); b == "mount.fuse.ipnix" || b == "mount.ipnix" {
		// As mount(8) expects: return once mounted, the server detached.
		if os.Getenv(readyFDEnv) == "" && !wantsHelp(rest) {
			return runDetached(rest, stderr)
		}
		cmd = "mount"
	} else if len(rest) > 0 {
		cmd, rest = rest[0], rest[1:]
	}
	// IPNIX_CPUPROFILE=FILE writes a CPU profile of the whole run, for
	// diagnosing slow publishes (a mount serves /debug/pprof instead).
	if path := os.Getenv("IPNIX_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				defer pprof.StopCPUProfile()
			}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch cmd {
	case "mount":
		err = runMount(ctx, rest, stdout, stderr)
	case "publish":
		err = runPublish(ctx, rest, stdout, stderr)
	case "register":
		err = runRegister(ctx, rest, stdout, stderr)
	case "serve":
		err = runServe(ctx, rest, stdout, stderr)
	case "mirror":
		err = runMirror(ctx, rest, os.Stdin, stdout, stderr)
	case "prefetch":
		err = runPrefetch(ctx, rest, stdout, stderr)
	case "cache":
		err = runCache(ctx, rest, stdout, stderr)
	case "version", "--version":
		fmt.Fprintf(stdout, "ipnix %s\n", version)
	case "", "help", "-h", "--help":
		fmt.Fprint(stdout, topUsage)
		if cmd == "" {
			return exitUsage
		}
	default:
		fmt.Fprintf(stderr, "ipnix: unknown command %q\n\n%s", cmd, topUsage)
		return exitUsage
	}
	return report(err, stderr)
}

func report(err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, pflag.ErrHelp) {
		return exitOK
	}
	fmt.Fprintf(stderr, "ipnix: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	var ce codedError
	if errors.As(err, &ce) {
		return ce.code
	}
	return exitError
}

func newLogger(w io.Writer, debug bool) *slog.Logger {
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// newFlagSet returns a flag set that reports errors instead of exiting and
// prints usage with the command's synopsis.
func newFlagSet(name, synopsis string, out io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(out)
	fs.SortFlags = false
	fs.Usage = func() {
		fmt.Fprintf(out, "%s\nFlags:\n%s", synopsis, fs.FlagUsages())
	}
	return fs
}

func wantsHelp(args []string) bool {
	for _, a := range args {
		if a == "-h" || a == "--help" {
			return true
		}
	}
	return false
}

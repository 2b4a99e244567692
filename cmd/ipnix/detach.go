package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// mount(8) runs mount.fuse.ipnix SOURCE DIR -o OPTS and expects it to
// return once the filesystem is mounted, leaving the server running. The
// helper starts itself again, detached (own session, stdin closed), and
// waits on a pipe for the word that the mount is up, or for its error.

// readyFDEnv names the descriptor a detached server reports readiness on.
const readyFDEnv = "IPNIX_READY_FD"

// readyTimeout bounds the wait for a detached mount (closures may be
// resolved at start).
const readyTimeout = 5 * time.Minute

// runDetached starts the mount in a detached child and returns when it
// is up (exit 0) or has failed (its exit code, its message).
func runDetached(args []string, stderr io.Writer) int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "ipnix: %v\n", err)
		return exitError
	}
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintf(stderr, "ipnix: %v\n", err)
		return exitError
	}
	cmd := exec.Command(exe, append([]string{"mount"}, args...)...)
	cmd.Env = append(os.Environ(), readyFDEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "ipnix: starting the mount: %v\n", err)
		return exitError
	}
	w.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(r).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case l := <-line:
		if l == "ready" {
			return exitOK
		}
		// The pipe closed without the word: the child is exiting.
		select {
		case err := <-exited:
			if ee, ok := err.(*exec.ExitError); ok {
				return ee.ExitCode()
			}
			return exitMount
		case <-time.After(10 * time.Second):
			return exitMount
		}
	case <-time.After(readyTimeout):
		fmt.Fprintf(stderr, "ipnix: the mount was not up after %v; leaving it to finish in the background\n", readyTimeout)
		return exitMount
	}
}

// signalReady tells the process that started this one detached (if any)
// that the mount is up.
func signalReady() {
	if os.Getenv(readyFDEnv) != "3" {
		return
	}
	f := os.NewFile(3, "ready")
	if f == nil {
		return
	}
	f.WriteString("ready\n")
	f.Close()
	os.Unsetenv(readyFDEnv)
}

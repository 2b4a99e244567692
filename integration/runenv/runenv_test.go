package runenv

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A process started by Start ends when the process that started it is
// killed outright, as a test is on its timeout.
func TestStartedProcessDiesWithStarter(t *testing.T) {
	if os.Getenv("RUNENV_STARTER") == "1" {
		// The starter: start a long sleep, say its pid, wait to be killed.
		p, err := Start(exec.Command("sleep", "600"))
		if err != nil {
			os.Exit(2)
		}
		os.Stdout.WriteString(strconv.Itoa(p.Cmd.Process.Pid) + "\n")
		time.Sleep(time.Minute)
		os.Exit(3)
	}
	starter := exec.Command(os.Args[0], "-test.run", "^TestStartedProcessDiesWithStarter$")
	starter.Env = append(os.Environ(), "RUNENV_STARTER=1")
	out, err := starter.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := starter.Start(); err != nil {
		t.Fatal(err)
	}
	defer starter.Process.Kill()
	buf := make([]byte, 64)
	n, _ := out.Read(buf)
	pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		t.Fatalf("starter said %q", buf[:n])
	}
	defer syscall.Kill(pid, syscall.SIGKILL) // should the test fail
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("the started process is not running: %v", err)
	}
	starter.Process.Kill() // SIGKILL: no cleanup runs in the starter
	starter.Wait()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		// Gone, or a zombie of init's once reparented: either way not running.
		st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || strings.Contains(string(st), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the started process (pid %d) still runs 10 s after its starter was killed", pid)
		}
	}
}

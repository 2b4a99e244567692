package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// machine describes where the figures were taken: printed in the table's
// header and written to the JSON.
type machine struct {
	Date     string     `json:"date"`
	Host     string     `json:"host"`
	Kernel   string     `json:"kernel"`
	CPU      string     `json:"cpu"`
	Cores    int        `json:"cores"`
	Memory   string     `json:"memory"`
	Kubo     string     `json:"kubo"`
	Storage  []location `json:"storage"`
	Settings string     `json:"settings"`
	Warnings []string   `json:"warnings,omitempty"`
}

// location is where one part of the benchmark keeps its data.
type location struct {
	Role   string `json:"role"`
	Path   string `json:"path"`
	FSType string `json:"fs_type"` // from statfs(2)
	Device string `json:"device"`  // from /proc/self/mountinfo
}

func describeMachine() *machine {
	m := &machine{Date: time.Now().UTC().Format("2006-01-02"), Cores: runtime.NumCPU()}
	m.Host, _ = os.Hostname()
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = "Linux " + unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		for _, line := range strings.Split(string(b), "\n") {
			if _, err := fmt.Sscanf(line, "MemTotal: %d kB", &kb); err == nil {
				m.Memory = fmt.Sprintf("%.0f GiB RAM", float64(kb)/(1<<20))
				break
			}
		}
	}
	return m
}

// locate records where role's data lives, warning when that is tmpfs or
// differs in kind from what was located before.
func (m *machine) locate(role, path string) location {
	l := location{Role: role, Path: path, FSType: fsType(path), Device: mountSource(path)}
	for _, o := range m.Storage {
		if o.FSType != l.FSType {
			m.warn(fmt.Sprintf("%s (%s) is on %s but %s (%s) on %s: cold figures compare different storage",
				role, path, l.FSType, o.Role, o.Path, o.FSType))
			break
		}
	}
	if l.FSType == "tmpfs" || l.FSType == "ramfs" {
		m.warn(fmt.Sprintf("%s (%s) is on %s: its \"cold\" reads come from memory", role, path, l.FSType))
	}
	m.Storage = append(m.Storage, l)
	return l
}

func (m *machine) warn(s string) {
	m.Warnings = append(m.Warnings, s)
	fmt.Fprintln(os.Stderr, "bench: WARNING:", s)
}

// header is the machine part of the table's first line.
func (m *machine) header() string {
	cpu := ""
	if m.CPU != "" {
		cpu = " (" + m.CPU + ")"
	}
	var st []string
	seen := map[string][]string{}
	var order []string
	for _, l := range m.Storage {
		k := l.FSType + " on " + l.Device
		if _, ok := seen[k]; !ok {
			order = append(order, k)
		}
		seen[k] = append(seen[k], l.Role)
	}
	for _, k := range order {
		st = append(st, strings.Join(seen[k], ", ")+": "+k)
	}
	return fmt.Sprintf("%s, %s, %d cores%s, %s, %s; storage: %s; %s",
		m.Host, m.Kernel, m.Cores, cpu, m.Memory, m.Kubo, strings.Join(st, "; "), m.Settings)
}

// fsTypes names the statfs(2) magic numbers of the filesystems a benchmark
// is likely to meet.
var fsTypes = map[int64]string{
	0xEF53:     "ext4",
	0x01021994: "tmpfs",
	0x858458f6: "ramfs",
	0x9123683E: "btrfs",
	0x58465342: "xfs",
	0x2FC12FC1: "zfs",
	0xF2F52010: "f2fs",
	0x794c7630: "overlayfs",
	0x6969:     "nfs",
	0x65735546: "fuse",
	0x73717368: "squashfs",
	0x01021997: "9p",
	0x786f4256: "virtiofs",
	0x4244:     "hfs",
}

// fsType is the type of the filesystem holding path, by statfs(2).
func fsType(path string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "unknown (" + err.Error() + ")"
	}
	if name, ok := fsTypes[int64(st.Type)]; ok {
		return name
	}
	return fmt.Sprintf("0x%x", st.Type)
}

// mountSource is the device (mount source) of the mount holding path.
func mountSource(path string) string {
	if p, err := filepath.EvalSymlinks(path); err == nil {
		path = p
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "?"
	}
	return mountSourceIn(string(b), path)
}

// mountSourceIn finds, in the text of a mountinfo file, the source of the
// longest mount point that holds path.
func mountSourceIn(mountinfo, path string) string {
	best, src := -1, "?"
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		sep := -1
		for i, x := range f {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || len(f) < sep+3 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		if !(path == mp || mp == "/" || strings.HasPrefix(path, mp+"/")) {
			continue
		}
		if len(mp) >= best {
			best, src = len(mp), unescapeMountinfo(f[sep+2])
		}
	}
	return src
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			o := s[i+1 : i+4]
			if o[0] >= '0' && o[0] <= '3' && o[1] >= '0' && o[1] <= '7' && o[2] >= '0' && o[2] <= '7' {
				b.WriteByte((o[0]-'0')<<6 | (o[1]-'0')<<3 | (o[2] - '0'))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
